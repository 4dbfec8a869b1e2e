"""torchao host: every method as a ``quantize_`` config; ``convert`` to torchao tensors.

Oracles: the fake-quantized model's own outputs (``torch.equal``, bit for bit), codes
recomputed by hand from the weights, torchao's own handler calls, a fresh model loading
a saved file.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("torchao")

from torchao.quantization import FqnToConfig, Int8WeightOnlyConfig, quantize_

from fq_plugins import hookimpl
from fq_plugins.adapters import torchao as ta
from fq_plugins.compressors.uniform import SymmetricWeightQuant
from fq_plugins.engine import Objective
from fq_plugins.errors import ConfigError, MissingDependencyError
from fq_plugins.manager import get_plugin_manager
from fq_plugins.protocols import CompressionStats, Compressor, LayerStats, MethodConfig

IntxTensor = ta.IntxUnpackedToInt8Tensor


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def calib() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [
        (
            torch.randn(8, 3, 8, 8, generator=g),
            torch.randint(0, 4, (8,), generator=g),
            torch.randint(0, 2, (8,), generator=g),
        )
        for _ in range(3)
    ]


def train_steps(model: nn.Module, steps: int = 2) -> None:
    """The user's loop with the engine's objective over the adapter's session."""
    session = ta.session_of(model)
    opt = torch.optim.AdamW(session.param_groups(model, lr=1e-2))
    obj = Objective(session=session)
    for i, (x, y, g) in enumerate(calib()[:steps]):
        loss = obj(model(x), y, g).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.on_step(i)


CASES = [
    # (config factory, expected form of every layer)
    (lambda: ta.UniformConfig(bits=1), "intx:int2"),
    (lambda: ta.UniformConfig(bits=2), "intx:int2"),
    (lambda: ta.UniformConfig(bits=3), "intx:int3"),
    (lambda: ta.UniformConfig(bits=4), "intx:int4"),
    (lambda: ta.UniformConfig(bits=8), "intx:int8"),
    (lambda: ta.UniformConfig(bits=4, granularity="tensor"), "intx:int4"),
    (lambda: ta.UniformConfig(bits=12), "dense: codes up to 2047"),
    (lambda: ta.MoMosConfig(k=8, quant_bits=3), "intx:int3"),
    (lambda: ta.MoMosConfig(k=8), "dense: the method hands over no integer codes"),
    (lambda: ta.CoDeQConfig(bits=4), "dense: sign-dependent shift"),
    (lambda: ta.CoDeQConfig(), "dense: sign-dependent shift"),
    (lambda: ta.BAQConfig(avg_bits=5, calib=calib()), "intx:int"),
    (lambda: ta.BAQConfig(avg_bits=5, deadzone=True, calib=calib()), "dense: sign-dependent"),
    (lambda: ta.FairQuantConfig(mode="qat", budget={"avg_bits": 4}, calib=calib()), "intx:int"),
]


@pytest.mark.parametrize(
    "make, form", CASES, ids=[f"{i}-{f.split(':')[0]}" for i, (_, f) in enumerate(CASES)]
)
def test_convert_is_bit_exact_with_the_fake_quantized_model(make, form):
    model = net()
    quantize_(model, make())
    train_steps(model)
    with torch.no_grad():
        fake = model.eval()(X)
    report = ta.convert(model, "size", probe=lambda m: m(X))
    assert set(report.layers) == {"0", "3", "5"}
    assert all(f.startswith(form) for f in report.layers.values()), report.layers
    with torch.no_grad():
        assert torch.equal(model(X), fake)
    assert report.max_diff == 0.0
    for name, mod in model.named_modules():
        if name in report.layers:
            assert type(mod.weight) is (IntxTensor if form.startswith("intx") else nn.Parameter)
            assert not hasattr(mod, "parametrizations")  # finalized: plain module


def test_uniform_codes_in_the_torchao_tensor_are_the_hand_computed_ones():
    model = net()
    raw = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in ("0", "3", "5")}
    quantize_(model, ta.UniformConfig(bits=3))
    ta.convert(model)
    for name, w in raw.items():
        t = dict(model.named_modules())[name].weight
        s = w.reshape(w.shape[0], -1).abs().amax(dim=1) / 3.0
        shape = (-1,) + (1,) * (w.dim() - 1)
        q = torch.clamp(torch.round(w / s.reshape(shape)), -3, 3)
        assert torch.equal(t.qdata, q.to(torch.int8))
        assert torch.equal(t.scale, s.reshape(shape))
        assert t.target_dtype == torch.int3
        assert torch.equal(t.zero_point, torch.zeros_like(t.zero_point))


def test_speed_target_keeps_dense_weights_and_is_exact():
    model = net()
    quantize_(model, ta.UniformConfig(bits=4))
    with torch.no_grad():
        fake = model.eval()(X)
    report = ta.convert(model, "speed")
    assert all(f.startswith("dense: target='speed'") for f in report.layers.values())
    assert report.torchao_layers == []
    with torch.no_grad():
        assert torch.equal(model(X), fake)


# --- one attach per config: method-wide state ------------------------------------------


def test_default_filter_attaches_conv_and_linear_in_one_session():
    model = net()
    cfg = ta.BAQConfig(avg_bits=4, calib=calib())
    quantize_(model, cfg)  # torchao's default filter is Linear-only; ours takes the Conv too
    session = ta.session_of(model)
    (method,) = session.methods
    assert [n for n, _ in method.attached] == ["0", "3", "5"]
    # the budget is over all targets at once: the projected average meets it
    method.project_to_budget()
    assert float(method.avg_bits()) <= 4.0 + 1e-9
    assert "0.parametrizations.weight.original" in model.state_dict()


def test_momos_shares_one_motif_set_across_a_regex_fqn_config():
    model = net()
    cfg = ta.MoMosConfig(k=6)
    quantize_(model, FqnToConfig({"re:[035]": cfg}), filter_fn=None)
    (method,) = ta.session_of(model).methods
    assert [n for n, _ in method.attached] == ["0", "3", "5"]
    blocks = torch.cat([m.weight.detach().flatten() for _, m in method.attached])
    blocks = torch.nn.functional.pad(blocks, (0, (-blocks.numel()) % 4)).reshape(-1, 4)
    assert torch.unique(blocks, dim=0).shape[0] <= 6  # one mosaic over every layer


def test_fqn_config_mixes_methods_and_torchao_configs():
    model = net()
    quantize_(
        model,
        FqnToConfig(
            {
                "0": ta.CoDeQConfig(bits=4),
                "3": ta.UniformConfig(bits=3),
                "5": Int8WeightOnlyConfig(),
            }
        ),
        filter_fn=None,
    )
    assert [m.name for m in ta.session_of(model).methods] == ["codeq", "uniform"]
    with torch.no_grad():
        fake = model.eval()(X)
    report = ta.convert(model)
    assert report.layers["3"] == "intx:int3" and report.layers["0"].startswith("dense:")
    assert "5" not in report.layers  # torchao's own config, left as torchao made it
    with torch.no_grad():
        assert torch.equal(model(X), fake)


def test_our_target_matching_equals_torchaos_handler_calls():
    model = net()
    a, b = ta.UniformConfig(bits=4), ta.UniformConfig(bits=2)
    quantize_(model, FqnToConfig({"0.weight": a, "re:[35]": b}), filter_fn=None)
    host = ta._host(model)
    assert host is not None
    for att in host.attachments:  # every module we attached was handed over, and only those
        assert att.seen == set(att.modules)
    assert [sorted(att.modules.values()) for att in host.attachments] == [["0"], ["3", "5"]]


def test_custom_filter_fn_restricts_and_rejects_unsupported_modules():
    model = net()
    quantize_(model, ta.UniformConfig(bits=4), filter_fn=lambda m, fqn: fqn == "3")
    (method,) = ta.session_of(model).methods
    assert [n for n, _ in method.attached] == ["3"]
    with pytest.raises(ConfigError, match="is a ReLU"):
        quantize_(net(), ta.UniformConfig(bits=4), filter_fn=lambda m, fqn: fqn in ("1", "3"))


def test_a_conv_only_model_needs_the_weight_layers_filter():
    conv_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    quantize_(conv_only, ta.UniformConfig(bits=4))  # torchao's default filter: no Linear, no call
    with pytest.raises(ConfigError, match="no fq-plugins method"):
        ta.session_of(conv_only)
    quantize_(conv_only, ta.UniformConfig(bits=4), filter_fn=ta.weight_layers)
    (method,) = ta.session_of(conv_only).methods
    assert [n for n, _ in method.attached] == ["0", "2"]


# --- any registered compressor ---------------------------------------------------------


class HalfQuant(Compressor):
    """Third-party method: 3-bit symmetric quant of every other target."""

    name = "half_quant_tp"
    description = "test-only third-party quantizer"
    Config = MethodConfig

    def attach(self, model, targets, context=None):
        for t in targets[::2]:
            q = SymmetricWeightQuant(torch.full((t.module.weight.shape[0],), 3.0))
            self.install_transform(t.name, t.module, q, t.param)
            self.attached.append((t.name, t.module))

    def stats(self):
        return CompressionStats(
            self.name, {t.name: LayerStats(bits=t.transform.bits) for t in self.transforms}
        )

    def finalize(self, model):
        self.bake_transforms()
        return model


class HalfPlugin:
    @hookimpl
    def fq_register_compressors(self, register):
        register(HalfQuant)


def test_ao_config_for_builds_a_registered_config_for_a_third_party_method():
    pm = get_plugin_manager(autoload=False)
    pm.register(HalfPlugin(), name="half-plugin")
    cls = ta.ao_config_for("half_quant_tp", plugin_manager=pm)
    assert ta.ao_config_for("half_quant_tp", plugin_manager=pm) is cls  # cached
    from torchao.quantization.transform_module import _QUANTIZE_CONFIG_HANDLER

    for c in (
        cls,
        ta.UniformConfig,
        ta.CoDeQConfig,
        ta.MoMosConfig,
        ta.BAQConfig,
        ta.FairQuantConfig,
    ):
        assert _QUANTIZE_CONFIG_HANDLER[c] is ta._handler
    model = net()
    quantize_(model, cls())
    with torch.no_grad():
        fake = model.eval()(X)
    report = ta.convert(model)
    assert report.layers == {"0": "intx:int3", "5": "intx:int3"}
    with torch.no_grad():
        assert torch.equal(model(X), fake)


def test_an_unregistered_subclass_is_refused_by_torchao():
    class Sub(ta.UniformConfig):  # dispatch is by exact type
        pass

    with pytest.raises(KeyError):
        quantize_(net(), Sub(bits=4))


def test_config_wraps_the_method_config():
    cfg = ta.CoDeQConfig(bits=4, quantile=0.9)
    assert cfg.bits == 4 and cfg.method_config.quantile == 0.9
    assert ta.BAQConfig(avg_bits=3, calib=calib()).method_config.budget.avg_bits == 3
    assert ta.BAQConfig(avg_bits=3, calib=calib()).mode == "baq"


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ta.UniformConfig(bits=99), "bits"),
        (lambda: ta.UniformConfig(bitz=4), "bitz"),
        (lambda: ta.BAQConfig(mode="qat"), "mode='qat'"),
        (lambda: ta.BAQConfig(avg_bits=3, calib=iter(calib())), "one-shot iterator"),
        (lambda: ta.ao_config_for("no_such_method"), "no_such_method"),
    ],
)
def test_bad_config_values_raise_config_error(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_misuse_raises_config_error():
    with pytest.raises(ConfigError, match="calibration batches"):
        quantize_(net(), ta.BAQConfig(avg_bits=4))
    with pytest.raises(ConfigError, match="whole model"):
        ta._handler(nn.Linear(2, 2), ta.UniformConfig(bits=4))
    with pytest.raises(ConfigError, match="no fq-plugins method"):
        ta.session_of(net())
    model, cfg = net(), ta.UniformConfig(bits=4)
    quantize_(model, cfg)
    with pytest.raises(ConfigError, match="already attached"):
        quantize_(model, cfg)
    with pytest.raises(ConfigError, match="'fast' is not allowed"):
        ta.convert(model, "fast")  # type: ignore[arg-type]


def test_missing_torchao_raises_missing_dependency(monkeypatch):
    monkeypatch.delitem(sys.modules, "fq_plugins.adapters.torchao")
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fq-plugins\[torchao\]'"):
        import fq_plugins.adapters.torchao  # noqa: F401


def test_installed_torchao_is_in_the_tested_range():
    import torchao

    lo, hi = ta.TESTED_TORCHAO
    assert lo <= ta._version_tuple(torchao.__version__) < hi


# --- serialization -----------------------------------------------------------------------


def test_converted_model_round_trips_through_safetensors_and_torch_save(tmp_path):
    pytest.importorskip("safetensors")
    model = net()
    quantize_(
        model,
        FqnToConfig(
            {
                "0": ta.UniformConfig(bits=4),
                "3": ta.CoDeQConfig(bits=3),
                "5": ta.UniformConfig(bits=2),
            }
        ),
        filter_fn=None,
    )
    train_steps(model)
    ta.convert(model)
    with torch.no_grad():
        ref = model.eval()(X)
    path = str(tmp_path / "m.safetensors")
    ta.save_converted(model, path)
    fresh = net(seed=7)  # differently initialised
    ta.load_converted(fresh, path)
    assert type(fresh[0].weight) is IntxTensor and type(fresh[3].weight) is nn.Parameter
    with torch.no_grad():
        assert torch.equal(fresh.eval()(X), ref)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = net(seed=8)
    again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), assign=True)
    with torch.no_grad():
        assert torch.equal(again.eval()(X), ref)
    with pytest.raises(ConfigError, match="does not fit this model"):
        ta.load_converted(nn.Sequential(nn.Linear(2, 2)), path)


# --- config serialization: torchao JSON and HF TorchAoConfig ----------------------------


def test_configs_round_trip_through_torchao_json_and_hf_torchao_config():
    from torchao.core.config import config_from_dict, config_to_dict

    table = FqnToConfig(
        {"0": ta.CoDeQConfig(bits=4, quantile=0.9), "re:.*": ta.MoMosConfig(k=4, seed=3)}
    )
    back = config_from_dict(json.loads(json.dumps(config_to_dict(table))))
    assert (
        back.fqn_to_config["0"].method_config == ta.CoDeQConfig(bits=4, quantile=0.9).method_config
    )
    assert type(back.fqn_to_config["re:.*"]) is ta.MoMosConfig
    baq = ta.BAQConfig(avg_bits=3, deadzone=True, calib=calib(), n_groups=2)
    again = config_from_dict(config_to_dict(baq))
    assert again == baq and again.mode == "baq" and again.calib is None  # batches not stored
    generated = ta.ao_config_for("codeq")(bits=3)
    assert config_from_dict(config_to_dict(generated)) == generated
    transformers = pytest.importorskip("transformers")
    hf = transformers.TorchAoConfig(quant_type=ta.UniformConfig(bits=3, granularity="tensor"))
    loaded = transformers.TorchAoConfig.from_dict(json.loads(json.dumps(hf.to_dict(), default=str)))
    assert loaded.quant_type == ta.UniformConfig(bits=3, granularity="tensor")


def test_the_docs_example_runs(tmp_path):
    import re
    from pathlib import Path

    page = Path(__file__).parents[2] / "docs" / "adapters" / "torchao.md"
    code = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)[0]
    code = code.replace("/tmp/model.safetensors", str(tmp_path / "model.safetensors"))
    exec(compile(code, str(page), "exec"), {"__name__": "docs_example"})
