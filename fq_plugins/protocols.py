"""What a plugin class provides, per family, and the records they exchange.

Plugin classes subclass these bases (the contract tests in :mod:`fq_plugins.testing`
check the behaviour). Methods that a family does not need keep the base implementation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .targets import TargetSpec

if TYPE_CHECKING:
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
    "LayerStats",
    "MethodConfig",
    "MetricResult",
]


# --- compressors --------------------------------------------------------------------


class MethodConfig(BaseModel):
    """Base of every compressor's ``Config``: one item of the recipe's ``compress`` list.

    Unknown keys are errors (``extra="forbid"``) so a misspelt key never passes silently.
    """

    model_config = ConfigDict(extra="forbid", frozen=False)

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

    def iter_calib(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        if self.calib_batches is None:
            from .errors import ConfigError

            raise ConfigError(
                "this method needs calibration batches but none were given; pass "
                "AttachContext(calib_batches=...) or run it through `fq-plugins run`"
            )
        return iter(self.calib_batches())


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


class Compressor:
    """A compression method.

    Life cycle: ``__init__(config)`` → ``attach(model, targets)`` (before any optimizer is
    built: all state goes into the model as parametrizations, buffers or parameters, so
    ``state_dict``, DDP and checkpoints carry it) → training with ``penalty()`` added to the
    loss and ``on_step``/``on_epoch_end`` called → ``stats()`` → ``finalize(model)``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            config = self.Config(method=kwargs.pop("method", self.name), **kwargs)
        elif kwargs:
            raise TypeError("pass either a Config or keyword arguments, not both")
        self.config = config
        self.attached: list[tuple[str, torch.nn.Module]] = []

    def attach(
        self,
        model: torch.nn.Module,
        targets: Sequence[tuple[str, torch.nn.Module]],
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


class EnergyMeter:
    """Measures (or estimates, labelled) energy between ``start()`` and ``stop()``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    measured: ClassVar[bool] = False
    """True for meters that read hardware counters; ``auto`` prefers these."""

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
