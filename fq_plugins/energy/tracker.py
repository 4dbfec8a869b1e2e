"""Energy of a host's phases: meters resolved from the recipe, wrapped around each phase.

:class:`EnergyTracker` starts every meter before a phase and stops it after (a meter that
fails mid-run marks its figure missing and the rest go on); :class:`EnergyPredictions`
makes the carbontracker-style first-epoch prediction. Under DDP each phase's reading is
combined over ranks, one figure per physical device. Used by ``fq-plugins run`` and by
every adapter, so energy is measured one way everywhere.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from .._log import Log, stderr_log
from ..errors import ConfigError
from ..protocols import EnergyMeter, EnergyReading, MeterConfig

if TYPE_CHECKING:
    from ..manager import FQPluginManager
    from .carbon import CarbonModel

__all__ = [
    "EnergyPredictions",
    "EnergyTracker",
    "build_meter",
    "merge_readings",
    "resolve_meters",
]



def _construct(cls: type[Any], options: dict[str, Any] | None) -> Any:
    from ..engine.evaluator import construct

    return construct(cls, options)


def build_meter(
    cls: type[EnergyMeter],
    item: str | MeterConfig,
    options: dict[str, Any] | None = None,
    *,
    key: str = "energy.meters",
) -> EnergyMeter:
    """One meter from a recipe item (a name or the meter's Config) and the host's options.

    Host options (``country`` from ``energy.carbon``) fill the Config's fields that the
    recipe left at ``None``; the meter's own options win. A meter without a Config of its
    own gets the host options its constructor accepts by name (as before Configs existed).
    """
    if cls.Config is MeterConfig:
        return cast(EnergyMeter, _construct(cls, options))
    if isinstance(item, str):
        from ..recipe import meter_config_from

        item = meter_config_from(cls.Config, {"name": item}, key=key, label="")
    fills = {
        k: v
        for k, v in (options or {}).items()
        if v is not None and k in type(item).model_fields and getattr(item, k) is None
    }
    if fills:
        from ..recipe import meter_config_from

        item = meter_config_from(
            cls.Config, {**item.options(), **fills, "name": item.name}, key=key, label=""
        )
    return cls.from_config(item)


def resolve_meters(
    names: Sequence[str | MeterConfig],
    pm: FQPluginManager,
    log: Log = stderr_log,
    options: dict[str, Any] | None = None,
) -> list[EnergyMeter]:
    """Instantiate meters; ``auto`` = first *measured* meter whose probe is ok, else ``cpu_time``.

    :param names: the recipe's ``energy.meters``: names, or meter Configs (name + options).
    :param options: host options (``country`` for the codecarbon meter) that fill the
        fields each meter's Config left at ``None`` (see :func:`build_meter`).
    """
    meters: list[EnergyMeter] = []
    for i, item in enumerate(names):
        key = f"energy.meters[{i}]"
        if item == "auto":
            chosen = None
            for entry in pm.meters:
                if not getattr(entry.cls, "measured", False):
                    continue
                try:
                    meter = build_meter(entry.cls, entry.name, options, key=key)
                    avail = meter.probe()
                except Exception as exc:  # a meter that cannot even probe is unavailable
                    log(f"energy: meter {entry.name!r} unavailable ({type(exc).__name__}: {exc})")
                    continue
                if avail.ok:
                    chosen = meter
                    break
                log(f"energy: meter {entry.name!r} unavailable ({avail.status}: {avail.reason})")
            if chosen is None:
                chosen = build_meter(
                    pm.meters.get("cpu_time", key=key), "cpu_time", options, key=key
                )
                log(
                    "energy: no measured meter available here; using the labelled CPU-time estimate"
                )
            meters.append(chosen)
        else:
            name = item if isinstance(item, str) else item.name
            cls = pm.meters.get(name, key=key if isinstance(item, str) else f"{key}.name")
            meter = build_meter(cls, item, options, key=key)
            avail = meter.probe()
            if not avail.ok:
                raise ConfigError(
                    f"meter {name!r} cannot run here ({avail.status}): {avail.reason}",
                    key=key,
                )
            meters.append(meter)
    return meters


class EnergyTracker:
    """Wraps a phase with every meter; a meter failing mid-run marks its figure missing.

    Inside :meth:`measure`, :meth:`lap` closes a lap (``stop()`` + ``start()`` on every
    meter) and returns the energy since the previous lap; the phase's reading adds the laps.
    Under DDP (an initialized process group) each phase's reading is combined over ranks,
    one figure per physical device (:func:`fq_plugins.energy.ddp.reduce_reading_across_ranks`).
    """

    def __init__(
        self, meters: list[EnergyMeter], pm: FQPluginManager, log: Log = stderr_log
    ) -> None:
        self.meters, self.pm, self.log = meters, pm, log
        self._laps: dict[int, list[EnergyReading]] | None = None
        self._failed: dict[int, str] = {}
        self._phase = ""
        self._t0 = 0.0

    def _stop(self, m: EnergyMeter, phase: str, t0: float) -> EnergyReading:
        try:
            return m.stop()
        except Exception as exc:
            self.log(
                f"energy: meter {m.name!r} failed during {phase}: {exc}; figure marked missing"
            )
            return EnergyReading(
                m.name, time.perf_counter() - t0, missing=f"{type(exc).__name__}: {exc}"
            )

    def lap(self) -> float:
        """Joules (all meters) since the phase start or the previous lap; NaN if any failed."""
        if self._laps is None:
            raise RuntimeError("EnergyTracker.lap() is only valid inside measure()")
        total = 0.0
        for m in self.meters:
            if id(m) in self._failed:
                total = math.nan
                continue
            reading = self._stop(m, self._phase, time.perf_counter())
            self._laps[id(m)].append(reading)
            total += reading.total_joules
            if reading.missing is not None:
                self._failed[id(m)] = reading.missing
                continue
            try:
                m.start()
            except Exception as exc:
                self._failed[id(m)] = f"failed to restart: {exc}"
                self.log(
                    f"energy: meter {m.name!r} failed to restart: {exc}; figure marked missing"
                )
        return total

    @property
    def running(self) -> bool:
        """True between :meth:`begin` and :meth:`end`."""
        return self._laps is not None

    def begin(self, phase: str) -> None:
        """Start every meter for ``phase`` (for hosts that do not own the loop: HF Trainer
        calls back; ``measure`` wraps a callable with ``begin``/``end``)."""
        if self._laps is not None:
            raise RuntimeError(f"energy phase {self._phase!r} is still running; end() it first")
        self._phase = phase
        self._failed = {}
        self._laps = {}
        for m in self.meters:
            self._laps[id(m)] = []
            try:
                m.start()
            except Exception as exc:
                self._failed[id(m)] = "failed to start"
                self.log(
                    f"energy: meter {m.name!r} failed to start for {phase}: {exc}; figure marked missing"
                )
        self._t0 = time.perf_counter()

    def _merged(self) -> dict[str, EnergyReading]:
        assert self._laps is not None  # callers check running
        seconds = time.perf_counter() - self._t0
        return {
            f"{self._phase}:{m.name}": _reduce_across_ranks(
                merge_readings(m.name, self._laps[id(m)], self._failed.get(id(m)), seconds)
            )
            for m in self.meters
        }

    def snapshot(self) -> dict[str, EnergyReading]:
        """The running phase's energy so far (a lap on every meter; the phase goes on)."""
        if self._laps is None:
            raise RuntimeError("EnergyTracker.snapshot() is only valid between begin() and end()")
        self.lap()
        return self._merged()

    def end(self) -> dict[str, EnergyReading]:
        """Stop every meter; the phase's readings (``{"<phase>:<meter>": reading}``), each
        also sent to ``fq_on_energy_reading``."""
        if self._laps is None:
            raise RuntimeError("EnergyTracker.end() without begin()")
        for m in self.meters:
            if id(m) not in self._failed:
                self._laps[id(m)].append(self._stop(m, self._phase, self._t0))
        readings = self._merged()
        self._laps = None
        for reading in readings.values():
            self.pm.on_energy_reading(self._phase, reading)
        return readings

    def abort(self) -> None:
        """Stop every meter without a reading (the phase failed); no meter is left running."""
        if self._laps is None:
            return
        for m in self.meters:  # leave no meter running (RAPL's sampling thread)
            if id(m) not in self._failed:
                with contextlib.suppress(Exception):
                    m.stop()
        self._laps = None

    def measure(self, phase: str, fn: Callable[[], Any]) -> tuple[Any, dict[str, EnergyReading]]:
        """Run ``fn`` as the phase ``phase``; returns its result and the phase's readings."""
        self.begin(phase)
        try:
            result = fn()
        except BaseException:
            self.abort()
            raise
        return result, self.end()


def merge_readings(
    meter: str, parts: Sequence[EnergyReading], failure: str | None, seconds: float
) -> EnergyReading:
    """One reading from a phase's laps: joules added per domain; missing if any lap was."""
    reason = failure or next((p.missing for p in parts if p.missing is not None), None)
    if reason is not None or not parts:
        return EnergyReading(meter, seconds, missing=reason or "no reading")
    if len(parts) == 1:
        return parts[0]
    joules: dict[str, float] = {}
    methods: dict[str, str] = {}
    for p in parts:
        for dom, j in p.joules.items():
            joules[dom] = joules.get(dom, 0.0) + j
            methods[dom] = p.methods.get(dom, "unknown")
    details = dict(parts[-1].details)
    details["laps"] = len(parts)
    return EnergyReading(meter, sum(p.seconds for p in parts), joules, methods, details=details)


def _reduce_across_ranks(reading: EnergyReading) -> EnergyReading:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from .ddp import reduce_reading_across_ranks

        return reduce_reading_across_ranks(reading)
    return reading


class EnergyPredictions:
    """Carbontracker-style prediction: after a training phase's first epoch, the phase's
    total energy ≈ first-epoch energy × epochs. Logged, and stored per phase."""

    def __init__(self, tracker: EnergyTracker, carbon: CarbonModel | None, log: Log) -> None:
        self.tracker, self.carbon, self.log = tracker, carbon, log
        self.by_phase: dict[str, dict[str, Any]] = {}

    def callback(self, phase: str, epochs: int) -> Callable[[int], None]:
        def after_epoch(epoch: int) -> None:
            if epoch != 0:
                return
            first = self.tracker.lap()
            predicted = first * epochs
            entry: dict[str, Any] = {
                "first_epoch_joules": first,
                "epochs": epochs,
                "predicted_joules": predicted,
                "rule": "first-epoch energy × epochs (carbontracker-style)",
            }
            msg = (
                f"[{phase}] predicted total energy for this phase: {predicted:.1f} J "
                f"(first epoch {first:.1f} J × {epochs} epoch{'s' if epochs != 1 else ''})"
            )
            if self.carbon is not None:
                entry["predicted_gco2e"] = self.carbon.grams(predicted)
                msg += f", ≈ {entry['predicted_gco2e']:.3g} gCO2e"
            self.by_phase[phase] = entry
            self.log(msg)

        return after_epoch

    def finish(self, phase: str, readings: dict[str, EnergyReading]) -> dict[str, Any]:
        """The phase's prediction with the measured total added (``{}`` if none was made)."""
        entry = self.by_phase.get(phase)
        if entry is None:
            return {}
        entry["actual_joules"] = float(sum(r.total_joules for r in readings.values()))
        return {phase: entry}
