"""The HF adapter on an image classifier (ViT) and on timm through ``TimmWrapper``, every
built-in method, and what happens to a checkpoint once BMRS has removed channels.

Models from configs only (no download). Oracles: metrics recomputed by hand from the
predictions (test_hf's ``_oracle_metrics``), the fake-quantized model's logits for
finalize, the stock ``from_pretrained`` for what loads.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("timm")
pytest.importorskip("torch_pruning")

from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, Trainer

from fq_plugins.adapters.hf import FQCallback
from fq_plugins.errors import ConfigError

from .test_hf import BAQ, N_CLASSES, ImageDS, _oracle_metrics, recipe, targs, vit


def timm_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture="resnet10t", num_labels=N_CLASSES)
    )


def _zero_half_the_masks(fq: FQCallback) -> int:
    """What BMRS's mask update does to units it drops: mask = 0 (here: half of each site)."""
    (method,) = fq.pipeline.session.methods
    n = 0
    for s in method.sites:
        mask = s.host.bmrs_gate.mask
        mask[: mask.numel() // 2] = 0
        n += mask.numel() // 2
    return n


TIMM_METHODS = {
    "baq": BAQ,
    "codeq": {"method": "codeq", "bits": 4},
    "uniform": {"method": "uniform", "bits": 4},
    "momos": {"method": "momos", "block_size": 4, "capacity": 0.05},
    "bmrs": {"method": "bmrs", "gate_lr": 0.5},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TIMM_METHODS))
def test_timm_wrapper_every_method(tmp_path: Any, name: str) -> None:
    method = TIMM_METHODS[name]
    fq = FQCallback.from_recipe(recipe(method), finalize_at_end=True)
    ev = ImageDS(32, 2)
    trainer = fq.trainer(
        Trainer,
        model=timm_resnet(),
        args=targs(tmp_path, max_steps=2),
        train_dataset=ImageDS(32, 1),
        eval_dataset=ev,
    )
    trainer.train()
    assert fq.final_model is trainer.model
    assert fq.finalize_max_abs_diff is not None and fq.finalize_max_abs_diff < 1e-4
    metrics = trainer.evaluate()
    oracle = _oracle_metrics(torch.as_tensor(trainer.predict(ev).predictions), ev.y, ev.g)
    assert metrics["eval_accuracy"] == pytest.approx(oracle["accuracy"])
    assert metrics["eval_worst_group_accuracy"] == pytest.approx(oracle["worst"])
    assert metrics["eval_eodd"] == pytest.approx(oracle["eodd"])
    if name in ("codeq", "uniform"):
        assert metrics["eval_avg_bits"] == pytest.approx(4.0, abs=1e-6)
    elif name == "baq":
        assert 2.0 <= metrics["eval_avg_bits"] <= 4.0 + 1e-3
    else:  # momos shares motifs, bmrs removes channels: both keep fp32 values
        assert metrics["eval_avg_bits"] == pytest.approx(32.0)


def test_bmrs_after_removal_checkpoints(tmp_path: Any) -> None:
    fq = FQCallback.from_recipe(recipe({"method": "bmrs"}))
    fq.trainer(Trainer, model=timm_resnet(), args=targs(tmp_path), train_dataset=ImageDS(32, 1))
    assert _zero_half_the_masks(fq) > 0
    final = fq.finalize()
    assert fq.finalize_max_abs_diff is not None and fq.finalize_max_abs_diff < 1e-4
    ref = timm_resnet().state_dict()
    smaller = [k for k, v in final.state_dict().items() if v.shape != ref[k].shape]
    assert smaller, "BMRS removed channels"
    # save_pretrained writes the smaller tensors under the config of the full model: a
    # stock from_pretrained refuses them (it would re-initialise them with
    # ignore_mismatched_sizes=True), and fq.export says so before writing anything
    final.save_pretrained(str(tmp_path / "pruned"))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        TimmWrapperForImageClassification.from_pretrained(str(tmp_path / "pruned"))
    with pytest.raises(ConfigError, match="shapes differ from its config"):
        fq.export(tmp_path / "export")
    assert not (tmp_path / "export").exists()
    # what does keep it: the whole module (torch.save), the callback's hooks left out
    torch.save(final, tmp_path / "whole.pt")
    back = torch.load(tmp_path / "whole.pt", weights_only=False).eval()
    x = fq.example_input
    final.eval()
    with torch.no_grad():
        assert torch.equal(back(pixel_values=x).logits, final(pixel_values=x).logits)


def test_bmrs_on_hf_vit_removes_mlp_units(tmp_path: Any) -> None:
    # HF's MLP activation is transformers.activations.GELUActivation: BMRS's trace must
    # know it as elementwise to gate the MLP's hidden units
    fq = FQCallback.from_recipe(recipe({"method": "bmrs"}))
    fq.trainer(Trainer, model=vit(), args=targs(tmp_path), train_dataset=ImageDS(32, 1))
    (method,) = fq.pipeline.session.methods
    assert any(s.name.endswith(("mlp.fc1", "intermediate.dense")) for s in method.sites)
    _zero_half_the_masks(fq)
    final = fq.finalize()
    assert fq.finalize_max_abs_diff is not None and fq.finalize_max_abs_diff < 1e-4
    fc1 = [m for n, m in final.named_modules() if n.endswith(("mlp.fc1", "intermediate.dense"))]
    assert fc1 and all(m.out_features < 64 for m in fc1)  # intermediate_size 64
