"""The host-neutral engine: objective, pipeline, fit, installers — and a toy compressor,
defined only here, going through stages, storage, the report and the contract tests with
no special case anywhere in the package."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fq_plugins import hookimpl
from fq_plugins.compressors.ops import QuantCodes
from fq_plugins.engine import CompressionPipeline, Objective, ParametrizeInstaller, fit
from fq_plugins.errors import ConfigError
from fq_plugins.fairness.regularizers import RegularizerSpec
from fq_plugins.manager import get_plugin_manager
from fq_plugins.protocols import (
    CompressionStats,
    Compressor,
    LayerStats,
    MethodConfig,
)
from fq_plugins.session import CompressionSession
from fq_plugins.storage import load_compressed
from fq_plugins.testing import CompressorContract

# --- a toy third-party compressor: ternary weights with a threshold schedule ------------


class TernaryQuant(nn.Module):
    """``ŵ = s_c·sign(w)·[|w| > t_c]``, ``t_c = ratio·mean|w_c|``, ``s_c`` = mean of kept |w|."""

    ratio: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("ratio", torch.tensor(0.5))

    def _terms(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = w.detach().abs().reshape(w.shape[0], -1)
        keep = a > self.ratio * a.mean(dim=1, keepdim=True)
        s = (a * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
        shape = (-1,) + (1,) * (w.dim() - 1)
        return keep.reshape(w.shape), s.reshape(shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        keep, s = self._terms(w)
        q = torch.sign(w.detach()) * keep
        return w + (q * s - w).detach()  # not learnable: the whole-tensor STE is fine here

    @torch.no_grad()
    def quant_codes(self, w: torch.Tensor) -> QuantCodes:
        keep, s = self._terms(w)
        c = w.shape[0]
        return QuantCodes(
            codes=(torch.sign(w) * keep).long(), scale=s.reshape(-1), shift=torch.zeros(c),
            max_code=torch.ones(c), bits=torch.full((c,), 2.0),
        )


class ToyConfig(MethodConfig):
    final_ratio: float = Field(0.7, gt=0, lt=2)
    ramp_steps: int = Field(4, ge=1)


class ToyTernary(Compressor):
    name = "toy_ternary"
    description = "Toy: ternary weights whose threshold ramps up over training."
    Config = ToyConfig
    config: ToyConfig

    def attach(self, model, targets, context=None):
        self.add_state(targets[0][1]).put("step", torch.zeros((), dtype=torch.int64))
        for t in targets:
            self.install_transform(t.name, t.module, TernaryQuant(), t.param)
            self.attached.append((t.name, t.module))

    def on_step(self, step: int) -> None:
        n = int(self.state.get("step")) + 1
        self.state.put("step", torch.tensor(n))
        r = 0.5 + (self.config.final_ratio - 0.5) * min(1.0, n / self.config.ramp_steps)
        for t in self.transforms:
            t.transform.ratio.fill_(r)

    def stats(self) -> CompressionStats:
        return CompressionStats(
            self.name,
            {t.name: LayerStats(bits=torch.full((self.original(t.module).shape[0],), 2.0))
             for t in self.transforms},
            extra={"threshold_ratio": float(self.transforms[0].transform.ratio)},
        )

    def summary(self) -> str | None:
        return f"toy: threshold ratio {float(self.transforms[0].transform.ratio):.2f}"

    def finalize(self, model):
        self.bake_transforms()
        self.remove_state()
        return model


class ToyPlugin:
    @hookimpl
    def fq_register_compressors(self, register):
        register(ToyTernary)


class TestToyContract(CompressorContract):
    compressor_cls = ToyTernary


# --- the contract tests can fail -------------------------------------------------------


class ForgetfulToy(ToyTernary):
    """Keeps its schedule in a plain attribute: lost by a checkpoint."""

    name = "forgetful_toy"

    def attach(self, model, targets, context=None):
        super().attach(model, targets, context)
        self.steps_done = 0

    def on_step(self, step: int) -> None:
        self.steps_done += 1
        for t in self.transforms:
            t.transform.ratio.fill_(0.5 + 0.05 * self.steps_done)  # from the lost counter

    def stats(self):
        return super().stats()


class TestForgetfulFails(CompressorContract):
    compressor_cls = ForgetfulToy

    def test_resume_from_checkpoint_is_identical(self) -> None:
        with pytest.raises(AssertionError):
            super().test_resume_from_checkpoint_is_identical()


class SilentToy(ToyTernary):
    """Quantizes but reports no bits (the accounting would count 32)."""

    name = "silent_toy"

    def stats(self):
        return CompressionStats(self.name)


class TestSilentFails(CompressorContract):
    compressor_cls = SilentToy

    def test_a_quantizer_reports_its_bits(self) -> None:
        with pytest.raises(AssertionError, match="no bits"):
            super().test_a_quantizer_reports_its_bits()


# --- the toy through `fq-plugins run`: stages, report, storage ---------------------------


def test_toy_goes_through_run_stages_report_and_storage(tmp_path, capsys):
    from fq_plugins.models import build_model
    from fq_plugins.recipe import load_recipe
    from fq_plugins.run import run

    pm = get_plugin_manager(autoload=False)
    pm.register(ToyPlugin(), name="toy-plugin")
    recipe = load_recipe(
        {
            "name": "toy",
            "data": {"synthetic": {"n": 240, "image_size": 8}},
            "model": {"kwargs": {"width": 4}},
            "train": {"epochs": 1},
            "finetune": {"epochs": 1},
            "compress": [
                {"method": "bmrs", "criterion": "l2", "l2_threshold": 1000.0},
                {"method": "toy_ternary", "ramp_steps": 1, "targets": {"ignore": ["head"]}},
            ],
        },
        plugin_manager=pm,
    )
    logs: list[str] = []
    report, _ = run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "run"), log=logs.append)
    (rep,) = report.variants[1:]
    assert rep.methods == ["bmrs", "toy_ternary"]
    assert [m["method"] for m in rep.method_stats] == ["bmrs", "toy_ternary"]
    assert rep.method_stats[1]["threshold_ratio"] == pytest.approx(0.7)
    assert any("toy: threshold ratio 0.70" in line for line in logs)
    assert any("stage 1/2 finalized (bmrs)" in line for line in logs)
    assert rep.finalize_max_abs_diff is not None and rep.finalize_max_abs_diff < 1e-4
    quantized = [lc for lc in rep.cost.layers if lc.quantized]
    assert quantized and all(lc.bits_param == 2.0 for lc in quantized)
    assert rep.checkpoint is not None and rep.checkpoint["float_layers"] == []
    assert len(rep.checkpoint["packed_layers"]) == len(quantized)
    # the pruned + ternary checkpoint loads into a freshly built, unpruned model
    fresh = build_model("small_cnn", in_channels=3, image_size=8, n_classes=8, width=4)
    load_compressed(rep.checkpoint["path"], fresh)
    assert sum(p.numel() for p in fresh.parameters()) < sum(
        p.numel() for p in build_model("small_cnn", in_channels=3, image_size=8, n_classes=8, width=4).parameters()
    )


# --- the objective ------------------------------------------------------------------------


def test_objective_terms_against_a_hand_computed_case():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 0])
    g = torch.tensor([0, 1, 1, 0])
    ce = [-torch.log_softmax(logits[i], 0)[y[i]].item() for i in range(4)]
    g0, g1 = (ce[0] + ce[3]) / 2, (ce[1] + ce[2]) / 2
    obj = Objective(regularizer=RegularizerSpec(kind="gap", weight=0.5))
    terms = obj(logits, y, g)
    assert terms.terms["task"].item() == pytest.approx(sum(ce) / 4, abs=1e-12)
    assert terms.terms["fairness"].item() == pytest.approx(abs(g0 - g1), abs=1e-12)
    assert terms.total.item() == pytest.approx(sum(ce) / 4 + 0.5 * abs(g0 - g1), abs=1e-12)
    # per-example losses of any task give the same terms
    same = obj(losses=F.cross_entropy(logits, y, reduction="none"), groups=g)
    assert same.total.item() == pytest.approx(terms.total.item(), abs=1e-15)


def test_objective_adds_the_session_penalty_and_needs_groups_for_fairness():
    model = nn.Sequential(nn.Linear(3, 2))
    session = CompressionSession.from_configs(
        [{"method": "codeq", "bits": 4, "sparsity_pressure": 0.25}]
    )
    session.attach(model)
    obj = Objective(regularizer=RegularizerSpec(kind="worst", weight=1.0), session=session)
    logits = model(torch.randn(4, 3))
    terms = obj(logits, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    assert terms.terms["penalty"].item() == pytest.approx(0.25 * 3.0**2)  # λ·ℓ_d², ℓ_d = 3
    with pytest.raises(ConfigError, match="needs group ids"):
        obj(logits, torch.tensor([0, 1, 0, 1]))


def test_fit_reads_mapping_batches_with_the_group_key():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    batches = [
        {"x": torch.randn(8, 4), "y": torch.randint(0, 2, (8,)), "sex": torch.arange(8) % 2}
        for _ in range(3)
    ]
    seen: list[dict[str, float]] = []

    class Spy:
        def on_step(self, step, phase, losses):
            seen.append(losses)

    obj = Objective(regularizer=RegularizerSpec(kind="gap", weight=1.0))
    fit(model, batches, epochs=2, lr=1e-2, objective=obj, group_key="sex", pm=Spy(), log=lambda s: None)  # type: ignore[arg-type]
    assert len(seen) == 6 and all("fairness" in s for s in seen)
    with pytest.raises(ConfigError, match="needs group ids"):
        fit(model, batches, epochs=1, lr=1e-2, objective=obj, group_key="group", log=lambda s: None)


# --- pipeline and installers ---------------------------------------------------------------


def test_pipeline_checks_finalize_against_the_fake_quantized_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 6)
    pipe = CompressionPipeline([{"method": "uniform", "bits": 3}])
    model = pipe.start(model)
    with torch.no_grad():
        fake = model(x)
    with pytest.raises(RuntimeError, match="last stage"):
        pipe.next_stage(model)
    final = pipe.finalize(model, lambda m: m(x).detach())
    assert pipe.max_diff == 0.0
    assert torch.equal(final(x), fake)
    assert set(pipe.storage_codes()) == {"0", "2"}


def test_parametrize_installer_gives_each_transform_its_input():
    class Scale(nn.Module):
        def __init__(self, k: float) -> None:
            super().__init__()
            self.k = k

        def forward(self, w):
            return w * self.k

    lin = nn.Linear(2, 2)
    w0 = lin.weight.detach().clone()
    inst = ParametrizeInstaller()
    a, b = Scale(2.0), Scale(3.0)
    inst.install(lin, "weight", a)
    inst.install(lin, "weight", b)
    assert inst.transforms(lin, "weight") == [a, b]
    assert torch.equal(inst.input_of(lin, "weight", b), w0 * 2.0)
    assert torch.equal(inst.original(lin, "weight"), w0)
    inst.bake(lin, "weight")
    assert torch.equal(lin.weight, w0 * 6.0) and inst.transforms(lin, "weight") == []
    with pytest.raises(ValueError, match="no tensor 'gamma'"):
        inst.install(lin, "gamma", a)


def test_targets_select_parameter_pairs_not_only_weights():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2, bias=False))
    session = CompressionSession.from_configs(
        [{"method": "uniform", "bits": 4, "targets": {"parameter": "bias"}}]
    )
    session.attach(model)
    (t,) = session.methods[0].transforms
    assert (t.name, t.param) == ("0", "bias")  # the bias-free layer is skipped


def test_the_readme_own_loop_example_runs(tmp_path, monkeypatch):
    """README's "In your own training loop" code, run as written on a small model."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## In your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    scope: dict[str, Any] = {
        "model": nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4)),
        "batches": [
            (torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,)), torch.arange(16) % 2)
            for _ in range(3)
        ],
    }
    scope["x_check"] = scope["batches"][0][0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["pipe"].max_diff == 0.0
    assert (tmp_path / "model.fqz").exists()


def test_fit_refuses_a_one_shot_iterator_for_several_epochs():
    model = nn.Linear(2, 2)
    batches = iter([(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))])
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit(model, batches, epochs=2, lr=1e-2, log=lambda s: None)


class _VolatileMask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)  # the mistake: not in state_dict

    def forward(self, w):
        return w * self.mask


class VolatileMaskPrune(Compressor):
    """Magnitude pruning whose mask (from the weights at attach) is a non-persistent buffer."""

    name = "volatile_prune"
    description = "Prunes with a mask a checkpoint does not carry."

    def attach(self, model, targets, context=None):
        for t in targets:
            w = self.original(t.module, t.param).detach()
            mask = (w.abs() > w.abs().median()).float()
            self.install_transform(t.name, t.module, _VolatileMask(mask), t.param)
            self.attached.append((t.name, t.module))

    def finalize(self, model):
        self.bake_transforms()
        return model


class TestVolatileMaskFails(CompressorContract):
    compressor_cls = VolatileMaskPrune

    def test_resume_from_checkpoint_is_identical(self) -> None:
        with pytest.raises(AssertionError):
            super().test_resume_from_checkpoint_is_identical()
