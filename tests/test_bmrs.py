"""BMRS: gate math against float64 numerical integration, gate placement, masks, physical
channel removal (exact), pipelines, bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from fq_plugins.accounting import model_cost
from fq_plugins.compressors.bmrs import BMRSCompressor, BMRSConfig
from fq_plugins.compressors.bmrs.evidence import (
    REFERENCE_LOG_SIGMA,
    delta_f_normal,
    delta_f_uniform,
    effective,
    gate_mean,
    gate_sample,
    gate_snr,
    kl_to_log_uniform,
    log_ndtr_diff,
)
from fq_plugins.errors import ConfigError
from fq_plugins.manager import get_plugin_manager
from fq_plugins.models import MLP
from fq_plugins.protocols import AttachContext
from fq_plugins.session import CompressionSession
from fq_plugins.targets import select_targets
from fq_plugins.testing import CompressorContract

A, B = -20.0, 0.0
D = torch.float64

# (μ, σ): inside, near a boundary, far outside [a, b], tiny and huge σ
CASES = [
    (-5.0, 2.0),
    (-0.3, 0.05),
    (0.0, 1.0),
    (-19.0, 1.5),
    (-10.0, 30.0),
    (3.0, 0.5),
    (-25.0, 2.0),
]


def _t(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=D)


def _tn(mu: float, sig: float, a: float = A, b: float = B) -> stats.rv_continuous:
    return stats.truncnorm((a - mu) / sig, (b - mu) / sig, loc=mu, scale=sig)


def _quad(f, lo: float, hi: float, points: list[float]) -> float:
    pts = sorted(p for p in points if lo < p < hi)
    val, _ = integrate.quad(f, lo, hi, points=pts or None, limit=500, epsabs=0, epsrel=1e-11)
    return float(val)


def _log_evidence_ratio(mu: float, sig: float, log_reduced) -> float:
    """log ∫ q(x) p̃(x)/p(x) dx by quadrature in float64, shifted by the log-integrand's max."""
    q = _tn(mu, sig)

    def f(x: float) -> float:
        return float(q.logpdf(x) + log_reduced(x) + math.log(B - A))

    m = max(f(x) for x in np.linspace(A, B, 4001))
    return m + math.log(_quad(lambda x: math.exp(f(x) - m), A, B, [mu]))


# --- math -------------------------------------------------------------------------


@pytest.mark.parametrize("mu,sig", CASES)
def test_kl_matches_numerical_integration(mu: float, sig: float) -> None:
    q = _tn(mu, sig)
    lo, hi = max(A, mu - 12 * sig), min(B, mu + 12 * sig)
    if lo >= hi:  # all mass at one bound: integrate over the whole support
        lo, hi = A, B
    want = _quad(lambda x: q.pdf(x) * (q.logpdf(x) + math.log(B - A)), lo, hi, [mu])
    got = float(kl_to_log_uniform(_t(mu), _t(math.log(sig)), A, B))
    assert got == pytest.approx(want, rel=1e-7, abs=1e-8)


@pytest.mark.parametrize("mu,sig", CASES)
def test_gate_mean_and_snr_match_numerical_moments(mu: float, sig: float) -> None:
    q = _tn(mu, sig)
    m1 = _quad(lambda x: math.exp(x) * q.pdf(x), A, B, [mu])
    m2 = _quad(lambda x: math.exp(2 * x) * q.pdf(x), A, B, [mu])
    got = float(gate_mean(_t(mu), _t(math.log(sig)), A, B))
    assert got == pytest.approx(m1, rel=1e-7)
    if m2 - m1**2 > 1e-10 * m1**2:
        snr = float(gate_snr(_t(mu), _t(math.log(sig)), A, B))
        assert snr == pytest.approx(m1 / math.sqrt(m2 - m1**2), rel=1e-5)


@pytest.mark.parametrize(
    "mu,sig,m,s",
    [
        (-5, 2, -20, 0.5),
        (-10, 3, -20, 1e-3),
        (-18, 1.5, -20, 1e-6),
        (-3, 0.5, -4, 0.3),
        (-15, 4, -20, 1e-6),
        (0, 1, -20, 0.7),
    ],
)
def test_delta_f_normal_matches_numerical_evidence_ratio(mu, sig, m, s) -> None:
    z_p = stats.norm.cdf(B, m, s) - stats.norm.cdf(A, m, s)  # truncated reduced prior
    if s < 1e-4:  # the reduced prior is a spike: integrate over its support only
        q = _tn(mu, sig)
        lo, hi = A, min(B, m + 40 * s)

        def f(x: float) -> float:
            return float(q.logpdf(x) + stats.norm.logpdf(x, m, s) - math.log(z_p) + math.log(B - A))

        mx = max(f(x) for x in np.linspace(lo, hi, 2001))
        want = mx + math.log(_quad(lambda x: math.exp(f(x) - mx), lo, hi, [m]))
    else:
        want = _log_evidence_ratio(mu, sig, lambda x: stats.norm.logpdf(x, m, s) - math.log(z_p))
    got = float(delta_f_normal(_t(mu), _t(math.log(sig)), A, B, reduced_mu=m, reduced_sigma=s))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("p", [8.0, 4.0, 1.5])
@pytest.mark.parametrize("mu,sig", [(-5.0, 2.0), (-10.0, 30.0), (-0.2, 0.1), (-14.0, 1.0)])
def test_delta_f_uniform_matches_numerical_evidence_ratio(mu, sig, p) -> None:
    lo, hi = -23 * math.log(2), -p * math.log(2)
    if sig > 0.2:
        log_mass = math.log(_quad(_tn(mu, sig).pdf, lo, hi, [mu]))
    else:  # far in q's lower tail: Φ differences from scipy's log-CDF, over Z_q
        lh, ll = stats.norm.logcdf((hi - mu) / sig), stats.norm.logcdf((lo - mu) / sig)
        z_q = stats.norm.cdf((B - mu) / sig) - stats.norm.cdf((A - mu) / sig)
        log_mass = float(lh + np.log1p(-np.exp(ll - lh)) - np.log(z_q))
    want = log_mass + math.log((B - A) / (hi - lo))
    got = float(delta_f_uniform(_t(mu), _t(math.log(sig)), A, B, precision=p))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_delta_f_default_spike_is_finite_and_orders_units() -> None:
    """Defaults (σ̃_p = 1e-6): a unit pushed to a prunes, a confident unit at b does not,
    and nothing overflows (the naive form subtracts numbers of order 1e14)."""
    mu = torch.tensor([-19.5, -12.0, 0.0, -0.5], dtype=D)
    ls = torch.log(torch.tensor([1.0, 3.0, 0.01, 0.2], dtype=D))
    df = delta_f_normal(mu, ls, A, B)
    assert torch.isfinite(df).all()
    assert df[0] > 0 and df[2] < 0 and df[3] < 0
    assert df[0] > df[1] > df[3]


def test_log_ndtr_diff_is_stable_in_both_tails() -> None:
    lo = torch.tensor([-40.0, 30.0, -1.0, 8.0, -9.0], dtype=D)
    hi = torch.tensor([-39.0, 31.0, 1.0, 8.5, 9.0], dtype=D)
    # reference: scipy's log-tail functions, subtracting in the tail that has no cancellation
    want = []
    for lv, h in zip(lo.tolist(), hi.tolist(), strict=True):
        if lv > 0:
            big, small = stats.norm.logsf(lv), stats.norm.logsf(h)
        else:
            big, small = stats.norm.logcdf(h), stats.norm.logcdf(lv)
        want.append(float(big + np.log1p(-np.exp(small - big))))
    np.testing.assert_allclose(log_ndtr_diff(lo, hi).numpy(), want, rtol=1e-10)


@pytest.mark.parametrize(
    "mu,ls",
    [
        (40.0, -5.0),
        (0.05, -12.0),
        (0.2, -5.0),
        (-60.0, -5.0),
        (1.0, -25.0),
        (-10.0, 9.0),
        (-3.0, 20.0),
    ],
)
def test_float32_parameters_far_outside_give_the_effective_values(mu: float, ls: float) -> None:
    """float32 gates with μ many σ outside [a, b] or a huge σ: KL and E[θ] equal quadrature
    of the effective posterior (μ within 10σ of [a, b], σ ≤ 10(b − a)), and the KL's
    gradient pulls an outlying μ back toward [a, b]."""
    m = torch.tensor([mu], requires_grad=True)
    s = torch.tensor([ls], requires_grad=True)
    kl = kl_to_log_uniform(m, s, A, B)
    mean = gate_mean(m, s, A, B)
    kl.sum().backward()
    mu_e, ls_e = (float(v) for v in effective(torch.tensor([mu]), torch.tensor([ls]), A, B))
    sig = math.exp(ls_e)
    q = _tn(mu_e, sig)
    lo, hi = max(A, mu_e - 12 * sig), min(B, mu_e + 12 * sig)
    if lo >= hi:
        lo, hi = (B - 12 * sig, B) if mu_e > B else (A, A + 12 * sig)
    want_kl = _quad(lambda x: q.pdf(x) * (q.logpdf(x) + math.log(B - A)), lo, hi, [mu_e])
    want_mean = _quad(lambda x: math.exp(x) * q.pdf(x), lo, hi, [mu_e])
    assert kl.item() == pytest.approx(want_kl, rel=1e-5, abs=1e-6)
    assert mean.item() == pytest.approx(want_mean, rel=1e-5, abs=1e-12)
    assert torch.isfinite(m.grad).all() and torch.isfinite(s.grad).all()
    if mu > B + 1e-3:
        assert float(m.grad) > 0  # descent lowers μ toward b
    if mu < A:
        assert float(m.grad) < 0


def test_samples_stay_finite_for_outlying_parameters() -> None:
    mu = torch.tensor([-60.0, 40.0, -10.0, 0.0], requires_grad=True)
    ls = torch.tensor([-5.0, -5.0, 30.0, -30.0], requires_grad=True)
    x = gate_sample(mu, ls, A, B, torch.rand(16, 4))
    x.sum().backward()
    assert bool(((x >= A) & (x <= B)).all())
    assert torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()


def test_samples_follow_the_truncated_normal() -> None:
    torch.manual_seed(0)
    mu, sig = torch.tensor([-4.0], dtype=D), 1.7
    u = torch.rand(20000, 1, dtype=D)
    x = gate_sample(mu, torch.tensor([math.log(sig)], dtype=D), A, B, u).flatten().numpy()
    assert x.min() >= A and x.max() <= B
    res = stats.kstest(x, _tn(-4.0, sig).cdf)
    assert res.pvalue > 1e-3


# --- the compressor: contract, placement, masks ------------------------------------


class TestBMRSContract(CompressorContract):
    compressor_cls = BMRSCompressor
    config = {"prior": "uniform", "precision": 6}


def _attach(model: nn.Module, x: torch.Tensor, **cfg) -> BMRSCompressor:
    comp = BMRSCompressor(**cfg)
    comp.attach(model, select_targets(model, comp.config.targets), AttachContext(example_input=x))
    return comp


def test_gate_placement_resnet_and_mlp() -> None:
    timm = pytest.importorskip("timm")
    m = timm.create_model("resnet18", pretrained=False, num_classes=7)
    comp = _attach(m, torch.randn(2, 3, 32, 32))
    hosts = {s.name: s.host_name for s in comp.sites}
    assert hosts["conv1"] == "bn1" and hosts["layer1.0.conv2"] == "layer1.0.bn2"
    assert hosts["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert len(comp.sites) == 20 and "fc" in comp.skipped
    mlp = MLP(48, 5, hidden=16)
    comp = _attach(mlp, torch.randn(2, 3, 4, 4))
    assert [s.units for s in comp.sites] == [16, 16] and "head" in comp.skipped


def _tiny_deit(timm) -> nn.Module:
    """DeiT-tiny's architecture at 32 px, 2 blocks, width 48 (built from config, no weights)."""
    return timm.create_model(
        "deit_tiny_patch16_224",
        pretrained=False,
        num_classes=5,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=48,
        num_heads=3,
    )


def test_vit_gates_only_mlp_hidden_units() -> None:
    timm = pytest.importorskip("timm")
    m = _tiny_deit(timm)
    comp = _attach(m, torch.randn(2, 3, 32, 32))
    assert sorted(s.name for s in comp.sites) == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    for name in ("blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc2", "head"):
        assert name in comp.skipped


def test_training_forward_samples_and_eval_uses_the_mean() -> None:
    torch.manual_seed(0)
    mlp = MLP(12, 3, hidden=8)
    x = torch.randn(6, 3, 2, 2)
    comp = _attach(mlp, x, init_log_sigma=0.0)
    mlp.train()
    assert not torch.equal(mlp(x), mlp(x))  # fresh noise per call (and per example)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))
    gate = comp.sites[0].host.bmrs_gate
    assert gate.theta(None).shape == (8,)
    assert float(comp.penalty().detach()) == pytest.approx(
        float(torch.stack([s.host.bmrs_gate.kl().mean() for s in comp.sites]).mean()), rel=1e-6
    )


def test_masks_follow_the_criterion_come_back_and_freeze() -> None:
    mlp = MLP(12, 3, hidden=8)
    comp = _attach(mlp, torch.randn(2, 3, 2, 2), mask_epochs=2)
    gate = comp.sites[0].host.bmrs_gate
    with torch.no_grad():
        gate.mu[:3] = -19.5
        gate.log_sigma[:3] = 0.0
    comp.on_epoch_end(0)
    assert gate.mask.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    with torch.no_grad():
        gate.mu[0] = 0.0
        gate.log_sigma[0] = -5.0
    comp.on_epoch_end(1)  # units may come back
    assert gate.mask.tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
    with torch.no_grad():
        gate.mu[:] = -19.5
        gate.log_sigma[:] = 0.0
    comp.on_epoch_end(2)  # past mask_epochs: frozen
    assert gate.mask.tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
    comp.update_masks()  # explicit update: everything would prune, one unit stays
    assert int(gate.mask.sum()) == 1


@pytest.mark.parametrize(
    "cfg,expect",
    [
        ({"prior": "normal", "delta_f": "exact"}, [1, 0, 0, 0]),
        # the reference ΔF is the exact one + ½·log 2π: the diffuse unit in the middle (exact
        # ΔF ≈ −0.05 > −0.92) prunes too
        ({"prior": "normal"}, [1, 1, 0, 0]),
        # BMRS_U's reduced prior is [ln 2^-23, ln 2^-p] (METHODS.md): a posterior below
        # ln 2^-23 = -15.9 has no mass there, so the unit at a is kept
        ({"prior": "uniform", "precision": 8}, [0, 1, 0, 0]),
        ({"prior": "uniform", "precision": 1}, [0, 1, 1, 0]),
        ({"criterion": "snr"}, [1, 1, 1, 0]),
    ],
)
def test_criteria(cfg, expect) -> None:
    mlp = MLP(12, 3, hidden=4)
    comp = _attach(mlp, torch.randn(2, 3, 2, 2), **cfg)
    gate = comp.sites[0].host.bmrs_gate
    with torch.no_grad():  # at a; diffuse in the middle; diffuse near b; confident at b
        gate.mu.copy_(torch.tensor([-19.5, -9.0, -0.5, -0.05]))
        gate.log_sigma.copy_(torch.log(torch.tensor([1.0, 30.0, 3.0, 0.01])))
    drop = comp.prune_decision(comp.sites[0])
    assert drop.int().tolist() == expect


def test_l2_criterion_uses_incoming_weight_norms() -> None:
    mlp = MLP(4, 3, hidden=3)
    comp = _attach(mlp, torch.randn(2, 1, 2, 2), criterion="l2", l2_threshold=0.5)
    fc = comp.sites[0].producer
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.3, 0.3, 0.3, 0.3], [1, 0, 0, 0.0]]))
    assert comp.prune_decision(comp.sites[0]).tolist() == [True, False, False]  # 0.2, 0.6, 1.0


# --- finalize removes channels, outputs unchanged -----------------------------------


def _random_masks(comp: BMRSCompressor, frac: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in comp.sites:
            g = s.host.bmrs_gate
            g.mu.uniform_(-2.0, 0.0, generator=gen)
            g.log_sigma.uniform_(-3.0, 0.0, generator=gen)
            g.mask.copy_((torch.rand(g.mask.shape, generator=gen) > frac).float())


def _check_removal(model: nn.Module, comp: BMRSCompressor, x: torch.Tensor) -> dict:
    model.eval()
    with torch.no_grad():
        expected = model(x)
    dense = model_cost(copy.deepcopy(model), {}, example_input=x[:1])
    final = comp.finalize(model)
    with torch.no_grad():
        got = final(x)
    assert float((got - expected).abs().max()) <= 1e-5
    assert not any(hasattr(m, "bmrs_gate") for m in final.modules())
    after = model_cost(final, {}, example_input=x[:1])
    return {"dense": dense, "after": after, "stats": comp.stats().extra}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_finalize_removes_channels_exactly_timm_resnet(arch: str) -> None:
    timm = pytest.importorskip("timm")
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    m = timm.create_model(arch, pretrained=False, num_classes=7)
    x = torch.randn(3, 3, 32, 32)
    comp = _attach(m, x)
    _random_masks(comp, 0.5, 1)
    # make a residual-stream channel removable: mask channel 5 in every producer of layer3's stream
    stream = [
        s
        for s in comp.sites
        if s.name.startswith("layer3")
        and s.units == s.producer.out_channels
        and (s.name.endswith(("conv2", "conv3", "downsample.0")))
    ]
    stream = [s for s in stream if s.units == stream[0].units]
    for s in stream:
        s.host.bmrs_gate.mask[5] = 0.0
    res = _check_removal(m, comp, x)
    st = res["stats"]
    assert st["removed"] > 0.1 * st["units"]
    assert (
        res["after"].weight_params < res["dense"].weight_params
        and res["after"].macs < res["dense"].macs
    )
    # every kept-but-masked channel is one that removal could not make exact
    assert st["removed"] + sum(st["masked_kept_per_layer"].values()) == st["masked"]
    assert st["removal_max_abs_diff"] <= 1e-5


def test_finalize_mlp_and_vit_hidden_units() -> None:
    pytest.importorskip("torch_pruning")
    timm = pytest.importorskip("timm")
    mlp = MLP(48, 5, hidden=32)
    x = torch.randn(4, 3, 4, 4)
    comp = _attach(mlp, x)
    _random_masks(comp, 0.6, 2)
    masked = int(sum((s.host.bmrs_gate.mask == 0).sum() for s in comp.sites))
    res = _check_removal(mlp, comp, x)
    assert res["stats"]["removed"] == masked  # every masked MLP unit is removable
    vit = _tiny_deit(timm)
    x = torch.randn(2, 3, 32, 32)
    comp = _attach(vit, x)
    _random_masks(comp, 0.5, 3)
    res = _check_removal(vit, comp, x)
    assert res["stats"]["removed"] > 0
    assert vit.blocks[0].mlp.fc1.out_features == vit.blocks[0].mlp.fc2.in_features < 192


def test_trained_model_finalize_matches_gated_eval() -> None:
    """A few real training steps (gates, KL, mask update), then finalize equals the gated model."""
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = CompressorContract().make_model()
    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 4, (16,))
    session = CompressionSession.from_configs([{"method": "bmrs", "gate_lr": 0.1}])
    session.attach(model, AttachContext(example_input=x))
    opt = torch.optim.Adam(session.param_groups(model, lr=1e-2))
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y) + session.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    comp = session.methods[0]
    with torch.no_grad():
        comp.sites[0].host.bmrs_gate.mask[:3] = 0.0
    model.eval()
    with torch.no_grad():
        expected = model(x)
    final = session.finalize(model)
    with torch.no_grad():
        torch.testing.assert_close(final(x), expected, rtol=0, atol=1e-5)
    assert final.conv.out_channels == 5  # 8 - 3


# --- bad input ----------------------------------------------------------------------


def test_no_gateable_layer_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ConfigError, match="no layer it can gate") as err:
        _attach(model, torch.randn(2, 3, 2, 2))
    assert "classifier" in str(err.value)


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"a": 0.0, "b": 0.0}, "a < b"),
        ({"a": 1.0, "b": -1.0}, "a < b"),
        ({"precision": 0.0}, r"outside \(0, 23\)"),
        ({"precision": 23.0}, r"outside \(0, 23\)"),
        ({"precision": -3}, r"outside \(0, 23\)"),
        ({"prior": "uniform", "a": -10.0}, "must lie inside"),
    ],
)
def test_bad_config_values(cfg, match) -> None:
    with pytest.raises(ValueError, match=match):
        BMRSConfig(method="bmrs", **cfg)
    from fq_plugins.recipe import load_recipe

    pm = get_plugin_manager(autoload=False)
    with pytest.raises(ConfigError, match=match) as err:
        load_recipe({"compress": [{"method": "bmrs", **cfg}]}, plugin_manager=pm)
    assert "compress[0]" in str(err.value)


def test_structural_method_must_come_first_and_alone() -> None:
    from fq_plugins.recipe import load_recipe

    pm = get_plugin_manager(autoload=False)
    with pytest.raises(ConfigError, match="move it to the front") as err:
        load_recipe(
            {"compress": [{"method": "uniform", "bits": 4}, {"method": "bmrs"}]}, plugin_manager=pm
        )
    assert "compress[1].method" in str(err.value)
    with pytest.raises(ConfigError, match="session of its own"):
        CompressionSession.from_configs([{"method": "bmrs"}, {"method": "uniform", "bits": 4}])


def test_attach_without_input_says_what_to_pass() -> None:
    mlp = MLP(12, 3)
    comp = BMRSCompressor()
    with pytest.raises(ConfigError, match="example_input"):
        comp.attach(mlp, select_targets(mlp, comp.config.targets), AttachContext())


# --- the run pipeline: prune, then quantize ----------------------------------------


def test_run_prunes_then_quantizes(pm, tmp_path) -> None:
    pytest.importorskip("torch_pruning")
    from fq_plugins.recipe import load_recipe
    from fq_plugins.run import run

    from .conftest import TINY

    # l2 with a high threshold masks all but one unit per layer: a deterministic, large cut
    recipe = load_recipe(
        {
            **TINY,
            "compress": [
                {"method": "bmrs", "criterion": "l2", "l2_threshold": 1e3, "mask_epochs": 1},
                {"method": "uniform", "bits": 4},
            ],
            "compare": {"bmrs_n": [{"method": "bmrs", "gate_lr": 0.05}]},
        },
        plugin_manager=pm,
    )
    logs: list[str] = []
    report, _ = run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "o"), log=logs.append)
    fp32, pruned, bmrs_n = report.variants
    assert pruned.variant == "bmrs+uniform-4" and pruned.cost.avg_bits_param == 4
    assert pruned.cost.weight_params < 0.5 * fp32.cost.weight_params
    assert pruned.cost.macs < fp32.cost.macs
    assert pruned.finalize_max_abs_diff is not None and pruned.finalize_max_abs_diff < 1e-4
    st = pruned.method_stats[0]
    assert st["method"] == "bmrs" and st["criterion"] == "L2" and st["removed"] > 0
    assert [s["method"] for s in pruned.method_stats] == ["bmrs", "uniform"]
    assert any("stage 1/2 finalized" in line for line in logs)
    assert bmrs_n.method_stats[0]["criterion"] == "BMRS_N"
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["variants"][1]["method_stats"][0]["removed_fraction"] > 0.5


def test_tinyvit_conv_stages_and_mlp_units() -> None:
    """TinyViT: conv+BN stages and MLP hidden units are gated; attention and the residual
    width are not; removal is exact."""
    pytest.importorskip("torch_pruning")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=5)
    x = torch.randn(2, 3, 224, 224)
    comp = _attach(m, x)
    names = [s.name for s in comp.sites]
    assert "stages.0.blocks.0.conv1.conv" in names and "stages.1.blocks.0.mlp.fc1" in names
    assert "stages.1.blocks.0.attn.qkv" in comp.skipped and "head.fc" in comp.skipped
    _random_masks(comp, 0.5, 4)
    res = _check_removal(m, comp, x)
    assert res["stats"]["removed"] > 0.2 * res["stats"]["units"]


def test_pruned_checkpoint_loads_into_the_original_architecture(tmp_path) -> None:
    """`.fqz` of a pruned (and quantized) model restores into a freshly built resnet18."""
    pytest.importorskip("torch_pruning")
    timm = pytest.importorskip("timm")
    from fq_plugins.storage import load_compressed, save_compressed

    torch.manual_seed(0)
    m = timm.create_model("resnet18", pretrained=False, num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    comp = _attach(m, x)
    _random_masks(comp, 0.5, 5)
    final = comp.finalize(m).eval()
    q = CompressionSession.from_configs([{"method": "uniform", "bits": 4}])
    q.attach(final)
    final = q.finalize(final).eval()
    saved = save_compressed(final, q.storage_codes(), tmp_path / "p.fqz")
    assert saved.float_layers == []
    fresh = timm.create_model("resnet18", pretrained=False, num_classes=4)
    load_compressed(tmp_path / "p.fqz", fresh).eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), final(x))
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in final.parameters())


class _FunctionalSigmoidNet(nn.Module):
    """A gate on conv1 (no BatchNorm) followed by a *functional* sigmoid: invisible to the
    trace, and sigmoid(0) = 0.5, so removing a masked channel would change the outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn2(self.conv2(torch.sigmoid(self.conv1(x)))))
        return self.head(y.mean((2, 3)))


def test_inexact_removal_keeps_the_masked_model() -> None:
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    net = _FunctionalSigmoidNet()
    x = torch.randn(5, 3, 6, 6)
    comp = _attach(net, x)
    assert comp.sites[0].host_name == "conv1"
    comp.sites[0].host.bmrs_gate.mask[:4] = 0.0
    net.eval()
    with torch.no_grad():
        expected = net(x)
    with pytest.warns(RuntimeWarning, match="kept as zeros"):
        final = comp.finalize(net)
    with torch.no_grad():
        torch.testing.assert_close(final(x), expected, rtol=0, atol=1e-6)
    assert final.conv1.out_channels == 8 and comp.stats().extra["removed"] == 0


def test_activation_nonzero_at_zero_is_not_gated() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6),
        nn.Sigmoid(),
        nn.Conv2d(6, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    x = torch.randn(2, 3, 8, 8)
    net(x)
    comp = _attach(net, x)
    assert [s.name for s in comp.sites] == ["3"]
    assert "f(0)" in comp.skipped["0"]


def test_ungated_batchnorm_in_a_group_blocks_removal() -> None:
    """conv → ReLU → BatchNorm: the gate sits on the conv's output, the BatchNorm hosts no
    gate and maps a zero channel to its shift, so nothing is removed (and no warning)."""
    pytest.importorskip("torch_pruning")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.act = nn.ReLU()
            self.bn = nn.BatchNorm2d(6)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.bn(self.act(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6)
    comp = _attach(net, x)
    assert comp.sites[0].host_name == "conv"
    comp.sites[0].host.bmrs_gate.mask[:3] = 0.0
    net.eval()
    with torch.no_grad():
        expected = net(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        final = comp.finalize(net)
    with torch.no_grad():
        torch.testing.assert_close(final(x), expected, rtol=0, atol=1e-6)
    assert final.conv.out_channels == 6


def test_keep_one_unit_is_the_one_the_criterion_ranks_highest() -> None:
    mlp = MLP(4, 3, hidden=3)
    comp = _attach(mlp, torch.randn(2, 1, 2, 2), criterion="l2", l2_threshold=10.0)
    fc = comp.sites[0].producer
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.1, 0, 0, 0], [0.3, 0, 0, 0], [0.2, 0, 0, 0.0]]))
    comp.update_masks()
    assert comp.sites[0].host.bmrs_gate.mask.tolist() == [0.0, 1.0, 0.0]


def test_finalize_computes_masks_when_no_epoch_ended() -> None:
    pytest.importorskip("torch_pruning")
    mlp = MLP(12, 3, hidden=8)
    comp = _attach(mlp, torch.randn(2, 3, 2, 2))
    with torch.no_grad():
        comp.sites[0].host.bmrs_gate.mu[:3] = -19.5
        comp.sites[0].host.bmrs_gate.log_sigma[:3] = 0.0
    final = comp.finalize(mlp)
    assert final.body[1].out_features == 5  # Flatten, Linear(12→8): 3 units removed
    st = comp.stats().extra
    assert st["mask_history"][-1].get("at_finalize") == 1.0 and st["removed"] == 3


def test_missing_pruning_extra_is_reported_at_attach(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import raises ImportError
    mlp = MLP(12, 3)
    comp = BMRSCompressor()
    with pytest.raises(ConfigError, match=r"pip install 'fq-plugins\[pruning\]'"):
        comp.attach(
            mlp,
            select_targets(mlp, comp.config.targets),
            AttachContext(example_input=torch.randn(2, 3, 2, 2)),
        )
    assert not any(hasattr(m, "bmrs_gate") for m in mlp.modules())


# --- issue 16: the reference code's ΔF and clamps, KL reduction, all-pruned layers --------


def _reference_delta_f_mp(mu: float, sig: float, a: float = A, b: float = B) -> float:
    """The reference code's ``deltaF`` (saintslab/bmrs-structured-pruning, modules/layers.py)
    written out literally — term1 + term2 + term3 with μ̃_p = a, σ̃_p = √1e−12 — and evaluated
    with mpmath at 60 digits, so the 10¹⁴-sized terms cancel exactly."""
    import mpmath as mp

    with mp.workdps(60):
        mu_, var, a_, b_ = mp.mpf(mu), mp.mpf(sig) ** 2, mp.mpf(a), mp.mpf(b)
        s = mp.sqrt(mp.mpf("1e-12"))
        m = a_
        var_qt = 1 / (1 / var + 1 / s**2)
        mu_qt = var_qt * (mu_ / var + m / s**2)

        def z(mm, ss):
            return mp.ncdf((b_ - mm) / ss) - mp.ncdf((a_ - mm) / ss)

        term1 = mp.log(z(mu_qt, mp.sqrt(var_qt)) * (b_ - a_) / (z(mu_, mp.sqrt(var)) * z(m, s)))
        term2 = mp.log(var_qt / (var * s**2)) / 2
        term4 = m**2 / s**2 - mu_qt**2 / var_qt
        term3 = -(mu_**2 / var + term4) / 2
        return float(term1 + term2 + term3)


@pytest.mark.parametrize(
    "mu,sig", [(-0.5, 200.0), (-0.85, 35.0), (-0.5, math.exp(5)), (-5.0, 2.0), (-18.0, 1.5)]
)
def test_delta_f_reference_and_exact_against_independent_closed_forms(mu, sig) -> None:
    ref = float(delta_f_normal(_t(mu), _t(math.log(sig)), A, B, reference=True))
    exact = float(delta_f_normal(_t(mu), _t(math.log(sig)), A, B))
    want_ref = _reference_delta_f_mp(mu, sig)
    assert ref == pytest.approx(want_ref, rel=1e-8, abs=1e-8)
    # exact: the log evidence ratio log ∫ q p̃ / p, by quadrature over the spike's support
    q = _tn(mu, sig)
    s = 1e-6
    z_p = 0.5  # a spike at a truncated to [a, b] keeps half its mass

    def f(x: float) -> float:
        return float(q.logpdf(x) + stats.norm.logpdf(x, A, s) - math.log(z_p) + math.log(B - A))

    mx = max(f(x) for x in np.linspace(A, A + 40 * s, 2001))
    want_exact = mx + math.log(_quad(lambda x: math.exp(f(x) - mx), A, A + 40 * s, [A]))
    assert exact == pytest.approx(want_exact, rel=1e-6, abs=1e-6)


def test_diffuse_gate_prunes_under_the_reference_delta_f_only() -> None:
    # the case: a diffuse posterior near the top of [a, b]
    ref = float(delta_f_normal(_t(-0.5), _t(math.log(200.0)), A, B, reference=True))
    exact = float(delta_f_normal(_t(-0.5), _t(math.log(200.0)), A, B))
    assert -0.01 < exact < 0 < 0.9 < ref < 0.92
    assert ref - exact == pytest.approx(0.5 * math.log(2 * math.pi), abs=1e-9)


def test_compressor_delta_f_option() -> None:
    mlp = MLP(12, 3, hidden=4)
    x = torch.randn(2, 3, 2, 2)
    ref, exact = (_attach(copy.deepcopy(mlp), x, delta_f=d) for d in ("reference", "exact"))
    for c in (ref, exact):
        with torch.no_grad():
            c.sites[0].host.bmrs_gate.mu.copy_(torch.tensor([-0.5, -5.0, -18.0, -9.0]))
            c.sites[0].host.bmrs_gate.log_sigma.copy_(torch.tensor([4.9, 0.7, 0.4, 3.4]))
    d_ref, _ = ref.prune_score(ref.sites[0])
    d_ex, _ = exact.prune_score(exact.sites[0])
    torch.testing.assert_close(d_ref - d_ex, torch.full((4,), 0.5 * math.log(2 * math.pi), dtype=D))
    assert ref.stats().extra["delta_f"] == "reference"


@pytest.mark.parametrize("fn", ["kl", "mean", "snr"])
def test_reference_clamp_bounds_log_sigma_with_zero_gradient(fn) -> None:
    f = {"kl": kl_to_log_uniform, "mean": gate_mean, "snr": gate_snr}[fn]
    mu = torch.tensor([-3.0, -3.0])
    ls = torch.tensor([7.0, -22.0], requires_grad=True)
    got = f(mu, ls, A, B, REFERENCE_LOG_SIGMA)
    at_bounds = f(mu, torch.tensor([5.0, -20.0]), A, B, REFERENCE_LOG_SIGMA)
    torch.testing.assert_close(got.detach(), at_bounds)
    got.sum().backward()
    assert ls.grad is not None and bool((ls.grad == 0).all())
    if fn == "kl":  # independent check at the clamped σ = e⁵ by quadrature
        q = _tn(-3.0, math.exp(5.0))
        want = _quad(lambda x: q.pdf(x) * (q.logpdf(x) + math.log(B - A)), A, B, [-3.0])
        assert float(got[0]) == pytest.approx(want, rel=1e-6, abs=1e-8)
    # the effective mode does not stop at 5 (its bound is log 10(b − a) ≈ 5.3)
    eff = f(mu[:1], torch.tensor([7.0]), A, B)
    assert not torch.allclose(eff, at_bounds[:1])


def test_reference_sampling_uses_the_clamped_sigma() -> None:
    u = torch.rand(64, 1, dtype=D)
    mu = torch.tensor([-4.0], dtype=D)
    got = gate_sample(mu, torch.tensor([9.0], dtype=D), A, B, u, REFERENCE_LOG_SIGMA)
    want = gate_sample(mu, torch.tensor([5.0], dtype=D), A, B, u)
    torch.testing.assert_close(got, want)


def test_delta_f_uniform_reference_clamps_mu_into_the_bounds() -> None:
    # the reference's BMRS_U clamps μ to [a, b] and log σ ≥ −20 (no upper bound)
    got = delta_f_uniform(_t(3.0), _t(0.0), A, B, reference=True)
    want = delta_f_uniform(_t(0.0), _t(0.0), A, B)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(delta_f_uniform(_t(3.0), _t(0.0), A, B), want)


def test_kl_reductions() -> None:
    torch.manual_seed(0)
    mlp = MLP(12, 3, hidden=8)
    x = torch.randn(2, 3, 2, 2)
    lm = _attach(copy.deepcopy(mlp), x)
    elbo = _attach(copy.deepcopy(mlp), x, kl_reduction="elbo", n_train=1000, kl_weight=2.0)
    for c in (lm, elbo):
        with torch.no_grad():
            for i, s in enumerate(c.sites):
                s.host.bmrs_gate.mu.copy_(torch.linspace(-15.0, -1.0, 8) + i)
                s.host.bmrs_gate.log_sigma.copy_(torch.linspace(-3.0, 2.0, 8))
    per_layer = []
    total = 0.0
    for s in lm.sites:  # float64 quadrature of each unit's KL
        g = s.host.bmrs_gate
        kls = []
        for m, ls in zip(g.mu.tolist(), g.log_sigma.tolist(), strict=True):
            q = _tn(m, math.exp(ls))
            kls.append(_quad(lambda v, q=q: q.pdf(v) * (q.logpdf(v) + math.log(B - A)), A, B, [m]))
        per_layer.append(sum(kls) / len(kls))
        total += sum(kls)
    assert float(lm.penalty()) == pytest.approx(sum(per_layer) / len(per_layer), rel=1e-5)
    assert float(elbo.penalty()) == pytest.approx(2.0 * total / 1000, rel=1e-5)
    # n_train from the host (fq-plugins run passes its training split's size) ...
    host = BMRSCompressor(kl_reduction="elbo", kl_weight=2.0)
    m2 = copy.deepcopy(mlp)
    host.attach(
        m2, select_targets(m2, host.config.targets), AttachContext(example_input=x, n_train=1000)
    )
    with torch.no_grad():
        for i, s in enumerate(host.sites):
            s.host.bmrs_gate.mu.copy_(torch.linspace(-15.0, -1.0, 8) + i)
            s.host.bmrs_gate.log_sigma.copy_(torch.linspace(-3.0, 2.0, 8))
    assert float(host.penalty()) == pytest.approx(2.0 * total / 1000, rel=1e-5)
    # ... and neither the recipe nor the host knows it: refused at attach, before training
    with pytest.raises(ConfigError, match="set n_train") as err:
        _attach(copy.deepcopy(mlp), x, kl_reduction="elbo")
    assert err.value.key == "n_train"


def _all_pruned_mlp() -> tuple[MLP, BMRSCompressor]:
    mlp = MLP(4, 3, hidden=3)
    comp = _attach(mlp, torch.randn(2, 1, 2, 2), criterion="snr", snr_threshold=1e6)
    g = comp.sites[0].host.bmrs_gate
    with torch.no_grad():
        mlp.body[1].weight.copy_(torch.tensor([[3.0, 0, 0, 0], [1.0, 0, 0, 0], [2.0, 0, 0, 0]]))
        # SNR ranks unit 1 highest (confident), unit 0 has the largest weights but E[θ] tiny
        g.mu.copy_(torch.tensor([-12.0, -1.0, -0.5]))
        g.log_sigma.copy_(torch.tensor([0.0, -4.0, 0.0]))
    return mlp, comp


def test_all_pruned_layer_warns_reports_and_keeps_largest_mean_times_norm() -> None:
    mlp, comp = _all_pruned_mlp()
    g = comp.sites[0].host.bmrs_gate
    mean = gate_mean(g.mu.detach(), g.log_sigma.detach(), A, B).tolist()
    score = [m * n for m, n in zip(mean, [3.0, 1.0, 2.0], strict=True)]
    want = int(np.argmax(score))
    snr = gate_snr(g.mu.detach(), g.log_sigma.detach(), A, B)
    assert want != int(snr.argmax())  # the rule is not the criterion's own ranking
    with pytest.warns(RuntimeWarning, match=r"pruned every unit of 2 layer\(s\) \(body.1, body.3"):
        comp.update_masks()
    assert g.mask.tolist() == [float(i == want) for i in range(3)]
    st = comp.stats().extra
    assert st["all_pruned_layers"]["body.1"] == want and "body.3" in st["all_pruned_layers"]
    assert "WARNING" in (comp.summary() or "") and "body.1" in (comp.summary() or "")
    # in the model's state: a fresh compressor restored from the state_dict reports it
    sd = mlp.state_dict()
    mlp2, comp2 = _all_pruned_mlp()
    mlp2.load_state_dict(sd)
    assert comp2.stats().extra["all_pruned_layers"] == st["all_pruned_layers"]


def test_all_pruned_survivor_includes_the_batchnorm_scale() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
    )
    comp = _attach(net, torch.randn(2, 1, 2, 2), criterion="snr", snr_threshold=1e6)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([3.0, 2.0, 1.0]).reshape(3, 1, 1, 1))
        net[1].weight.copy_(torch.tensor([1.0, -4.0, 1.0]))
        net[1].running_var.copy_(torch.tensor([1.0, 1.0, 0.01]))  # unit 2: 1/√0.01 = 10
    with pytest.warns(RuntimeWarning, match="pruned every unit"):
        comp.update_masks()
    # |γ|·‖w‖/√var: 3, 8, 10 (equal gates) → unit 2
    assert net[1].bmrs_gate.mask.tolist() == [0.0, 0.0, 1.0]


def test_batched_gates_equal_the_per_layer_computation() -> None:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=3)
    x = torch.randn(3, 3, 16, 16)
    comp = _attach(net, x[:2], init_log_sigma=0.5)
    gates = comp._gates()
    with torch.no_grad():
        for i, g in enumerate(gates):
            g.mu.copy_(torch.linspace(-12.0, 0.0, g.mu.numel()) + 0.1 * i)
            g.mask[::5] = 0
    bank = comp.bank
    assert bank is not None
    torch.manual_seed(3)
    got = [bank.take(g, 4) for g in gates]
    torch.manual_seed(3)
    u = torch.rand(4, sum(g.mu.numel() for g in gates), dtype=D)
    for g, t, uu in zip(gates, got, u.split([g.mu.numel() for g in gates], dim=1), strict=True):
        want = gate_sample(g.mu, g.log_sigma, A, B, uu, REFERENCE_LOG_SIGMA).exp() * g.mask
        torch.testing.assert_close(t, want)
    means = [bank.take(g, None) for g in gates]
    for g, m in zip(gates, means, strict=True):
        torch.testing.assert_close(
            m, gate_mean(g.mu, g.log_sigma, A, B, REFERENCE_LOG_SIGMA) * g.mask
        )
    # a training step reaches every gate; an interrupted forward leaves nothing stale behind
    net.train()
    bank.take(gates[0], 3)  # fills every slice, consumes one: as if the forward had stopped
    net(x).sum().add(comp.penalty()).backward()
    assert all(g.mu.grad is not None and bool(g.mu.grad.abs().sum() > 0) for g in gates)
    assert not bank.cache
    bank.take(gates[0], 3)
    copy.deepcopy(net)  # no cached graph tensors travel with a copy


def test_element_noise_differs_per_position() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)
    )
    comp = _attach(net, torch.randn(2, 1, 2, 2), noise="element", init_log_sigma=1.0)
    gate = comp.sites[0].host.bmrs_gate
    gate.train()
    y = gate(torch.ones(3, 2, 2, 2))
    assert y.shape == (3, 2, 2, 2)
    assert not torch.equal(y[:, :, 0, 0], y[:, :, 1, 1])  # per element, not per channel
    assert bool(((y > 0) & (y <= 1)).all())


class _Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class _PlusOne(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def test_probe_classifies_unknown_activation_modules() -> None:
    from fq_plugins.compressors.bmrs.trace import probe_elementwise

    x = torch.randn(4, 6)
    assert probe_elementwise(_Swish(), x) == "zero"
    assert probe_elementwise(_PlusOne(), x) == "nonzero"
    assert probe_elementwise(nn.Softmax(dim=-1), x) == "other"
    assert probe_elementwise(nn.LayerNorm(6), x) == "other"

    def mlp(act: nn.Module) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), act, nn.Linear(5, 2))

    comp = _attach(mlp(_Swish()), torch.randn(2, 1, 2, 2))
    assert [s.name for s in comp.sites] == ["1"]
    with pytest.raises(ConfigError, match="no layer it can gate"):
        _attach(mlp(_PlusOne()), torch.randn(2, 1, 2, 2))


def test_hf_vit_from_config_gates_and_removes_mlp_units() -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch_pruning")
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=3,
    )
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(cfg).eval()

    class Logits(nn.Module):  # the library's calls take a tensor and return one
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(pixel_values=x).logits

    model = Logits(vit)
    x = torch.randn(2, 3, 16, 16)
    comp = _attach(model, x)
    names = [s.name for s in comp.sites]
    # the MLP's first linear layer of each block (transformers 5: vit.layers.i.mlp.fc1;
    # 4.x: vit.encoder.layer.i.intermediate.dense), followed by GELUActivation
    assert len(names) == 2 and all(n.endswith(("mlp.fc1", "intermediate.dense")) for n in names)
    with torch.no_grad():
        for s in comp.sites:
            s.host.bmrs_gate.mask[::2] = 0
    model.eval()
    with torch.no_grad():
        want = model(x)
    final = comp.finalize(model)
    with torch.no_grad():
        torch.testing.assert_close(final(x), want, rtol=0, atol=1e-5)
    fc1 = dict(final.named_modules())
    assert [fc1[n].out_features for n in names] == [24, 24]


def test_run_gives_elbo_its_training_set_size() -> None:
    """`fq-plugins run`/`validate` pass the training split's size: elbo needs no n_train."""
    from fq_plugins.recipe import load_recipe
    from fq_plugins.run import build_datasets, check_recipe

    pm = get_plugin_manager(autoload=False)
    rec = load_recipe(
        {
            "data": {
                "source": "synthetic",
                "synthetic": {"n": 200, "n_classes": 3, "image_size": 8},
            },
            "model": {"name": "mlp", "kwargs": {"hidden": 8}},
            "compress": [{"method": "bmrs", "kl_reduction": "elbo"}],
        },
        plugin_manager=pm,
    )
    train, _ = build_datasets(rec.data, rec.seed)
    check_recipe(rec, train, pm)  # raised "set n_train" before
