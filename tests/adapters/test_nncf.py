"""NNCF adapter: methods as NNCF hooks, finalize to NNCF quantizers, checkpoints, OpenVINO.

Oracles: NNCF's own int8 model (step 0), the fake-quantized model (finalize), the model
before saving (checkpoint), torch outputs (OpenVINO), and the method's own integer codes.
"""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch
from torch import nn

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "fq_torch_ext"))
nncf = pytest.importorskip("nncf")

from fq_plugins.adapters import nncf as fq_nncf  # noqa: E402
from fq_plugins.errors import FQError  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 3, 8, 8, generator=g),
            torch.randint(0, 4, (8,), generator=g),
            torch.arange(8) % 2,
        )
        for _ in range(n)
    ]


BAQ8 = {
    "compress": [
        {
            "method": "fairquant",
            "mode": "baq",
            "budget": {"levels": {8: 1.0}},
            "importance": {"calib_batches": 2},
        }
    ]
}
MIXED = {
    "compress": [
        {
            "method": "fairquant",
            "mode": "baq",
            "budget": {"levels": {2: 0.34, 4: 0.33, 8: 0.33}},
            "importance": {"calib_batches": 2},
        }
    ]
}


@pytest.fixture(scope="module")
def nncf_int8():
    torch.manual_seed(0)
    model = Net().eval()
    xs = [b[0] for b in _batches()]
    # overflow_fix doubles NNCF's weight scale (7-bit effective); disabled, its scale is absmax
    adv = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE)
    return nncf.quantize(model, nncf.Dataset(xs), advanced_parameters=adv)


def _train(q, batches, steps=2):
    opt = torch.optim.AdamW(fq_nncf.session_of(q).param_groups(q, lr=1e-2))
    obj = fq_nncf.objective(q)
    for x, y, g in batches[:steps]:
        loss = obj(q(x), y, g).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_baq_from_nncf_equals_nncf_int8_at_step0(nncf_int8):
    ref = copy.deepcopy(nncf_int8)
    q = fq_nncf.apply(copy.deepcopy(nncf_int8), BAQ8, calib=_batches())
    x = _batches()[0][0]
    with torch.no_grad():
        a, b = ref(x), q(x)
    assert float((a - b).abs().max()) <= 1e-6 * float(a.abs().max())
    # NNCF's weight quantizers on the targets were replaced (no double quantization)
    names = [n for n, _ in fq_nncf.get_hook_storage(q).named_hooks()]
    assert not [n for n in names if n.startswith("pre_hooks.") and n.endswith("__1.0")]
    # and a differently initialised BAQ (4 bits) is not equal: the test can fail
    q4 = fq_nncf.apply(
        copy.deepcopy(nncf_int8),
        {"compress": [{**BAQ8["compress"][0], "budget": {"levels": {4: 1.0}}}]},
        calib=_batches(),
    )
    with torch.no_grad():
        assert float((ref(x) - q4(x)).abs().max()) > 1e-4


def test_train_finalize_to_nncf_quantizers_and_checkpoint(nncf_int8):
    batches = _batches()
    q = fq_nncf.apply(copy.deepcopy(nncf_int8), MIXED, calib=batches)
    loss = _train(q, batches)
    assert torch.isfinite(torch.tensor(loss))
    assert torch.isfinite(fq_nncf.penalty(q))
    x = batches[0][0]
    # NNCF checkpoint: get_config + state_dict → restore on a fresh model, same outputs
    cfg, sd = nncf.torch.get_config(q), copy.deepcopy(q.state_dict())
    r = fq_nncf.restore(Net(), cfg, sd)
    with torch.no_grad():
        assert torch.equal(r(x), q(x))
    codes = None
    with torch.no_grad():
        before = q(x)
    f = fq_nncf.finalize(q, probe=lambda m: m(x))
    assert fq_nncf.pipeline_of(f).max_diff <= 1e-5 * float(before.abs().max())
    codes = fq_nncf.pipeline_of(f).storage_codes()
    with torch.no_grad():
        after = f(x)
    assert float((after - before).abs().max()) <= 1e-5 * float(before.abs().max())
    hooks = dict(fq_nncf.get_hook_storage(f).named_hooks())
    assert not [
        h for h in hooks.values() if isinstance(h, (fq_nncf.FQWeightHook, fq_nncf.NNCFRangeClip))
    ]
    for name in ("c1", "c2", "fc"):
        op = f"{name}/{'linear' if name == 'fc' else 'conv2d'}/0"
        wq = hooks[f"pre_hooks.{op}__1.0"]
        widest = int(codes[name].max_code.max())
        assert wq.num_bits == min(b for b in range(2, 9) if (1 << (b - 1)) - 1 >= widest)
        # NNCF's quantizer reproduces the method's exact codes: step = scale / level_high
        step = (wq.scale.detach().abs() + wq.eps) / wq.level_high
        w = f.get_submodule(name).weight
        k = torch.round(w.detach() / step)
        assert torch.equal(k.to(torch.int64), codes[name].codes)


def test_checkpoint_whitelist_refuses_foreign_classes(nncf_int8):
    q = fq_nncf.apply(copy.deepcopy(nncf_int8), {"compress": [{"method": "uniform", "bits": 4}]})
    cfg = nncf.torch.get_config(q)
    assert fq_nncf.ALLOWED_MODULES == ("nncf.*", "fq_plugins.adapters.nncf")
    bad = copy.deepcopy(cfg)
    cmd = next(c for c in bad["compression_state"] if c["module_cls_name"] == "FQWeightHook")
    cmd["module_path"], cmd["module_cls_name"] = "collections", "OrderedDict"
    with pytest.raises(FQError, match=r"untrusted path .collections."):
        fq_nncf.restore(Net(), bad, q.state_dict())
    inner = copy.deepcopy(cfg)
    cmd = next(c for c in inner["compression_state"] if c["module_cls_name"] == "FQWeightHook")
    cmd["module_config"]["transform"]["cls"] = "torch.nn:Linear"
    with pytest.raises(FQError, match=r"refusing to restore transform class torch\.nn:Linear"):
        fq_nncf.restore(Net(), inner, q.state_dict())


def test_top_level_sequential_is_wrapped():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(2, 3, 8, 8)
    q = fq_nncf.apply(seq, {"compress": [{"method": "uniform", "bits": 3}]})
    assert isinstance(q, fq_nncf.SequentialWrapper)
    # oracle: symmetric absmax 3-bit per channel, by hand
    w = seq[0].weight.detach()
    s = w.reshape(4, -1).abs().amax(1).reshape(-1, 1, 1, 1) / 3
    ref = copy.deepcopy(seq)
    with torch.no_grad():
        ref[0].weight.copy_(torch.clamp(torch.round(w / s), -3, 3) * s)
        w2 = ref[3].weight
        s2 = w2.abs().amax(1, keepdim=True) / 3
        ref[3].weight.copy_(torch.clamp(torch.round(w2 / s2), -3, 3) * s2)
        torch.testing.assert_close(q(x), ref(x), rtol=1e-5, atol=1e-6)


def test_openvino_low_bit_constants(nncf_int8):
    ov = pytest.importorskip("openvino")
    batches = _batches()
    x = batches[0][0]
    results = {}
    for rec in (
        {"compress": [{"method": "uniform", "bits": 3}]},
        {
            "compress": [
                {"method": "uniform", "bits": 2, "targets": {"include": ["c1"]}},
                {"method": "uniform", "bits": 4, "targets": {"include": ["c2"]}},
            ]
        },
    ):
        q = fq_nncf.apply(copy.deepcopy(nncf_int8), rec, calib=batches)
        f = fq_nncf.finalize(q)
        om, rep = fq_nncf.to_openvino(f, x)
        results.update(rep.layers)
        assert rep.max_diff is not None and rep.max_diff < 1e-2
        types = {
            n.get_element_type().get_type_name()
            for n in om.get_ordered_ops()
            if n.get_type_name() == "Constant"
        }
        assert set(rep.layers.values()) <= types  # the low-bit constants are in the graph
        d = tempfile.mkdtemp()
        ov.save_model(om, os.path.join(d, "m.xml"), compress_to_fp16=False)
    assert results["c1"] == "u2" and results["c2"] == "u4"


@pytest.mark.slow
def test_timm_resnet18_uniform():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    q = fq_nncf.apply(model, {"compress": [{"method": "uniform", "bits": 4}]})
    with torch.no_grad():
        before = q(x)
    f = fq_nncf.finalize(q, probe=lambda m: m(x))
    with torch.no_grad():
        after = f(x)
    assert float((after - before).abs().max()) <= 1e-4 * float(before.abs().max())
    hooks = dict(fq_nncf.get_hook_storage(f).named_hooks())
    wq = hooks["pre_hooks.layer1/0/conv1/conv2d/0__1.0"]
    assert wq.num_bits == 4
    calls = []
    wq.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        f(x)
    assert calls  # NNCF runs the quantizer: its op name is NNCF's own


class NetBN(nn.Module):
    """Convolutions followed by BatchNorm: OpenVINO folds the norm into the weight constant."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    "rec",
    [
        {"compress": [{"method": "uniform", "bits": 3}]},
        {"compress": [{"method": "codeq", "bits": 4}]},
    ],
)
@pytest.mark.parametrize("net", [Net, NetBN])
def test_openvino_graph_equals_torch_without_activation_quantizers(rec, net):
    """Weights-only (a plain model through apply: no NNCF activation quantizers): the
    low-bit OpenVINO graph, run in float32, is the torch model to float rounding. (With
    int8 activation quantizers, rounding ties flip between any two float implementations.)"""
    ov = pytest.importorskip("openvino")
    torch.manual_seed(0)
    batches = _batches()
    x = batches[0][0]
    model = net().eval()
    if net is NetBN:  # non-trivial norms, so the folded per-channel ratio is not 1
        with torch.no_grad():
            for bn in (model.b1, model.b2):
                bn.weight.uniform_(0.5, 2.0)
                bn.bias.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.running_mean.uniform_(-0.2, 0.2)
    q = fq_nncf.apply(model, rec, calib=batches)
    f = fq_nncf.finalize(q, probe=lambda m: m(x))
    om, rep = fq_nncf.to_openvino(f, x)
    with torch.no_grad():
        ref = f(x)
    assert set(rep.layers.values()) <= {"u3", "u4"}, rep.layers
    assert rep.max_diff is not None
    assert rep.max_diff <= 1e-5 * float(ref.abs().max())
    assert fq_nncf.CHECK_CONFIG == {"EXECUTION_MODE_HINT": "ACCURACY"}
    out = ov.compile_model(om, "CPU", fq_nncf.CHECK_CONFIG)(x.numpy())[0]
    assert abs(out - ref.numpy()).max() == pytest.approx(rep.max_diff, abs=1e-7)


def test_range_clip_forward_and_gradient():
    """Oracles: torch.clamp (forward) and the hand-written STE mask ``[|w| ≤ r]`` (backward;
    a weight on the boundary, NNCF's absmax channel at step 0, passes its full gradient,
    where torch.clamp with tensor bounds would pass half)."""
    torch.manual_seed(0)
    clip = fq_nncf.NNCFRangeClip([4, 1])
    clip.range.copy_(torch.tensor([[0.5], [1.0], [0.1], [2.0]]))
    w = torch.randn(4, 6)
    w[0, 0] = 0.5
    w1 = w.clone().requires_grad_()
    g = torch.randn(4, 6)
    out = clip(w1)
    (out * g).sum().backward()
    assert torch.equal(out, torch.clamp(w, min=-clip.range, max=clip.range))
    inside = (w.abs() <= clip.range).to(w.dtype)
    assert torch.equal(w1.grad, g * inside)
    assert w1.grad[0, 0] == g[0, 0]
    assert 0 < int(inside.sum()) < w.numel()
