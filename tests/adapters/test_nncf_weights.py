"""fq_nncf.compress_weights: NNCF's two-level weight compression with the layers chosen by
group-aware importance (two nncf.compress_weights calls with complementary ignored scopes).

Oracles: a brute-force search over every primary/backup split (the allocation), FairQuant's
group_importance run separately (the sensitivities), NNCF's decompressor classes and the
weights' storage dtypes (what NNCF did), the FP32 model (outputs), OpenVINO's element types.
"""

from __future__ import annotations

import copy
import itertools
import os
import tempfile

import pytest
import torch
from torch import nn

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "fq_torch_ext"))
nncf = pytest.importorskip("nncf")

from fq_plugins.adapters import nncf as fq_nncf  # noqa: E402
from fq_plugins.compressors.fairquant.importance import group_importance  # noqa: E402
from fq_plugins.errors import ConfigError  # noqa: E402


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(32, 64)
        self.l2 = nn.Linear(64, 64)
        self.l3 = nn.Linear(64, 128)
        self.l4 = nn.Linear(128, 64)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in (self.l1, self.l2, self.l3, self.l4):
            x = torch.relu(m(x))
        return self.head(x)


LAYERS = ["l1", "l2", "l3", "l4", "head"]


def _model() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


def _batches(n: int = 3) -> list:
    g = torch.Generator().manual_seed(3)
    return [
        (
            torch.randn(16, 32, generator=g),
            torch.randint(0, 3, (16,), generator=g),
            torch.arange(16) % 2,
        )
        for _ in range(n)
    ]


def _best_split(scores: dict[str, float], params: dict[str, int], ratio: float) -> set[str]:
    """Brute force: the primary set with ≥ ratio of the weights and the least Σ score·n."""
    total = sum(params.values())
    best, best_cost = None, float("inf")
    for k in range(len(scores) + 1):
        for subset in itertools.combinations(scores, k):
            if sum(params[n] for n in subset) < ratio * total - 1e-9:
                continue
            cost = sum(scores[n] * params[n] for n in subset)
            if cost < best_cost - 1e-15:
                best, best_cost = set(subset), cost
    assert best is not None
    return best


def _decompressors(model: nn.Module) -> dict[str, str]:
    storage = model.get_submodule("__nncf_hooks")
    out = {}
    for key, d in storage.post_hooks.items():
        (hook,) = d.values()
        out[key.split(":")[0]] = type(hook).__name__
    return out


def test_given_sensitivities_split_layers_as_brute_force_and_nncf_compresses_them() -> None:
    m = _model()
    x = _batches(1)[0][0]
    ref = m(x).detach()
    sens = {"l1": 5.0, "l2": 0.1, "l3": 0.2, "l4": 3.0, "head": 9.0}
    q, plan = fq_nncf.compress_weights(
        m, example_input=x, sensitivities=sens, ratio=0.5, group_size=32
    )
    params = {n: int(getattr(_model(), n).weight.numel()) for n in LAYERS}
    assert plan.params == params
    want = _best_split(sens, params, 0.5)
    assert set(plan.primary) == want and set(plan.backup) == set(LAYERS) - want
    assert plan.ratio == pytest.approx(sum(params[n] for n in want) / sum(params.values()))
    assert plan.ratio >= 0.5
    kinds = _decompressors(q)
    assert kinds == {
        n: "INT4SymmetricWeightsDecompressor" if n in want else "INT8AsymmetricWeightsDecompressor"
        for n in LAYERS
    }
    for n in LAYERS:
        assert q.get_submodule(n).weight.dtype == torch.uint8
    out = q(x).detach()
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max()
    assert not torch.equal(out, ref)


def test_group_aware_sensitivities_are_fairquants_importance() -> None:
    batches = _batches(3)
    m = _model()
    mm = copy.deepcopy(m)
    oracle = group_importance(
        mm,
        iter(batches),
        [(n, getattr(mm, n)) for n in LAYERS],
        signal="grape",
        reducer="balanced",
        granularity="tensor",
        calib_batches=3,
        n_groups=2,
    )
    _, plan = fq_nncf.compress_weights(
        m,
        batches,
        ratio=0.6,
        group_size=32,
        n_groups=2,
        importance={"signal": "grape", "reducer": "balanced", "calib_batches": 3},
    )
    want = {n: float(oracle.scores[n][0]) for n in LAYERS}
    assert plan.scores == pytest.approx(want, rel=1e-6)
    assert set(plan.primary) == _best_split(want, plan.params, 0.6)
    assert plan.nodes["l2"] == "l2/linear/0"


def test_ratio_ends_and_sequential() -> None:
    x = _batches(1)[0][0]
    sens = dict.fromkeys(LAYERS, 1.0)
    q, plan = fq_nncf.compress_weights(
        _model(), example_input=x, sensitivities=sens, ratio=1.0, group_size=32
    )
    assert set(plan.primary) == set(LAYERS) and plan.ratio == 1.0
    assert set(_decompressors(q).values()) == {"INT4SymmetricWeightsDecompressor"}
    q, plan = fq_nncf.compress_weights(_model(), example_input=x, sensitivities=sens, ratio=0.0)
    assert plan.primary == [] and set(_decompressors(q).values()) == {
        "INT8AsymmetricWeightsDecompressor"
    }
    seq = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    q, plan = fq_nncf.compress_weights(
        seq,
        example_input=x,
        sensitivities={"body.0": 1.0, "body.2": 2.0},
        ratio=0.5,
        group_size=32,
    )
    assert plan.primary == ["body.0"] and plan.backup == ["body.2"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 1.5}, "ratio must be a number in"),
        ({"ratio": True}, "ratio must be a number in"),
        ({"mode": "int2"}, "allowed: int4_sym, int4_asym"),
        ({"backup_mode": "int4_sym"}, "allowed: int8_asym, int8_sym"),
        ({"ignored_scope": None}, "ignored_scope is set by"),
        ({"sensitivities": {"l1": 1.0}}, "missing"),
        ({"sensitivities": {**dict.fromkeys(LAYERS, 1.0), "l9": 1.0}}, "unknown"),
        ({"sensitivities": {**dict.fromkeys(LAYERS, 1.0), "l2": float("nan")}}, "finite"),
        ({"importance": {"signal": "bogus"}}, r"importance.signal.*grape"),
        ({"importance": {"calib_batches": 0}}, r"importance.calib_batches"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, match: str) -> None:
    kw = {
        "example_input": torch.randn(2, 32),
        "sensitivities": dict.fromkeys(LAYERS, 1.0),
        **kwargs,
    }
    with pytest.raises(ConfigError, match=match):
        fq_nncf.compress_weights(_model(), **kw)


def test_group_aware_needs_calibration_batches() -> None:
    with pytest.raises(ConfigError, match="group-aware sensitivities need calib batches"):
        fq_nncf.compress_weights(_model(), example_input=torch.randn(2, 32))


def test_openvino_keeps_both_precisions() -> None:
    ov = pytest.importorskip("openvino")
    batches = _batches(2)
    x = batches[0][0]
    m = _model()
    q, plan = fq_nncf.compress_weights(m, batches, ratio=0.5, group_size=32, n_groups=2)
    ref = q(x).detach().numpy()
    with torch.no_grad():
        ov_model = ov.convert_model(q, example_input=x)
    i4, u8 = [], []
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() != "Constant":
            continue
        shape = tuple(node.get_output_shape(0))
        if node.get_element_type() == ov.Type.i4:  # grouped: (out, in / 32, 32)
            i4.append((shape[0], shape[1] * shape[2]))
        elif node.get_element_type() == ov.Type.u8 and len(shape) == 2 and shape[1] > 1:
            u8.append(shape)  # (out, in); the (out, 1) ones are zero points
    shapes = {n: tuple(getattr(_model(), n).weight.shape) for n in LAYERS}
    assert sorted(i4) == sorted(shapes[n] for n in plan.primary)
    assert sorted(u8) == sorted(shapes[n] for n in plan.backup)
    out = ov.compile_model(ov_model, "CPU")(x.numpy())[0]
    assert abs(out - ref).max() <= 1e-2 * max(1.0, abs(ref).max())


def test_data_aware_options_reach_the_4bit_call() -> None:
    """scale_estimation needs NNCF's dataset: it gets the calibration inputs, and changes the
    4-bit layers' scales only (the 8-bit call takes no such options)."""
    batches = _batches(3)
    plain, p1 = fq_nncf.compress_weights(_model(), batches, ratio=0.5, group_size=32, n_groups=2)
    est, p2 = fq_nncf.compress_weights(
        _model(), batches, ratio=0.5, group_size=32, n_groups=2, scale_estimation=True
    )
    assert p1.primary == p2.primary
    a, b = plain.state_dict(), est.state_dict()
    for n in LAYERS:
        key = f"__nncf_hooks.post_hooks.{n}:weight__0.0._scale"
        assert torch.equal(a[key], b[key]) == (n not in p1.primary), n
