"""What a plugin class provides, per family, and the records they exchange.

Plugin classes subclass these bases (the contract tests in :mod:`fq_plugins.testing`
check the behaviour). Methods that a family does not need keep the base implementation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
from pydantic import ConfigDict, Field

from ._config import StrictConfig
from .targets import Target, TargetSpec

if TYPE_CHECKING:
    from .compressors.ops import QuantCodes
    from .engine.installers import Installer
    from .fairness.table import GroupConfusion

__all__ = [
    "AttachContext",
    "Availability",
    "CompressionStats",
    "Compressor",
    "DataSelector",
    "EnergyMeter",
    "EnergyReading",
    "FairnessMetric",
    "InstalledTransform",
    "LayerStats",
    "MeterConfig",
    "MethodConfig",
    "MethodState",
    "MetricResult",
    "StorageSize",
]


# --- compressors --------------------------------------------------------------------


class MethodConfig(StrictConfig):
    """Base of every compressor's ``Config``: one item of the recipe's ``compress`` list.

    Unknown keys are errors (``extra="forbid"``) so a misspelt key never passes silently.
    """

    # frozen: validated values cannot be changed afterwards (use ``model_copy(update=...)``
    # and validate again), so no unvalidated value reaches a method
    model_config = ConfigDict(extra="forbid", frozen=True)

    config_version: ClassVar[int] = 1
    """Schema version of this method's config; bump it when a field changes meaning."""

    method: str = Field(description="Registered compressor name.")
    targets: TargetSpec = Field(
        default_factory=TargetSpec, description="Which modules the method touches."
    )


@dataclasses.dataclass
class AttachContext:
    """What a compressor may need at attach time besides the model.

    ``calib_batches`` yields ``(x, y, group)`` training batches (group may be None) for
    methods that measure importance before compressing; ``group_key`` names the recipe's
    group field for error messages.
    """

    calib_batches: Any = None  # Callable[[], Iterator[tuple[Tensor, Tensor, Tensor | None]]]
    group_key: str = "group"
    n_groups: int | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    example_input: torch.Tensor | None = None
    """A small input batch for methods that trace the model (BMRS); else the first
    calibration batch is used."""
    installer: Installer | None = None
    """Where weight transforms go (default: parametrize); the adapters pass their own."""
    n_train: int | None = None
    """The training-set size, where the host knows it (``fq-plugins run``); BMRS's
    ``kl_reduction: elbo`` uses it when the recipe gives no ``n_train``."""
    dry_run: bool = False
    """True when the host only checks that the methods can attach (``fq-plugins validate``,
    the start of ``run``): a method may skip costly measurements but must raise every
    error a real attach would."""

    def iter_calib(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """``(x, y, group)`` batches; mapping batches are read with ``group_key``."""
        if self.calib_batches is None:
            from .errors import ConfigError

            raise ConfigError(
                "this method needs calibration batches but none were given; pass "
                "AttachContext(calib_batches=...) or run it through `fq-plugins run`"
            )
        from .engine.batches import unpack_batch

        return (unpack_batch(b, group_key=self.group_key) for b in self.calib_batches())


@dataclasses.dataclass
class LayerStats:
    """Per-layer compression facts a method reports.

    ``bits`` holds one bit-width per output channel (``None``: the method does not quantize
    this layer). ``quantized`` True means the layer's weights are stored as integer codes.
    """

    bits: torch.Tensor | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CompressionStats:
    """What one method reports about the model it compressed."""

    method: str
    layers: dict[str, LayerStats] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StorageSize:
    """A method's own stored form for some layers (MoMos: k motifs + indices).

    ``layers`` are module names whose weights it covers; ``bytes`` replaces their dense
    packed bytes in the accounting.
    """

    layers: tuple[str, ...]
    bytes: int


@dataclasses.dataclass(frozen=True)
class InstalledTransform:
    """One weight transform a method installed: on ``module.<param>``, named ``name``."""

    name: str
    module: torch.nn.Module
    param: str
    transform: torch.nn.Module


class MethodState(torch.nn.Module):
    """Method-wide state that must survive ``state_dict`` (schedules, counters, scores).

    Tensors go in with :meth:`put` (buffers; names may contain dots); the JSON-able
    :attr:`record` travels as ``get_extra_state`` (a uint8 tensor of its JSON, so
    tensor-only formats such as safetensors carry it). A method adds it to the model with
    :meth:`Compressor.add_state`, so checkpoints and DDP carry it like any buffer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.record: dict[str, Any] = {}

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__") or "_root"

    def put(self, name: str, value: torch.Tensor) -> None:
        """Store ``value`` (a copy) under ``name``; replaces an earlier value of that name."""
        key = self._key(name)
        if key in self._buffers:
            self._buffers[key] = value.detach().clone()
        else:
            self.register_buffer(key, value.detach().clone())

    def get(self, name: str) -> torch.Tensor:
        return cast(torch.Tensor, self._buffers[self._key(name)])

    def has(self, name: str) -> bool:
        return self._key(name) in self._buffers

    def get_extra_state(self) -> torch.Tensor:
        # JSON bytes in a uint8 tensor: checkpoints that hold only tensors (safetensors, as
        # HF Trainer writes them) carry the record too
        data = json.dumps(self.record, sort_keys=True).encode("utf-8")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, torch.Tensor):
            state = json.loads(bytes(state.to(torch.uint8).tolist()).decode("utf-8"))
        self.record = copy.deepcopy(dict(state))


class Compressor:
    """A compression method.

    Life cycle: ``__init__(config)`` → ``attach(model, targets)`` (before any optimizer is
    built: all state goes into the model as transforms, buffers or parameters, so
    ``state_dict``, DDP and checkpoints carry it) → training with ``penalty()`` added to the
    loss and ``on_step``/``on_epoch_end`` called → ``stats()`` → ``before_finalize()`` →
    ``storage_codes()`` → ``finalize(model)``.

    Capabilities are typed here, never read from side channels: :attr:`structural`,
    :meth:`act_bits`, :meth:`storage_codes`, :meth:`storage_size`, :meth:`export_compact`,
    :meth:`summary`. Hosts and storage call these and name no method.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    structural: ClassVar[bool] = False
    """True when ``finalize`` changes the model's shape (BMRS removes channels): hosts then
    train and finalize the method in a stage of its own, before the others attach."""

    def __init__(self, config: MethodConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            config = self.Config(method=kwargs.pop("method", self.name), **kwargs)
        elif kwargs:
            raise TypeError("pass either a Config or keyword arguments, not both")
        self.config = config
        self.attached: list[tuple[str, torch.nn.Module]] = []
        self.transforms: list[InstalledTransform] = []
        self.installer: Installer | None = None
        self._final_codes: dict[str, QuantCodes] | None = None
        self._state: MethodState | None = None
        self._state_host: torch.nn.Module | None = None

    # --- helpers for implementations -------------------------------------------------

    def _get_installer(self) -> Installer:
        if self.installer is None:
            from .engine.installers import default_installer

            self.installer = default_installer()
        return self.installer

    def install_transform(
        self, name: str, module: torch.nn.Module, transform: torch.nn.Module, param: str = "weight"
    ) -> None:
        """Put ``transform`` on ``module.<param>`` through the host's installer; remembered
        for :meth:`bake_transforms` and :meth:`storage_codes`."""
        self._get_installer().install(module, param, transform)
        self.transforms.append(InstalledTransform(name, module, param, transform))

    def find_transform(
        self, module: torch.nn.Module, kinds: type | tuple[type, ...], param: str = "weight"
    ) -> torch.nn.Module | None:
        """The first transform on ``module.<param>`` that is an instance of ``kinds``."""
        for t in self._get_installer().transforms(module, param):
            if isinstance(t, kinds):
                return t
        return None

    def original(self, module: torch.nn.Module, param: str = "weight") -> torch.Tensor:
        """The trainable tensor under any transforms on ``module.<param>``."""
        return self._get_installer().original(module, param)

    def add_state(self, host: torch.nn.Module) -> MethodState:
        """Add this method's :class:`MethodState` to ``host`` (typically its first target) as
        the child ``fq_state_<name>``; :meth:`remove_state` takes it out at finalize."""
        attr = self._state_attr()
        if attr in host._modules:
            raise ValueError(
                f"{type(host).__name__} already carries state of a {self.name!r} method; "
                "attach one instance per module"
            )
        state = MethodState()
        host.add_module(attr, state)
        self._state = state
        self._state_host = host
        return state

    def remove_state(self) -> None:
        """Take the :class:`MethodState` out of the model (the state object stays readable)."""
        if self._state_host is not None:
            self._state_host._modules.pop(self._state_attr(), None)

    @property
    def state(self) -> MethodState:
        if self._state is None:
            raise RuntimeError(f"{self.name}: no state before attach")
        return self._state

    def _state_attr(self) -> str:
        return "fq_state_" + "".join(c if c.isalnum() else "_" for c in self.name)

    def bake_transforms(self) -> None:
        """Record :meth:`storage_codes`, then bake every transform this method installed."""
        if self._final_codes is None:
            self._final_codes = self.storage_codes()
        installer = self._get_installer()
        for t in self.transforms:
            installer.bake(t.module, t.param)

    # --- the protocol ---------------------------------------------------------------

    def attach(
        self,
        model: torch.nn.Module,
        targets: Sequence[Target],
        context: AttachContext | None = None,
    ) -> None:
        """Put the method's state into ``model`` for the selected ``(name, module)`` targets."""
        raise NotImplementedError

    def penalty(self) -> torch.Tensor:
        """The method's loss term, already weighted (a 0-d tensor; zero if it has none)."""
        return torch.zeros(())

    def wants_training(self) -> bool:
        """False for post-training methods: hosts then skip fine-tuning for a pipeline whose
        methods all answer False (e.g. ``fairquant`` in ``static`` mode)."""
        return True

    def on_step(self, step: int) -> None:
        """Called after each optimizer step (schedules)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called at the end of each training epoch (mask updates, projections)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups for the method's own parameters (own lr / weight decay).

        Parameters listed here are excluded from the model's default group by the session.
        """
        return []

    def stats(self) -> CompressionStats:
        """Per-layer facts (bit-widths…) for accounting."""
        return CompressionStats(method=self.name)

    def act_bits(self) -> float | None:
        """Activation bits the method fake-quantizes inputs to (BOPs), or None (float)."""
        return None

    def storage_codes(self) -> dict[str, QuantCodes]:
        """Exact integer codes of every weight this method quantizes, by module name.

        Default: every installed transform with a ``quant_codes(w)`` method is asked for the
        codes of the value entering it. After :meth:`bake_transforms` the recorded codes.
        """
        if self._final_codes is not None:
            return dict(self._final_codes)
        installer = self._get_installer()
        out: dict[str, QuantCodes] = {}
        for t in self.transforms:
            fn = getattr(t.transform, "quant_codes", None)
            if callable(fn) and t.transform in installer.transforms(t.module, t.param):
                out[t.name] = fn(installer.input_of(t.module, t.param, t.transform))
        return out

    def storage_size(self) -> StorageSize | None:
        """The method's own stored form for some layers (replaces their packed bytes)."""
        return None

    def export_compact(self, path: str) -> int | None:
        """Write the method's compact form to ``path``; bytes written, or None (no form)."""
        return None

    def summary(self) -> str | None:
        """One line for the log after finalize (``x % of N channels removed``), or None."""
        return None

    def before_finalize(self) -> None:
        """Last adjustment before codes are taken and weights baked (BAQ: budget projection)."""

    def finalize(self, model: torch.nn.Module) -> torch.nn.Module:
        """Bake the method in; return a plain model with the same outputs."""
        raise NotImplementedError


# --- fairness metrics ---------------------------------------------------------------


@dataclasses.dataclass
class MetricResult:
    """One metric's value: a headline ``value`` plus per-group / per-class details.

    ``higher_is_better`` tells report readers which direction is good. ``nan`` means
    undefined (e.g. fewer than two groups with data).
    """

    name: str
    value: float
    per_group: list[float] | None = None
    per_class: list[float] | None = None
    higher_is_better: bool = True
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return _json_safe(d)


class FairnessMetric:
    """Computes one figure from a :class:`~fq_plugins.fairness.table.GroupConfusion`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def compute(self, table: GroupConfusion) -> MetricResult:
        raise NotImplementedError


# --- energy meters ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Availability:
    """Whether a meter can run here, and why not."""

    status: Literal["ok", "missing", "permission_denied", "error"]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass
class EnergyReading:
    """Energy used between ``start()`` and ``stop()``.

    ``joules`` maps a domain (``cpu:0``, ``dram:0``, ``gpu:0``) to joules; ``methods`` maps
    the same domains to how the figure was obtained (``measured:rapl``,
    ``estimated:cpu-time-tdp`` …). ``missing`` holds the reason when the meter failed.
    """

    meter: str
    seconds: float
    joules: dict[str, float] = dataclasses.field(default_factory=dict)
    methods: dict[str, str] = dataclasses.field(default_factory=dict)
    missing: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def total_joules(self) -> float:
        return float(sum(self.joules.values())) if self.missing is None else math.nan

    @property
    def estimated(self) -> bool:
        return any(m.startswith("estimated:") for m in self.methods.values())

    @property
    def method(self) -> str:
        """The methods behind the total, joined (``estimated:cpu-time-tdp``)."""
        return "+".join(sorted(set(self.methods.values()))) or "missing"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["total_joules"] = self.total_joules
        d["method"] = self.method
        return _json_safe(d)


class MeterConfig(StrictConfig):
    """Base of every energy meter's ``Config``: one item of the recipe's ``energy.meters``.

    A recipe item is a name (``cpu_time``: every option at its default) or a mapping of
    ``name`` plus the meter's options (``{name: rapl, poll_seconds: 1}``). Subclasses add
    the options as fields; unknown keys are errors (``extra="forbid"``) so a misspelt
    option never passes silently. Frozen: validated options cannot change afterwards.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Registered meter name.")

    def options(self) -> dict[str, Any]:
        """The meter's options: every field but ``name``, as validated values."""
        return {k: getattr(self, k) for k in type(self).model_fields if k != "name"}


class EnergyMeter:
    """Measures (or estimates, labelled) energy between ``start()`` and ``stop()``.

    Options come from :attr:`Config` (a :class:`MeterConfig`), validated from the recipe
    item before any training. Hosts build a meter with :meth:`from_config`, which calls
    ``cls(**config.options())``; the base constructor accepts a Config or those keyword
    options and keeps the validated Config as :attr:`config`. A meter with a constructor of
    its own takes the Config's fields as keyword arguments and passes
    :meth:`make_config`'s result to ``super().__init__``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    measured: ClassVar[bool] = False
    """True for meters that read hardware counters; ``auto`` prefers these. Every domain of a
    measured meter's reading is labelled ``measured:*``, of any other meter ``estimated:*``."""
    Config: ClassVar[type[MeterConfig]] = MeterConfig

    config: MeterConfig
    """This meter's validated options."""

    def __init__(self, config: MeterConfig | None = None, **options: Any) -> None:
        if config is None:
            config = self.make_config(**options)
        elif options:
            raise TypeError("pass either a Config or keyword options, not both")
        elif not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} takes a {self.Config.__qualname__}; got "
                f"{type(config).__qualname__} (build it with {type(self).__name__}.make_config)"
            )
        self.config = config

    @classmethod
    def make_config(cls, **options: Any) -> MeterConfig:
        """:attr:`Config` from keyword options (``name`` defaults to the meter's name).

        :raises ConfigError: an unknown option, a missing or bad value, naming the option,
            the value, the allowed keys and the fix.
        """
        from .recipe import meter_config_from

        return meter_config_from(
            cls.Config, {"name": cls.name, **options}, key="", label=f"{cls.__name__} options"
        )

    @classmethod
    def from_config(cls, config: MeterConfig) -> EnergyMeter:
        """The meter for a validated recipe item: ``cls(config)`` for a meter that keeps the
        base constructor, else ``cls(**config.options())``.

        Override this when the constructor's keywords differ from the Config's fields.
        """
        if not isinstance(config, cls.Config):
            config = cls.make_config(**{**config.options(), "name": config.name})
        if cls.__init__ is EnergyMeter.__init__:
            return cls(config)
        return cls(**config.options())

    def probe(self) -> Availability:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> EnergyReading:
        raise NotImplementedError


# --- data selectors -----------------------------------------------------------------


class DataSelector:
    """Chooses a subset (coreset) of a training set for data frugality."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def select(
        self,
        labels: Sequence[int] | torch.Tensor,
        fraction: float,
        *,
        model: torch.nn.Module | None = None,
        groups: Sequence[int] | torch.Tensor | None = None,
        seed: int = 0,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return sorted int64 indices of the kept examples (``round(fraction·N)`` of them)."""
        raise NotImplementedError


def _json_safe(obj: Any) -> Any:
    """Tensors → lists, NaN/inf → None (JSON has neither)."""
    if isinstance(obj, torch.Tensor):
        return _json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj
