"""The Hugging Face Trainer adapter: attach, loss, optimizer groups, metrics, resume, finalize.

Tiny models built from configs (no download), a few steps on CPU. Oracles: metrics and the
loss recomputed here by hand from the predictions / logits; resume compared with
``torch.equal`` on every tensor of the state dict.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")

from transformers import Trainer, TrainingArguments  # noqa: E402

from fq_plugins.adapters.hf import FQCallback, check_transformers_version  # noqa: E402
from fq_plugins.errors import ConfigError, FQError, MissingDependencyError  # noqa: E402

N_CLASSES = 3


class TextDS(Dataset):
    """Token ids whose first token decides the class; group from the second token."""

    def __init__(self, n: int, seed: int, *, with_group: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 50, (n, 10), generator=g)
        self.y = self.x[:, 0] % N_CLASSES
        self.g = (self.x[:, 1] < 15).long()
        self.with_group = with_group

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": self.x[i], "labels": self.y[i]}
        if self.with_group:
            item["group"] = self.g[i]
        return item


class ImageDS(Dataset):
    def __init__(self, n: int, seed: int, size: int = 16) -> None:
        from fq_plugins.data import make_synthetic

        ds = make_synthetic(max(n, 2 * N_CLASSES), n_classes=N_CLASSES, image_size=size, seed=seed)
        self.x, self.y, self.g = ds.x[:n], ds.y[:n], ds.group[:n]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i], "group": self.g[i]}


def bert(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=N_CLASSES, max_position_embeddings=16,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg)


def vit(seed: int = 0) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=N_CLASSES,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return ViTForImageClassification(cfg)


def targs(tmp_path: Any, **kw: Any) -> TrainingArguments:
    base: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16,
        per_device_eval_batch_size=32, learning_rate=1e-3, weight_decay=0.01, use_cpu=True,
        report_to=[], disable_tqdm=True, logging_steps=2, save_strategy="no",
        label_names=["labels", "group"], seed=0, data_seed=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


BAQ = {"method": "fairquant", "learnable_bits": True, "budget": {"avg_bits": 4.0},
       "importance": {"calib_batches": 2}, "bit_lr": 3e-3, "penalties": {"bitrate": 1.0}}
FAIR = {"regularizer": {"kind": "gap", "weight": 0.5},
        "metrics": ["worst_group_accuracy", "accuracy_gap", "eodd"]}


def recipe(*methods: dict[str, Any], fairness: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"compress": list(methods), "fairness": fairness or FAIR, "energy": {"meters": ["cpu_time"]}}


# --- import and version -------------------------------------------------------------------


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "fq_plugins.adapters.hf")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers → ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'fq-plugins\[hf\]'"):
        importlib.import_module("fq_plugins.adapters.hf")
    monkeypatch.undo()
    importlib.import_module("fq_plugins.adapters.hf")


def test_adapters_package_is_import_light() -> None:
    import subprocess

    code = "import sys, fq_plugins.adapters; print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_version_range() -> None:
    check_transformers_version("5.0.0")
    check_transformers_version("5.24.1")
    for bad in ("4.57.1", "6.0.0"):
        with pytest.raises(FQError, match=r"transformers>=5.0,<6"):
            check_transformers_version(bad)


# --- the core: BERT + FairQuant BAQ through fq.trainer -----------------------------------


def _oracle_metrics(logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
    """Accuracy, per-group accuracy, gap and equalized odds computed by hand."""
    pred = logits.argmax(-1)
    acc = {int(k): float((pred[g == k] == y[g == k]).double().mean()) for k in g.unique()}
    # eodd (FairQuant's): mean over classes of (TPR gap + FPR gap) across groups
    per_class = []
    for c in range(logits.shape[-1]):
        tpr, fpr = [], []
        for k in g.unique():
            sel = g == k
            pos, neg = sel & (y == c), sel & (y != c)
            tpr.append(float((pred[pos] == c).double().mean()))
            fpr.append(float((pred[neg] == c).double().mean()))
        per_class.append(max(tpr) - min(tpr) + max(fpr) - min(fpr))
    mean_g = sum(acc.values()) / len(acc)
    return {
        "accuracy": float((pred == y).double().mean()),
        "worst": min(acc.values()),
        "gap": mean_g - min(acc.values()),
        "eodd": sum(per_class) / len(per_class),
        **{f"group_{k}": v for k, v in acc.items()},
    }


def test_bert_baq_groups_loss_and_metrics(tmp_path: Any) -> None:
    fq = FQCallback.from_recipe(recipe(BAQ))
    model = bert()
    trainer = fq.trainer(Trainer, model=model, args=targs(tmp_path), train_dataset=TextDS(96, 1),
                         eval_dataset=TextDS(64, 2))
    session = fq.pipeline.session
    # the methods' own parameters: in their own group (bit_lr, no weight decay), never in decay
    opt = trainer.create_optimizer()
    own = {id(p) for g in session.param_groups(model, lr=1.0)[1:] for p in g["params"]}
    assert own, "BAQ has learnable bits"
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        if ids & own:
            assert ids <= own and g["lr"] == pytest.approx(3e-3) and g["weight_decay"] == 0.0
    decayed = [n for n, p in model.named_parameters() if any(p is q for g in opt.param_groups
               if g["weight_decay"] > 0 for q in g["params"])]
    assert decayed and not any("bias" in n or "LayerNorm" in n or "bit_logit" in n for n in decayed)

    # the loss Trainer trains on = CE + 0.5·(max − min per-group mean CE) + penalty, by hand
    batch = trainer.data_collator([TextDS(16, 5)[i] for i in range(16)])
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logits = model(input_ids=batch["input_ids"]).logits
    ce = F.cross_entropy(logits, batch["labels"], reduction="none")
    gm = [ce[batch["group"] == k].mean() for k in (0, 1)]
    expect = ce.mean() + 0.5 * (max(gm) - min(gm)) + session.penalty()
    assert float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-5)

    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and {"fq_task", "fq_fairness", "fq_penalty", "fq_total"} <= set(logged[0])
    metrics = trainer.evaluate()
    pred = trainer.predict(TextDS(64, 2))
    oracle = _oracle_metrics(torch.as_tensor(pred.predictions), TextDS(64, 2).y, TextDS(64, 2).g)
    assert metrics["eval_accuracy"] == pytest.approx(oracle["accuracy"])
    assert metrics["eval_worst_group_accuracy"] == pytest.approx(oracle["worst"])
    assert metrics["eval_accuracy_gap"] == pytest.approx(oracle["gap"])
    assert metrics["eval_eodd"] == pytest.approx(oracle["eodd"])
    assert metrics["eval_group_accuracy_1"] == pytest.approx(oracle["group_1"])
    # cost and energy in the logs (what TensorBoard would show), labelled
    assert metrics["eval_avg_bits"] == pytest.approx(fq.report.cost.avg_bits_param)
    assert 2.0 <= metrics["eval_avg_bits"] <= 4.0 + 1e-6
    assert metrics["eval_packed_bytes"] < metrics["eval_macs"] * 4
    assert any(k.startswith("eval_energy_train_cpu_time_joules_") for k in metrics)
    assert trainer.state.log_history[-1]["eval_accuracy"] == metrics["eval_accuracy"]


# --- errors ---------------------------------------------------------------------------------


def test_group_missing_from_label_names(tmp_path: Any) -> None:
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}))
    with pytest.raises(ConfigError, match=r"label_names=\['labels', 'group'\]"):
        fq.trainer(Trainer, model=bert(), args=targs(tmp_path, label_names=["labels"]),
                   train_dataset=TextDS(32, 1))
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}))
    with pytest.raises(ConfigError, match="label_names"):
        fq.trainer(Trainer, model=bert(), args=targs(tmp_path, label_names=None),
                   train_dataset=TextDS(32, 1))


def test_pos_label_outside_the_classes_is_refused_before_training(tmp_path: Any) -> None:
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4},
                                       fairness={**FAIR, "pos_label": N_CLASSES}))
    with pytest.raises(ConfigError, match=rf"fairness.pos_label: pos_label {N_CLASSES} is outside"):
        fq.trainer(Trainer, model=bert(), args=targs(tmp_path), train_dataset=TextDS(32, 1))


def test_regularizer_without_group_column(tmp_path: Any) -> None:
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}))
    trainer = fq.trainer(Trainer, model=bert(), args=targs(tmp_path),
                         train_dataset=TextDS(32, 1, with_group=False))
    with pytest.raises(ConfigError, match=r"no 'group' column.*regularizer.kind: none"):
        trainer.train()


def test_callback_added_after_init(tmp_path: Any) -> None:
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}))
    trainer = Trainer(model=bert(), args=targs(tmp_path), train_dataset=TextDS(32, 1))
    trainer.add_callback(fq)
    with pytest.raises(ConfigError, match=r"added after Trainer.__init__.*callbacks=\[fq\]"):
        trainer.train()


def test_callback_only_refuses_wrong_optimizer_groups(tmp_path: Any) -> None:
    fq = FQCallback.from_recipe(recipe(BAQ), calib_dataset=TextDS(32, 1))
    trainer = Trainer(model=bert(), args=targs(tmp_path), train_dataset=TextDS(32, 1),
                      callbacks=[fq], compute_metrics=fq.compute_metrics)
    with pytest.raises(ConfigError, match=r"fq.trainer\(YourTrainerClass"):
        trainer.train()


def test_multi_stage_recipe_is_refused(tmp_path: Any) -> None:
    fq = FQCallback.from_recipe(recipe({"method": "bmrs"}, {"method": "uniform", "bits": 4}))
    with pytest.raises(ConfigError, match="finalize_at_end=True"):
        fq.trainer(Trainer, model=vit(), args=targs(tmp_path), train_dataset=ImageDS(32, 1))


# --- the callback alone, a model without **kwargs -----------------------------------------


class PlainNet(nn.Module):
    """No ``**kwargs`` in forward: the group column must never reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(),
                                  nn.Linear(32, N_CLASSES))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.body(pixel_values)


def test_callback_only_plain_module_uniform(tmp_path: Any) -> None:
    torch.manual_seed(0)
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}),
                                calib_dataset=ImageDS(32, 1))
    ev = ImageDS(48, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=PlainNet(), args=targs(tmp_path, weight_decay=0.0),
                          train_dataset=ImageDS(64, 1), eval_dataset=ev,
                          callbacks=[fq], compute_metrics=fq.compute_metrics)
        trainer.train()
        metrics = trainer.evaluate()
    pred = torch.as_tensor(trainer.predict(ev).predictions)
    oracle = _oracle_metrics(pred, ev.y, ev.g)
    assert metrics["eval_accuracy"] == pytest.approx(oracle["accuracy"])
    assert metrics["eval_worst_group_accuracy"] == pytest.approx(oracle["worst"])
    assert metrics["eval_avg_bits"] == pytest.approx(4.0)


# --- checkpoints and resume ---------------------------------------------------------------


def _run(tmp_path: Any, method: dict[str, Any], seed: int, resume: str | None, name: str,
         make: Any = bert, ds: Any = TextDS) -> tuple[Any, FQCallback]:
    fq = FQCallback.from_recipe(recipe(method))
    args = targs(tmp_path, output_dir=str(tmp_path / name), max_steps=6, save_strategy="steps",
                 save_steps=3, num_train_epochs=3)
    trainer = fq.trainer(Trainer, model=make(seed), args=args, train_dataset=ds(48, 1),
                         eval_dataset=ds(32, 2))
    trainer.train(resume_from_checkpoint=resume)
    return trainer, fq


@pytest.mark.slow
@pytest.mark.parametrize("method", [BAQ, {"method": "bmrs", "gate_lr": 0.1}], ids=["baq", "bmrs"])
def test_resume_from_checkpoint_is_identical(tmp_path: Any, method: dict[str, Any]) -> None:
    full, _ = _run(tmp_path, method, 0, None, "a")
    # a differently initialised model resumed from step 3 of run a
    resumed, _ = _run(tmp_path, method, 123, str(tmp_path / "a" / "checkpoint-3"), "b")
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    plain = set(bert().state_dict())
    assert [k for k in sa if k not in plain], "the methods' state is in the state dict"
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    def figures(m: dict[str, float]) -> dict[str, float]:  # all but timings and energy
        return {k: v for k, v in m.items() if not any(t in k for t in ("runtime", "per_second", "energy"))}

    ma, mb = figures(full.evaluate()), figures(resumed.evaluate())
    assert "eval_worst_group_accuracy" in ma and "eval_avg_bits" in ma
    assert ma == mb


# --- models x methods, finalize -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "ds", "method"),
    [
        (vit, ImageDS, {"method": "codeq", "bits": 4}),
        (vit, ImageDS, {"method": "momos", "block_size": 4, "capacity": 0.05}),
        (bert, TextDS, {"method": "bmrs", "gate_lr": 0.5, "prior": "uniform"}),
        (bert, TextDS, {"method": "uniform", "bits": 3}),
    ],
    ids=["vit-codeq", "vit-momos", "bert-bmrs", "bert-uniform"],
)
def test_finalize_at_end(tmp_path: Any, make: Any, ds: Any, method: dict[str, Any]) -> None:
    from torch.nn.utils import parametrize

    fq = FQCallback.from_recipe(recipe(method), finalize_at_end=True)
    ev = ds(32, 2)
    trainer = fq.trainer(Trainer, model=make(0), args=targs(tmp_path), train_dataset=ds(48, 1),
                         eval_dataset=ev)
    trainer.train()
    fake = fq.report  # none yet: evaluation runs on the finalized model below
    assert fake is None and fq.final_model is trainer.model
    assert not any(parametrize.is_parametrized(m) for m in trainer.model.modules())
    assert fq.finalize_max_abs_diff is not None and fq.finalize_max_abs_diff < 1e-4
    metrics = trainer.evaluate()
    assert metrics["eval_finalize_max_abs_diff"] == fq.finalize_max_abs_diff
    assert fq.report is not None and fq.report.methods == [method["method"]]


def test_event_hooks_fire_per_step_and_evaluation(tmp_path: Any) -> None:
    from fq_plugins import hookimpl
    from fq_plugins.manager import get_plugin_manager

    class Recorder:
        def __init__(self) -> None:
            self.steps: list[tuple[int, str, dict[str, float]]] = []
            self.reports: list[Any] = []

        @hookimpl
        def fq_on_step(self, step: int, phase: str, losses: dict[str, float]) -> None:
            self.steps.append((step, phase, losses))

        @hookimpl
        def fq_on_evaluation(self, report: Any) -> None:
            self.reports.append(report)

    pm = get_plugin_manager()
    rec = Recorder()
    pm.register(rec, name="recorder")
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}), plugin_manager=pm)
    trainer = fq.trainer(Trainer, model=bert(), args=targs(tmp_path, max_steps=3),
                         train_dataset=TextDS(64, 1), eval_dataset=TextDS(32, 2))
    trainer.train()
    trainer.evaluate()
    assert [s for s, _, _ in rec.steps] == [0, 1, 2]
    assert all(p == "train" and {"task", "fairness", "total"} <= set(d) for _, p, d in rec.steps)
    assert rec.reports == [fq.report]


def test_finalized_model_loads_in_stock_transformers(tmp_path: Any) -> None:
    from transformers import BertForSequenceClassification

    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 3}), finalize_at_end=True)
    trainer = fq.trainer(Trainer, model=bert(), args=targs(tmp_path, max_steps=2),
                         train_dataset=TextDS(32, 1))
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    loaded = BertForSequenceClassification.from_pretrained(str(tmp_path / "final")).eval()
    x = TextDS(8, 3).x
    with torch.no_grad():
        want = fq.final_model.eval()(input_ids=x).logits
        got = loaded(input_ids=x).logits
    assert torch.equal(want, got)
    # the weights are on the 3-bit grid: at most 2^3 distinct values per output channel
    w = loaded.bert.encoder.layer[0].intermediate.dense.weight
    assert max(len(torch.unique(row)) for row in w) <= 8


def test_torchrun_without_process_group_warns(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchrun sets WORLD_SIZE; a Trainer that did not join the process group has world size 1
    args = targs(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}))
    with pytest.warns(RuntimeWarning, match=r"use_cpu=True"):
        fq.trainer(Trainer, model=bert(), args=args, train_dataset=TextDS(32, 1))


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Any) -> None:
    # BERT accepts loss kwargs, so Trainer passes num_items_in_batch and does not divide the
    # loss itself: the adapter must scale it. SGD, no clipping, no fairness term (which is
    # not additive over micro-batches): 2 x 8 accumulated = 1 x 16, up to float rounding.
    fairness = {"regularizer": {"kind": "none"}, "metrics": ["worst_group_accuracy"]}
    params = []
    for bs, accum in ((16, 1), (8, 2)):
        fq = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}, fairness=fairness))
        args = targs(tmp_path, max_steps=1, per_device_train_batch_size=bs,
                     gradient_accumulation_steps=accum, optim="sgd", learning_rate=0.5,
                     max_grad_norm=0.0, weight_decay=0.0, lr_scheduler_type="constant")
        trainer = fq.trainer(Trainer, model=bert(), args=args, train_dataset=TextDS(16, 1))
        assert trainer.model_accepts_loss_kwargs
        trainer.train()
        params.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    start = bert().state_dict()
    moved = [k for k in start if k in params[0] and not torch.equal(start[k], params[0][k])]
    assert moved, "the step changed the weights"
    for k in params[0]:
        torch.testing.assert_close(params[0][k], params[1][k], atol=1e-6, rtol=1e-5)


def test_export_is_checked_and_refuses_changed_shapes(tmp_path: Any) -> None:
    from transformers import BertForSequenceClassification

    fq = FQCallback.from_recipe(recipe({"method": "codeq", "bits": 4}))
    trainer = fq.trainer(Trainer, model=bert(), args=targs(tmp_path, max_steps=2),
                         train_dataset=TextDS(32, 1))
    trainer.train()
    final = fq.export(tmp_path / "export")  # finalizes first
    loaded = BertForSequenceClassification.from_pretrained(str(tmp_path / "export")).eval()
    x = TextDS(8, 3).x
    with torch.no_grad():
        assert torch.equal(final.eval()(input_ids=x).logits, loaded(input_ids=x).logits)
    # a model whose shapes no longer match its config (what BMRS's removal does) is refused
    fq2 = FQCallback.from_recipe(recipe({"method": "uniform", "bits": 4}))
    fq2.trainer(Trainer, model=bert(), args=targs(tmp_path, max_steps=1), train_dataset=TextDS(32, 1))
    pruned = fq2.finalize()
    dense = pruned.bert.pooler.dense
    pruned.bert.pooler.dense = nn.Linear(dense.in_features, dense.out_features - 4)
    with pytest.raises(ConfigError, match="shapes differ from its config"):
        fq2.export(tmp_path / "pruned")
