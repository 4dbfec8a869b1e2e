"""FairQuant: importance, reducers, exact allocation, static/QAT/BAQ, budget, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from fq_plugins.compressors.fairquant import (
    FairQuantCompressor,
    FairQuantConfig,
    allocate_bits,
    group_importance,
    reduce_groups,
)
from fq_plugins.compressors.fairquant.baq import LearnableBitQuant, baq_fake_quant, bits_to_logit
from fq_plugins.compressors.ops import symmetric_fake_quant
from fq_plugins.errors import ConfigError
from fq_plugins.protocols import AttachContext
from fq_plugins.session import CompressionSession
from fq_plugins.targets import select_targets
from fq_plugins.testing import CompressorContract


class TestStaticContract(CompressorContract):
    compressor_cls = FairQuantCompressor
    config = {"mode": "static", "importance": {"calib_batches": 2}}


class TestQATContract(CompressorContract):
    compressor_cls = FairQuantCompressor
    config = {
        "mode": "qat",
        "importance": {"calib_batches": 2, "reducer": "cvar"},
        "budget": {"avg_bits": 5.0},
    }


class TestBAQContract(CompressorContract):
    compressor_cls = FairQuantCompressor
    config = {"mode": "baq", "importance": {"calib_batches": 2}}


class TestBAQDeadzoneTensorContract(CompressorContract):
    compressor_cls = FairQuantCompressor
    config = {
        "learnable_bits": True,
        "deadzone": True,
        "importance": {"calib_batches": 2, "signal": "hawq", "hawq_samples": 2},
    }


# --- reducers -----------------------------------------------------------------------

STACK = torch.tensor([[1.0, 4.0, 3.0], [2.0, 0.5, 0.5]])  # G=2 groups × 3 weights; totals 8, 3


def test_reducers_hand_computed():
    assert reduce_groups(STACK, "max").tolist() == [2.0, 4.0, 3.0]
    assert reduce_groups(STACK, "mean").tolist() == [1.5, 2.25, 1.75]
    # balanced: shares 8/11 and 3/11 → I_g / share_g, max over g
    want = torch.maximum(STACK[0] * 11 / 8, STACK[1] * 11 / 3)
    torch.testing.assert_close(reduce_groups(STACK, "balanced"), want)
    # cvar α=0.1, G=2 → top ⌈1.8⌉ = 2 groups → the mean; α=0.5 → top 1 → max
    assert reduce_groups(STACK, "cvar", alpha=0.1).tolist() == [1.5, 2.25, 1.75]
    assert reduce_groups(STACK, "cvar", alpha=0.5).tolist() == [2.0, 4.0, 3.0]
    # subtractive: group 1 has the smaller total → relu(I_1 − I_0)
    assert reduce_groups(STACK, "subtractive").tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="unknown reducer"):
        reduce_groups(STACK, "median")


# --- importance ---------------------------------------------------------------------


def _ce_grad_linear(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed-form ∂ mean CE / ∂W for logits = x Wᵀ (float64)."""
    z = x @ w.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y)


@pytest.mark.parametrize("signal", ["grape", "gradient"])
def test_importance_matches_closed_form(signal):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    g = torch.tensor([0, 1] * 5)
    res = group_importance(lin, [(x, y, g)], [("", lin)], signal=signal, reducer="max", n_groups=2)
    w = lin.weight.detach().numpy()
    per_group = []
    for k in (0, 1):
        grad = _ce_grad_linear(w, x[g == k].numpy(), y[g == k].numpy())
        per_group.append((grad * w) ** 2 if signal == "grape" else np.abs(grad))
    expected = np.maximum(*per_group).mean(axis=1)  # per output channel
    np.testing.assert_allclose(res.scores[""].numpy(), expected, rtol=1e-10)
    assert res.groups_from == "groups" and res.group_counts.tolist() == [5, 5]


def test_hawq_matches_exact_diag_hessian_on_a_linear_model():
    """For a linear model the Hessian is exact; Hutchinson with enough probes converges."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    g = torch.zeros(8, dtype=torch.long)
    res = group_importance(
        lin, [(x, y, g)], [("", lin)], signal="hawq", reducer="max", n_groups=1, hawq_samples=4000
    )
    w = lin.weight.detach().clone().requires_grad_(True)
    flat_h = torch.autograd.functional.hessian(
        lambda ww: nn.functional.cross_entropy(x @ ww.reshape(2, 3).T, y), w.reshape(-1)
    )
    expected = (flat_h.diagonal().abs().reshape(2, 3) * w.detach() ** 2).mean(dim=1)
    torch.testing.assert_close(res.scores[""], expected, rtol=0.1, atol=1e-6)


def _bn_net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def test_importance_restores_bn_stats_and_mode():
    net = _bn_net()
    x = torch.randn(8, 3, 6, 6)
    net(x)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    group_importance(
        net,
        [(x, torch.randint(0, 2, (8,)), torch.arange(8) % 2)] * 3,
        select_targets(net),
        n_groups=2,
    )
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_missing_group_and_group_source():
    net = _bn_net()
    x = torch.randn(8, 3, 6, 6)
    net(x)
    y = torch.randint(0, 2, (8,))
    with pytest.raises(ConfigError, match=r"group\(s\) \[2\] have no samples"):
        group_importance(net, [(x, y, torch.arange(8) % 2)], select_targets(net), n_groups=3)
    with pytest.raises(ConfigError, match="has none"):
        group_importance(net, [(x, y, None)], select_targets(net), group_source="groups")
    with pytest.warns(UserWarning, match="using classes as groups"):
        res = group_importance(net, [(x, y, None)], select_targets(net))
    assert res.groups_from == "classes"


# --- allocation ---------------------------------------------------------------------


def test_levels_allocation_least_important_get_fewest_bits():
    scores = {
        "a": torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7]),
        "b": torch.tensor([0.2, 0.8, 0.6, 0.4, 1.0]),
    }
    alloc = allocate_bits(scores, {"a": 10, "b": 30}, levels=[8, 2, 4], fractions=[0.4, 0.2, 0.4])
    flat = torch.cat([alloc.bits["a"], alloc.bits["b"]])
    allscores = torch.cat([scores["a"], scores["b"]])
    order = torch.argsort(allscores)
    assert flat[order].tolist() == [2, 2, 4, 4, 4, 4, 8, 8, 8, 8]
    assert alloc.avg_bits_channel == pytest.approx(5.2)
    n = torch.tensor([10.0] * 5 + [30.0] * 5)
    assert alloc.avg_bits_param == pytest.approx(float((flat * n).sum() / n.sum()))


def test_avg_bits_allocation_is_optimal_against_brute_force():
    gen = torch.Generator().manual_seed(3)
    scores = {"a": torch.rand(3, generator=gen), "b": torch.rand(3, generator=gen)}
    params = {"a": 7, "b": 13}
    levels = [2, 4, 8]
    untargeted = 2
    target = 4.7
    alloc = allocate_bits(
        scores, params, levels=levels, avg_bits=target, untargeted_params=untargeted
    )
    s = torch.cat([scores["a"], scores["b"]]).double().numpy()
    n = np.array([7.0] * 3 + [13.0] * 3)
    n_all = n.sum() + untargeted
    budget = target * n_all - 32 * untargeted
    lower = budget - 4 * n.max()  # spend the budget to within one level step of the largest unit
    best = math.inf
    for combo in itertools.product(levels, repeat=6):
        b = np.array(combo, dtype=float)
        if lower <= (n * b).sum() <= budget + 1e-9:
            best = min(best, float((s * n * 4.0 ** (-b)).sum()))
    assert alloc.objective == pytest.approx(best, rel=1e-6)
    assert target - 4 * 13 / n_all <= alloc.avg_bits_param <= target + 1e-12


def test_infeasible_budget_gives_range_and_bad_levels():
    scores = {"a": torch.ones(4)}
    with pytest.raises(ConfigError, match=r"range from 12\.0000 to 16\.0000"):
        # (40·2 + 20·32)/60 = 12 and (40·8 + 20·32)/60 = 16
        allocate_bits(scores, {"a": 10}, levels=[2, 8], avg_bits=5.0, untargeted_params=20)
    with pytest.raises(ConfigError, match="sum to 1"):
        allocate_bits(scores, {"a": 10}, levels=[2, 8], fractions=[0.5, 0.6])
    with pytest.raises(ConfigError, match="1–16"):
        allocate_bits(scores, {"a": 10}, levels=[2, 17], fractions=[0.5, 0.5])


def test_config_errors():
    with pytest.raises(ValueError, match="either `levels` or `avg_bits`"):
        FairQuantConfig(method="fairquant", budget={"levels": {2: 0.5, 8: 0.5}, "avg_bits": 4})
    with pytest.raises(ValueError, match="sum to 1"):
        FairQuantConfig(method="fairquant", budget={"levels": {2: 0.5, 8: 0.6}})
    with pytest.raises(ValueError, match="contradicts"):
        FairQuantConfig(method="fairquant", mode="static", learnable_bits=True)
    assert FairQuantConfig(method="fairquant", learnable_bits=True).mode == "baq"


# --- BAQ ----------------------------------------------------------------------------


def test_baq_without_deadzone_equals_symmetric_quantizer():
    w = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(0))
    bits = torch.tensor([2.0, 3, 4, 5, 7, 8])
    got = baq_fake_quant(w, bits_to_logit(bits, 2, 8), None, 2, 8)
    torch.testing.assert_close(got, symmetric_fake_quant(w, bits), rtol=0, atol=1e-6)


def test_baq_deadzone_zeroes_small_weights():
    w = torch.tensor([[0.05, -0.2, 0.5, -1.0]])
    dz = torch.atanh(torch.tensor([0.7]))  # d/2 = a·(1 − 0.7) = 0.3
    out = baq_fake_quant(w, bits_to_logit(torch.tensor([4.0]), 2, 8), dz, 2, 8)
    assert out[0, 0] == 0 and out[0, 1] == 0 and out[0, 2] != 0
    assert out[0, 3] == pytest.approx(-1.0)  # the top level equals a


def _tiny_ctx(n=2):
    gen = torch.Generator().manual_seed(5)
    batches = [
        (
            torch.randn(16, 3, 8, 8, generator=gen),
            torch.randint(0, 4, (16,), generator=gen),
            torch.arange(16) % 2,
        )
        for _ in range(n)
    ]
    return AttachContext(calib_batches=lambda: iter(batches), n_groups=2), batches


def _model():
    from fq_plugins.testing import _TinyNet

    torch.manual_seed(0)
    return _TinyNet()


def test_bit_logits_get_gradient_from_cross_entropy_alone():
    model = _model()
    ctx, batches = _tiny_ctx()
    comp = FairQuantCompressor(mode="baq", deadzone=True)
    CompressionSession([comp]).attach(model, ctx)
    x, y, _ = batches[0]
    nn.functional.cross_entropy(model(x), y).backward()  # no penalty term
    quants = [q for _, _, q in comp._baq()]
    assert quants
    assert any(float(q.bit_logit.grad.abs().sum()) > 0 for q in quants)
    assert any(float(q.dz_logit.grad.abs().sum()) > 0 for q in quants)


def test_training_learns_bits_and_stays_within_budget():
    model = _model()
    ctx, batches = _tiny_ctx()
    comp = FairQuantCompressor(mode="baq", budget={"avg_bits": 5.0}, bit_lr=0.3)
    session = CompressionSession([comp])
    session.attach(model, ctx)
    init = torch.cat([q.bits() for _, _, q in comp._baq()])
    opt = torch.optim.Adam(session.param_groups(model, lr=1e-3))
    for step in range(30):
        x, y, _ = batches[step % 2]
        loss = nn.functional.cross_entropy(model(x), y) + session.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    session.on_epoch_end(0)
    learned = torch.cat([q.bits() for _, _, q in comp._baq()])
    assert not torch.equal(learned, init)  # the bits did move
    assert session.cost(model).avg_bits_param <= 5.0 + 1e-9


def test_projection_brings_learned_bits_back_under_budget():
    model = _model()
    ctx, _ = _tiny_ctx()
    comp = FairQuantCompressor(
        mode="baq", budget={"avg_bits": 4.0}, penalties={"bitrate": 0.0}, bit_lr=0.5
    )
    session = CompressionSession([comp])
    session.attach(model, ctx)
    opt = torch.optim.SGD(session.param_groups(model, lr=0.0), lr=0.0)
    for q in [q for _, _, q in comp._baq()]:
        with torch.no_grad():
            q.bit_logit.fill_(3.0)  # push every channel to b_max: far over the budget
    assert float(comp.avg_bits()) > 4.0
    opt.zero_grad()
    session.on_epoch_end(0)  # projection
    cost = session.cost(model)
    assert cost.avg_bits_param <= 4.0 + 1e-9
    assert cost.avg_bits_param == pytest.approx(float(comp.avg_bits()))
    final = session.finalize(model)
    assert session.cost(final).avg_bits_param <= 4.0 + 1e-9


def test_projection_with_tensor_importance_caps_each_tensor_by_its_widest_channel():
    """granularity: tensor gives one importance unit per tensor while BAQ learns bits per
    channel: the projection used to crash broadcasting per-channel caps against tensor
    units (found by the NNCF adapter's tests)."""
    model = _model()
    ctx, _ = _tiny_ctx()
    comp = FairQuantCompressor(
        mode="baq",
        budget={"avg_bits": 4.0},
        penalties={"bitrate": 0.0},
        importance={"granularity": "tensor", "calib_batches": 1},
    )
    session = CompressionSession([comp])
    session.attach(model, ctx)
    for q in [q for _, _, q in comp._baq()]:
        with torch.no_grad():
            q.bit_logit.fill_(3.0)
    assert float(comp.avg_bits()) > 4.0
    session.on_epoch_end(0)
    assert session.cost(model).avg_bits_param <= 4.0 + 1e-9
    for q in [q for _, _, q in comp._baq()]:  # one width per tensor after the projection
        assert q.bits().unique().numel() == 1


def test_bitrate_penalty_pulls_bits_toward_budget():
    q = LearnableBitQuant(torch.full((4,), 8.0))
    comp = FairQuantCompressor(mode="baq")
    mod = nn.Linear(1, 4)
    comp.add_state(mod).put("target_avg_bits", torch.tensor(4.0, dtype=torch.float64))
    comp._n_all, comp._n_untargeted, comp._unit_params = 4, 0, {"m": 1}
    comp.install_transform("m", mod, q)
    comp.attached.append(("m", mod))
    p = comp.penalty()
    assert p.item() == pytest.approx(1.0 * (8.0 - 4.0) ** 2)
    p.backward()
    assert bool((q.bit_logit.grad > 0).all())  # gradient descent lowers the bits


def test_set_bits_round_trips_every_level():
    q = LearnableBitQuant(torch.full((7,), 5.0))
    target = torch.arange(2, 9, dtype=torch.float32)
    q.set_bits(target)
    assert torch.equal(q.bits(), target)


def test_static_mode_is_post_training_and_reports_allocation():
    model = _model()
    ctx, _ = _tiny_ctx()
    comp = FairQuantCompressor(mode="static", budget={"avg_bits": 6.0})
    session = CompressionSession([comp])
    session.attach(model, ctx)
    assert not comp.wants_training()
    st = comp.stats()
    assert st.extra["allocation"]["method"] == "milp:optimal"
    assert session.cost(model).avg_bits_param <= 6.0 + 1e-9
    assert st.extra["importance"]["group_counts"] == [16, 16]


def test_run_with_fairquant_variants(pm, tmp_path):
    from fq_plugins.recipe import load_recipe
    from fq_plugins.run import run

    from .conftest import TINY

    recipe = load_recipe(
        {
            **TINY,
            "compress": [
                {
                    "method": "fairquant",
                    "mode": "baq",
                    "budget": {"avg_bits": 5.0},
                    "importance": {"calib_batches": 2},
                }
            ],
            "compare": {
                "fq-static": [
                    {"method": "fairquant", "mode": "static", "importance": {"calib_batches": 2}}
                ]
            },
            "fairness": {"regularizer": {"kind": "gap", "weight": 0.5}},
        },
        plugin_manager=pm,
    )
    steps = []

    class Rec:
        from fq_plugins import hookimpl

        @hookimpl
        def fq_on_step(self, step, phase, losses):
            steps.append(phase)

    pm.pm.register(Rec())
    report, _ = run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "o"), log=lambda m: None)
    baq, static = report.variants[1], report.variants[2]
    assert baq.cost.avg_bits_param <= 5.0 + 1e-9 and baq.finalize_max_abs_diff < 1e-5
    assert (
        "finetune:fairquant" in steps and "finetune:fq-static" not in steps
    )  # static: no fine-tuning
    assert (tmp_path / "o" / "bits-fairquant.png").exists() and (
        tmp_path / "o" / "bits-fq-static.png"
    ).exists()
    lows = [lc.bits_channel_min for lc in static.cost.layers]
    highs = [lc.bits_channel_max for lc in static.cost.layers]
    assert min(lows) == 2 and max(highs) == 8  # paper levels {2, 4, 8} at {0.2, 0.4, 0.4}
    assert static.cost.avg_bits_channel == pytest.approx(5.2, abs=0.25)


@pytest.mark.parametrize("deadzone", [False, True])
def test_fused_baq_matches_per_op_reference(deadzone):
    """Forward and every gradient of the fused op equal the composed per-op-STE version."""
    from fq_plugins.compressors.fairquant.baq import baq_fake_quant_reference

    gen = torch.Generator().manual_seed(7)
    w0 = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    lb0 = bits_to_logit(torch.tensor([2.0, 3, 4, 5, 6, 8]), 2, 8).double() + 0.01
    ld0 = torch.linspace(-2.0, 0.8, 6, dtype=torch.float64) if deadzone else None
    g = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    outs = []
    for fn in (baq_fake_quant, baq_fake_quant_reference):
        w = w0.clone().requires_grad_(True)
        lb = lb0.clone().requires_grad_(True)
        ld = ld0.clone().requires_grad_(True) if deadzone else None
        out = fn(w, lb, ld, 2.0, 8.0)
        (out * g).sum().backward()
        outs.append((out.detach(), w.grad, lb.grad, ld.grad if deadzone else None))
    (o1, gw1, gb1, gd1), (o2, gw2, gb2, gd2) = outs
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw1, gw2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb1, gb2, rtol=1e-9, atol=1e-12)
    assert float(gb1.abs().sum()) > 0
    if deadzone:
        torch.testing.assert_close(gd1, gd2, rtol=1e-9, atol=1e-12)
        assert float(gd1.abs().sum()) > 0


def test_avg_bits_budget_is_spent_even_with_zero_scores():
    scores = {"a": torch.zeros(50), "b": torch.tensor([0.0] * 40 + [1.0] * 10)}
    alloc = allocate_bits(scores, {"a": 9, "b": 27}, levels=range(2, 9), avg_bits=5.2)
    n_all = 50 * 9 + 50 * 27
    assert 5.2 - 27 / n_all <= alloc.avg_bits_param <= 5.2 + 1e-12
    assert float(alloc.bits["b"][40:].min()) == 8  # the important units get the most bits


# --- issue 16: eval-mode BN, importance independent of batching, dry-run checks ------------


def _oracle_importance(model, x, y, g, targets, signal, reducer):
    """Straight from the definition on the concatenated data: eval mode, L_k = mean CE
    over group k, I_k = (∂L_k/∂W ⊙ W)² or |∂L_k/∂W|; the reducer by hand, per weight
    tensor (balanced: share_k = ΣI_k / Σ_h ΣI_h over that tensor, max_k I_k / share_k)."""
    model.eval()
    weights = [m.weight for _, m in targets]
    per_group = []
    for k in sorted(set(g.tolist())):
        sel = g == k
        loss = nn.functional.cross_entropy(model(x[sel]), y[sel])
        grads = torch.autograd.grad(loss, weights)
        per_group.append(
            [
                ((gr * w) ** 2 if signal == "grape" else gr.abs()).detach()
                for gr, w in zip(grads, weights, strict=True)
            ]
        )
    out = {}
    for i, (name, _) in enumerate(targets):
        imps = [pg[i] for pg in per_group]
        if reducer == "mean":
            red = sum(imps) / len(imps)
        else:
            totals = [float(im.sum()) for im in imps]
            share = [t / max(sum(totals), 1e-30) for t in totals]  # as the library: floors
            red = torch.stack(
                [im / max(sh, 1e-8) for im, sh in zip(imps, share, strict=True)]
            ).amax(dim=0)
        out[name] = red.abs().reshape(red.shape[0], -1).mean(dim=1)
    return out


def _close(a, b, rel=1e-4):
    """Equal up to float32 summation order: within rel × the layer's largest score."""
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


@pytest.mark.slow
def test_resnet18_one_example_groups_no_crash_and_batching_invariant(
    signal="grape", reducer="balanced"
):
    """Issue 16: resnet18 at 32 px, every batch holds exactly one example of group 1. In
    train mode BN raised "Expected more than 1 value per channel"; now importance is the
    same whether the data comes as 1-example groups or all at once, and equals the
    definition computed directly on the concatenated data."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=3)
    x = torch.randn(12, 3, 32, 32)
    net.train()
    net(x)  # non-trivial running statistics
    y = torch.randint(0, 3, (12,))
    g = torch.tensor([0, 0, 0, 1] * 3)
    targets = select_targets(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kw = dict(signal=signal, reducer=reducer, n_groups=2)
    batched = group_importance(
        net, [(x[i : i + 4], y[i : i + 4], g[i : i + 4]) for i in (0, 4, 8)], targets, **kw
    )
    assert net.training  # mode restored
    whole = group_importance(net, [(x, y, g)], targets, **kw)
    assert batched.group_counts.tolist() == [9, 3] == whole.group_counts.tolist()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    oracle = _oracle_importance(net, x, y, g, targets, signal, reducer)
    for name, _ in targets:
        _close(batched.scores[name], whole.scores[name])
        _close(batched.scores[name], oracle[name])
    _close(batched.group_totals, whole.group_totals)


@pytest.mark.parametrize(
    ("signal", "reducer"), [("hawq", "mean"), ("gradient", "mean"), ("grape", "balanced")]
)
def test_small_bn_net_is_batching_invariant(signal, reducer):
    """Float64, a BN net, 1-example groups per batch vs all at once (hawq: fixed probes)."""
    net = _bn_net().double()
    x = torch.randn(9, 3, 6, 6, dtype=torch.float64)
    net(x)
    y = torch.randint(0, 2, (9,))
    g = torch.tensor([0, 0, 1] * 3)
    kw = dict(signal=signal, reducer=reducer, n_groups=2, hawq_samples=3)
    targets = select_targets(net)
    batched = group_importance(
        net, [(x[i : i + 3], y[i : i + 3], g[i : i + 3]) for i in (0, 3, 6)], targets, **kw
    )
    whole = group_importance(net, [(x, y, g)], targets, **kw)
    for name, _ in targets:
        assert batched.scores[name].abs().sum() > 0
        torch.testing.assert_close(batched.scores[name], whole.scores[name], rtol=1e-9, atol=1e-300)
        if signal != "hawq":
            oracle = _oracle_importance(net, x, y, g, targets, signal, reducer)
            torch.testing.assert_close(batched.scores[name], oracle[name], rtol=1e-9, atol=1e-300)


def _attach(net, batches, n_groups, dry_run, **imp):
    comp = FairQuantCompressor(
        FairQuantConfig(method="fairquant", mode="static", importance={"calib_batches": 4, **imp})
    )
    ctx = AttachContext(calib_batches=lambda: iter(batches), n_groups=n_groups, dry_run=dry_run)
    comp.attach(net, select_targets(net), ctx)
    return comp


def test_dry_run_raises_what_the_real_attach_would():
    """What used to fail only after training is now caught by the dry run on one batch."""
    net = _bn_net()
    x = torch.randn(8, 3, 6, 6)
    net(x)
    y = torch.randint(0, 2, (8,))
    # labels outside the model's outputs (2 logits)
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 2\).*from 0 to 4"):
        _attach(net, [(x, torch.arange(8) % 5, torch.arange(8) % 2)], 2, dry_run=True)
    # group ids outside [0, n_groups)
    with pytest.raises(ConfigError, match=r"group ids must lie in \[0, 2\).*from 0 to 3"):
        _attach(net, [(x, y, torch.arange(8) % 4)], 2, dry_run=True)
    # group ids required but absent
    with pytest.raises(ConfigError, match="has none"):
        _attach(net, [(x, y, None)], 2, dry_run=True, group_source="groups")
    # one group per example count mismatch
    with pytest.raises(ConfigError, match="8 labels but 4 group ids"):
        _attach(net, [(x, y, torch.arange(4) % 2)], 2, dry_run=True)
    # the dry run computes on one batch but reads the group ids of all calibration batches
    # (importance.calib_batches = 4): a group first seen in batch 3 is fine ...
    zeros = torch.zeros(8, dtype=torch.long)
    later = [(x, y, zeros), (x, y, zeros), (x, y, torch.arange(8) % 2)]
    comp = _attach(copy_net(net), later, 2, dry_run=True, signal="hawq", hawq_samples=2)
    assert comp.importance.n_batches == 1
    _attach(copy_net(net), later, 2, dry_run=False)
    # ... one in no calibration batch fails the dry run, before any training, as the real
    # attach would; so does one that only appears after the calib_batches the method reads
    only0 = [(x, y, zeros)] * 3
    for dry in (True, False):
        with pytest.raises(ConfigError, match=r"group\(s\) \[1\] have no samples in the 3"):
            _attach(copy_net(net), only0, 2, dry_run=dry)
    too_late = [(x, y, zeros)] * 4 + [(x, y, torch.arange(8) % 2)]
    for dry in (True, False):
        with pytest.raises(ConfigError, match=r"group\(s\) \[1\] have no samples in the 4"):
            _attach(copy_net(net), too_late, 2, dry_run=dry)


def copy_net(net):
    import copy

    return copy.deepcopy(net)


def test_dry_run_budget_infeasibility_is_caught():
    net = _bn_net()
    x = torch.randn(8, 3, 6, 6)
    net(x)
    comp = FairQuantCompressor(
        FairQuantConfig(method="fairquant", mode="qat", budget={"avg_bits": 1.5})
    )
    ctx = AttachContext(
        calib_batches=lambda: iter([(x, torch.randint(0, 2, (8,)), torch.arange(8) % 2)]),
        n_groups=2,
        dry_run=True,
    )
    with pytest.raises(ConfigError, match=r"avg_bits 1\.5 cannot be met"):
        comp.attach(net, select_targets(net), ctx)


def test_run_dry_run_reads_the_calibration_batches_not_one(tmp_path) -> None:
    """A group too rare for the first batch but present in the calibration set passes
    `fq-plugins validate`/the start of `run`: the dry run reads the run's calibration order
    (it read one batch and refused such a group)."""
    import numpy as np

    from fq_plugins.data.base import iterate_batches
    from fq_plugins.manager import get_plugin_manager
    from fq_plugins.recipe import load_recipe
    from fq_plugins.run import build_datasets, check_recipe

    rng = np.random.default_rng(0)
    n = 640
    age = np.full(n, 30.0)
    age[rng.choice(n, 6, replace=False)] = 70.0  # 6 of 640: ≈ 0.6 per batch of 64
    np.savez(
        tmp_path / "d.npz",
        x=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
        y=np.arange(n) % 2,
        age=age,
    )
    pm = get_plugin_manager(autoload=False)

    def recipe(path):
        return load_recipe(
            {
                "data": {
                    "source": "npz",
                    "path": str(path),
                    "test_fraction": 0.1,
                    "group": {"column": "age", "threshold": 60},
                },
                "model": {"name": "mlp", "kwargs": {"hidden": 8}},
                "train": {"batch_size": 64},
                "compress": [
                    {"method": "fairquant", "mode": "static", "budget": {"avg_bits": 4.0}}
                ],
            },
            plugin_manager=pm,
        )

    rec = recipe(tmp_path / "d.npz")
    train, _ = build_datasets(rec.data, rec.seed)
    gen = torch.Generator().manual_seed(rec.seed)
    first = next(iter(iterate_batches(train, 64, shuffle=True, generator=gen)))
    assert int((first[2] == 1).sum()) == 0, "the case needs a first batch without the group"
    assert int((train.group == 1).sum()) > 0
    check_recipe(rec, train, pm)
