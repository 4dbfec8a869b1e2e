"""Contract tests for plugin authors: subclass one per family in your test suite.

Example::

    from fq_plugins.testing import CompressorContract

    class TestMyPruner(CompressorContract):
        compressor_cls = MyPruner
        config = {"sparsity": 0.5}

pytest collects the inherited ``test_*`` methods. Override ``make_model``,
``make_input`` or ``attach_context`` when your method needs something else. Needs pytest
(``pip install 'fq-plugins[dev]'``).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from typing import Any, ClassVar

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError
from .fairness.table import GroupConfusion
from .protocols import (
    AttachContext,
    Availability,
    CompressionStats,
    Compressor,
    DataSelector,
    EnergyMeter,
    EnergyReading,
    FairnessMetric,
    MeterConfig,
    MetricResult,
)
from .targets import WEIGHT_LAYER_TYPES, select_targets

__all__ = [
    "CompressorContract",
    "DataSelectorContract",
    "EnergyMeterContract",
    "FairnessMetricContract",
]


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class CompressorContract:
    """The behaviour every :class:`~fq_plugins.protocols.Compressor` must show."""

    compressor_cls: ClassVar[type[Compressor]]
    config: ClassVar[dict[str, Any]] = {}
    atol: ClassVar[float] = 1e-5

    def make_model(self) -> nn.Module:
        torch.manual_seed(0)
        return _TinyNet()

    def make_input(self) -> torch.Tensor:
        return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def attach_context(self) -> AttachContext:
        gen = torch.Generator().manual_seed(2)
        batches = [
            (
                torch.randn(8, 3, 8, 8, generator=gen),
                torch.randint(0, 4, (8,), generator=gen),
                torch.arange(8) % 2,
            )
            for _ in range(2)
        ]
        return AttachContext(calib_batches=lambda: iter(batches), n_groups=2)

    def make_compressor(self) -> Compressor:
        cfg = self.compressor_cls.Config.model_validate(
            {"method": self.compressor_cls.name, **self.config}
        )
        return self.compressor_cls(cfg)

    def attached(self) -> tuple[nn.Module, Compressor]:
        model = self.make_model()
        comp = self.make_compressor()
        comp.attach(model, select_targets(model, comp.config.targets), self.attach_context())
        return model, comp

    # --- tests --------------------------------------------------------------------

    def test_has_name_description_config(self) -> None:
        assert isinstance(self.compressor_cls.name, str) and self.compressor_cls.name
        assert self.compressor_cls.description, "set a one-line `description`"
        assert "method" in self.compressor_cls.Config.model_fields

    def test_config_json_round_trip(self) -> None:
        cfg = self.make_compressor().config
        again = type(cfg).model_validate(json.loads(cfg.model_dump_json()))
        assert again == cfg

    def test_config_rejects_unknown_key(self) -> None:
        with pytest.raises(ValidationError):
            self.compressor_cls.Config.model_validate(
                {"method": self.compressor_cls.name, **self.config, "no_such_key_xyz": 1}
            )

    def test_penalty_is_a_scalar_tensor(self) -> None:
        _, comp = self.attached()
        p = comp.penalty()
        assert isinstance(p, torch.Tensor) and p.dim() == 0 and math.isfinite(float(p.detach()))

    def test_stats(self) -> None:
        model, comp = self.attached()
        st = comp.stats()
        assert isinstance(st, CompressionStats)
        modules = dict(model.named_modules())
        for name, layer in st.layers.items():
            assert name in modules, f"stats name {name!r} is not a module of the model"
            if layer.bits is not None:
                assert layer.bits.numel() == modules[name].weight.shape[0]
                assert bool(((layer.bits >= 1) & (layer.bits <= 32)).all())

    def test_gradient_reaches_weights(self) -> None:
        model, comp = self.attached()
        model.train()
        loss = model(self.make_input()).square().mean() + comp.penalty()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads)

    def test_state_dict_round_trip(self) -> None:
        """All state lives in the model: a fresh attach + load_state_dict reproduces outputs."""
        model, _ = self.attached()
        with torch.no_grad():  # perturb so the state is not just the initial one
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.eval()
        x = self.make_input()
        expected = model(x)
        fresh, _ = self.attached()
        fresh.load_state_dict(model.state_dict())
        fresh.eval()
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=self.atol)

    def test_finalize_gives_plain_model_with_same_outputs(self) -> None:
        model, comp = self.attached()
        model.eval()
        x = self.make_input()
        with torch.no_grad():
            expected = model(x)
        final = comp.finalize(model)
        assert not any(parametrize.is_parametrized(m) for m in final.modules()), (
            "finalize must remove parametrizations"
        )
        final.eval()
        with torch.no_grad():
            torch.testing.assert_close(final(x), expected, rtol=0, atol=self.atol)

    def test_deepcopy_after_attach(self) -> None:
        model, _ = self.attached()
        model.eval()
        x = self.make_input()
        torch.testing.assert_close(copy.deepcopy(model)(x), model(x), rtol=0, atol=0)

    # --- all state in the model: resume = never stopping ---------------------------

    resume_steps: ClassVar[int] = 4
    """Training steps before the checkpoint (and after it); an epoch is two steps."""

    def make_fresh_model(self) -> nn.Module:
        """The same architecture, initialised differently (a checkpoint must not rely on
        the initialisation matching)."""
        model = self.make_model()
        gen = torch.Generator().manual_seed(12345)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
        return model

    def _train(
        self,
        model: nn.Module,
        comp: Compressor,
        opt: torch.optim.Optimizer,
        steps: range,
    ) -> None:
        gen = torch.Generator().manual_seed(77)
        xs = [torch.randn(8, *self.make_input().shape[1:], generator=gen) for _ in range(8)]
        model.train()
        for step in steps:
            torch.manual_seed(1000 + step)  # methods that sample (BMRS) see the same noise
            x = xs[step % len(xs)]
            out = model(x)
            y = torch.arange(x.shape[0]) % out.shape[1]
            loss = torch.nn.functional.cross_entropy(out, y) + comp.penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            comp.on_step(step)
            if step % 2 == 1:
                comp.on_epoch_end(step // 2)

    def _optimizer(self, model: nn.Module, comp: Compressor) -> torch.optim.Optimizer:
        from .session import CompressionSession

        session = CompressionSession([comp])
        session.attached = True  # attached by the test itself
        return torch.optim.AdamW(session.param_groups(model, lr=1e-2, weight_decay=1e-3))

    def test_resume_from_checkpoint_is_identical(self) -> None:
        """Train k steps, save model + optimizer, load both into a differently initialised
        fresh model (attached the same way), train k more: equal to 2k uninterrupted steps."""
        k = self.resume_steps
        straight, comp_a = self.attached()
        opt_a = self._optimizer(straight, comp_a)
        self._train(straight, comp_a, opt_a, range(2 * k))

        first, comp_b = self.attached()
        opt_b = self._optimizer(first, comp_b)
        self._train(first, comp_b, opt_b, range(k))
        model_state = copy.deepcopy(first.state_dict())
        opt_state = copy.deepcopy(opt_b.state_dict())

        fresh = self.make_fresh_model()
        comp_c = self.make_compressor()
        comp_c.attach(fresh, select_targets(fresh, comp_c.config.targets), self.attach_context())
        fresh.load_state_dict(model_state)
        opt_c = self._optimizer(fresh, comp_c)
        opt_c.load_state_dict(opt_state)
        self._train(fresh, comp_c, opt_c, range(k, 2 * k))

        got, want = fresh.state_dict(), straight.state_dict()
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), (
                    f"{key} differs after resume: state the method keeps outside the model "
                    "(a plain attribute, a non-persistent buffer) was lost; put it in a buffer, "
                    "a parameter or get_extra_state (see Compressor.add_state)"
                )
            else:
                assert got[key] == value, key
        fresh.eval()
        straight.eval()
        x = self.make_input()
        with torch.no_grad():
            assert torch.equal(fresh(x), straight(x))
        assert comp_c.stats().extra.keys() == comp_a.stats().extra.keys()

    # --- exact codes: what storage writes is what finalize computed ----------------------

    def test_compressed_checkpoint_loads_bit_identical(self, tmp_path: Any) -> None:
        """finalize → save_compressed(codes) → load into a differently initialised fresh
        model → the same outputs, bit for bit, with every quantized layer stored as codes."""
        from .storage import load_compressed, save_compressed

        model, comp = self.attached()
        model.eval()
        comp.before_finalize()
        codes = comp.storage_codes()
        final = comp.finalize(model).eval()
        x = self.make_input()
        saved = save_compressed(final, codes, tmp_path / "model.fqz")
        assert saved.float_layers == [], (
            f"the codes of {saved.float_layers} do not reproduce the finalized weights: "
            "quant_codes() must compute exactly what forward() does"
        )
        fresh = load_compressed(tmp_path / "model.fqz", self.make_fresh_model()).eval()
        with torch.no_grad():
            assert torch.equal(fresh(x), final(x))

    def test_a_quantizer_reports_its_bits(self) -> None:
        """Weights that take few distinct values per channel after attach (a quantizer) must
        be reported with bits (or a stored form of the method's own), or the accounting
        counts them as 32-bit floats."""
        model, comp = self.attached()
        st = comp.stats()
        codes = comp.storage_codes()
        for name, qc in codes.items():
            assert name in st.layers and st.layers[name].bits is not None, (
                f"{name}: storage_codes() has codes but stats() reports no bits"
            )
            bits = st.layers[name].bits
            assert bits is not None and torch.equal(bits.float(), qc.bits.float()), name
        if comp.storage_size() is not None:
            return
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if not isinstance(mod, WEIGHT_LAYER_TYPES) or not isinstance(w, torch.Tensor):
                continue
            rows = w.detach().reshape(w.shape[0], -1)
            repeated = sum(
                int(torch.unique(r[r != 0]).numel()) < int((r != 0).sum()) // 2 for r in rows
            )
            if repeated > rows.shape[0] // 2:  # most channels share a few values: quantized
                layer = st.layers.get(name)
                assert layer is not None and layer.bits is not None, (
                    f"{name} looks quantized (few distinct values per channel) but stats() "
                    "reports no bits for it"
                )


def _random_table(seed: int = 0, groups: int = 3, classes: int = 4) -> GroupConfusion:
    gen = torch.Generator().manual_seed(seed)
    n = 400
    t = GroupConfusion(groups, classes)
    y = torch.randint(0, classes, (n,), generator=gen)
    noise = torch.randint(0, classes, (n,), generator=gen)
    keep = torch.rand(n, generator=gen) < 0.6
    return t.update(torch.where(keep, y, noise), y, torch.randint(0, groups, (n,), generator=gen))


class FairnessMetricContract:
    """The behaviour every :class:`~fq_plugins.protocols.FairnessMetric` must show."""

    metric_cls: ClassVar[type[FairnessMetric]]
    scale_invariant: ClassVar[bool] = True
    """Rate-based metrics do not change when every count is doubled; set False otherwise."""

    def test_has_name_and_description(self) -> None:
        assert self.metric_cls.name and self.metric_cls.description

    def test_returns_metric_result(self) -> None:
        r = self.metric_cls().compute(_random_table())
        assert isinstance(r, MetricResult) and r.name == self.metric_cls.name
        assert isinstance(r.value, float) and math.isfinite(r.value)
        json.dumps(r.to_dict(), allow_nan=False)

    def test_scale_invariance(self) -> None:
        if not self.scale_invariant:
            pytest.skip("metric declares itself count-dependent")
        t = _random_table()
        t2 = GroupConfusion(t.n_groups, t.n_classes)
        t2.counts = t.counts * 2
        assert self.metric_cls().compute(t2).value == pytest.approx(
            self.metric_cls().compute(t).value, abs=1e-12
        )

    def test_group_without_examples_does_not_raise(self) -> None:
        t = _random_table()
        t.counts[1] = 0
        self.metric_cls().compute(t)

    def test_undefined_option(self) -> None:
        """Metrics taking ``undefined`` accept nan / zero / skip and reject anything else."""
        if "undefined" not in inspect.signature(self.metric_cls).parameters:
            pytest.skip("metric takes no `undefined` option")
        t = _random_table()
        t.counts[1, 2] = 0  # group 1 has no example of class 2: some rates are undefined
        for policy in ("nan", "zero", "skip"):
            r = self.metric_cls(undefined=policy).compute(t)  # type: ignore[call-arg]
            json.dumps(r.to_dict(), allow_nan=False)
        with pytest.raises(ConfigError):
            self.metric_cls(undefined="sometimes")  # type: ignore[call-arg]


class EnergyMeterContract:
    """The behaviour every :class:`~fq_plugins.protocols.EnergyMeter` must show.

    ``config`` holds the options a recipe would give (``{"watts": 10}``); ``make_meter``
    builds ``meter_cls(**config)``. Override it to build the meter against a fake device
    (e.g. a fake powercap tree).
    """

    meter_cls: ClassVar[type[EnergyMeter]]
    config: ClassVar[dict[str, Any]] = {}

    def make_meter(self) -> EnergyMeter:
        return self.meter_cls(**self.config)

    def make_config(self) -> MeterConfig:
        return self.meter_cls.Config.model_validate({"name": self.meter_cls.name, **self.config})

    def _reading(self) -> EnergyReading:
        meter = self.make_meter()
        if not meter.probe().ok:
            pytest.skip("meter unavailable here")
        meter.start()
        sum(i * i for i in range(200_000))
        return meter.stop()

    def test_has_name_and_description(self) -> None:
        assert self.meter_cls.name and self.meter_cls.description

    def test_probe_returns_availability(self) -> None:
        a = self.make_meter().probe()
        assert isinstance(a, Availability)
        assert a.status in ("ok", "missing", "permission_denied", "error")
        if not a.ok:
            assert a.reason, "say why the meter is unavailable"

    def test_reading_is_labelled_and_non_negative(self) -> None:
        r = self._reading()
        assert isinstance(r, EnergyReading) and r.seconds >= 0
        assert r.joules and set(r.joules) == set(r.methods)
        for dom, j in r.joules.items():
            assert j >= 0 and math.isfinite(j), dom
            assert r.methods[dom].startswith(("measured:", "estimated:")), r.methods[dom]

    def test_measured_flag_matches_the_labels(self) -> None:
        """``measured = True`` ⇔ every domain is labelled ``measured:*`` (``auto`` trusts it)."""
        r = self._reading()
        cls = self.meter_cls
        for dom, label in r.methods.items():
            if cls.measured:
                assert label.startswith("measured:"), (
                    f"{cls.__name__}.measured is True but domain {dom!r} is labelled "
                    f"{label!r}: label every figure of a measured meter `measured:<source>`, "
                    "or set `measured = False` (then `auto` does not pick it)"
                )
            else:
                assert not label.startswith("measured:"), (
                    f"{cls.__name__}.measured is False but domain {dom!r} is labelled "
                    f"{label!r}: label estimates `estimated:<method>`, or set `measured = True` "
                    "if the meter reads hardware counters"
                )

    def test_config_is_a_meter_config(self) -> None:
        cfg_cls = self.meter_cls.Config
        assert isinstance(cfg_cls, type) and issubclass(cfg_cls, MeterConfig), (
            f"{self.meter_cls.__name__}.Config must subclass fq_plugins.protocols.MeterConfig"
        )
        meter = self.make_meter()
        assert isinstance(getattr(meter, "config", None), cfg_cls), (
            f"{self.meter_cls.__name__} instances must keep their validated options as "
            f"`self.config` (a {cfg_cls.__name__}): call "
            "`super().__init__(self.make_config(...))` in a constructor of your own"
        )

    def test_config_json_round_trip(self) -> None:
        for cfg in (self.make_config(), self.make_meter().config):
            text = cfg.model_dump_json()
            again = type(cfg).model_validate(json.loads(text))
            assert again == cfg, (
                f"{type(cfg).__name__} does not survive JSON: {cfg!r} → {text} → {again!r}; "
                "use JSON types (str, numbers, lists) for options"
            )

    def test_config_rejects_unknown_key(self) -> None:
        cfg_cls = self.meter_cls.Config
        data = {"name": self.meter_cls.name, **self.config, "no_such_key_xyz": 1}
        try:
            cfg_cls.model_validate(data)
        except ValidationError:
            return
        raise AssertionError(
            f"{cfg_cls.__name__} accepted the unknown key 'no_such_key_xyz', so a misspelt "
            "recipe option would pass silently: keep MeterConfig's model_config "
            "(extra='forbid')"
        )

    def test_from_config_builds_the_meter(self) -> None:
        """What a host does with a recipe item: ``from_config(Config)`` gives this meter."""
        cfg = self.make_config()
        meter = self.meter_cls.from_config(cfg)
        assert isinstance(meter, self.meter_cls)
        for key in self.config:
            got = getattr(meter.config, key, None)
            assert got == getattr(cfg, key), (
                f"from_config lost option {key!r}: the recipe gave {getattr(cfg, key)!r}, the "
                f"meter has {got!r}; take the Config's fields as keyword arguments, or "
                "override from_config"
            )


class DataSelectorContract:
    """The behaviour every :class:`~fq_plugins.protocols.DataSelector` must show."""

    selector_cls: ClassVar[type[DataSelector]]

    def _labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, 5, (300,), generator=gen), torch.randint(
            0, 2, (300,), generator=gen
        )

    def test_indices_valid_sorted_and_sized(self) -> None:
        y, g = self._labels()
        idx = self.selector_cls().select(y, 0.3, groups=g, seed=1)
        assert idx.dtype == torch.long and idx.numel() == round(0.3 * 300)
        assert bool((idx[1:] > idx[:-1]).all()) and int(idx.min()) >= 0 and int(idx.max()) < 300

    def test_deterministic_by_seed(self) -> None:
        y, g = self._labels()
        a = self.selector_cls().select(y, 0.5, groups=g, seed=3)
        b = self.selector_cls().select(y, 0.5, groups=g, seed=3)
        assert torch.equal(a, b)

    def test_rejects_bad_fraction(self) -> None:
        y, g = self._labels()
        for bad in (0.0, 1.5, -0.1):
            with pytest.raises(ConfigError):
                self.selector_cls().select(y, bad, groups=g)
