"""The always-available energy estimate: process CPU time × power per busy logical CPU.

It is an estimate and every figure says so: the method label is
``estimated:cpu-time-tdp`` when the CPU model matched the table below (power = TDP /
logical CPUs of one package) and ``estimated:cpu-time-default`` otherwise (an explicit
default of :data:`DEFAULT_WATTS_PER_CPU` W per busy logical CPU). It counts only this
process (and its waited-for children), not the rest of the machine.
"""

from __future__ import annotations

import os
import resource
import time
from typing import ClassVar

from pydantic import Field

from .._markers import hookimpl
from ..hookspecs import RegisterFn
from ..protocols import Availability, EnergyMeter, EnergyReading, MeterConfig

__all__ = [
    "DEFAULT_WATTS_PER_CPU",
    "TDP_TABLE",
    "CpuTimeConfig",
    "CpuTimeMeter",
    "cpu_model_name",
    "watts_per_cpu",
]

DEFAULT_WATTS_PER_CPU = 4.0
"""Fallback W per busy logical CPU (≈ a 205 W, 56-thread server part or a 65 W, 16-thread desktop part)."""

TDP_TABLE: tuple[tuple[str, float, int], ...] = (
    # (substring of /proc/cpuinfo "model name", package TDP in W, logical CPUs per package)
    ("EPYC 7763", 280.0, 128),
    ("EPYC 9654", 360.0, 192),
    ("Xeon(R) Platinum 8380", 270.0, 80),
    ("Xeon(R) Platinum 8480", 350.0, 112),
    ("Xeon(R) Gold 6248", 150.0, 40),
    ("Core(TM) i9-13900K", 125.0, 32),
    ("Core(TM) i7-1165G7", 28.0, 8),
    ("Ryzen 9 7950X", 170.0, 32),
    ("Apple M2", 20.0, 8),
)
"""Vendor TDPs (manufacturer spec sheets). Power per busy logical CPU = TDP / logical CPUs."""


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def watts_per_cpu(model_name: str | None = None) -> tuple[float, str, str]:
    """``(watts per busy logical CPU, method label, source)`` for a CPU model name."""
    model_name = model_name if model_name is not None else cpu_model_name()
    for needle, tdp, threads in TDP_TABLE:
        if needle.lower() in model_name.lower():
            return (
                tdp / threads,
                "estimated:cpu-time-tdp",
                f"TDP {tdp:g} W / {threads} CPUs ({needle})",
            )
    return (
        DEFAULT_WATTS_PER_CPU,
        "estimated:cpu-time-default",
        f"CPU {model_name!r} not in the TDP table; default {DEFAULT_WATTS_PER_CPU:g} W per busy CPU",
    )


def _cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class CpuTimeConfig(MeterConfig):
    """Options of the ``cpu_time`` meter."""

    watts_per_cpu: float | None = Field(
        None,
        gt=0,
        description="W per busy logical CPU; default: TDP / logical CPUs from the TDP table, "
        f"else {DEFAULT_WATTS_PER_CPU:g} W.",
    )


class CpuTimeMeter(EnergyMeter):
    """Estimate: process CPU seconds × W per busy logical CPU (labelled ``estimated:``).

    :param watts_per_cpu: power per busy logical CPU (W), labelled
        ``estimated:cpu-time-user-power``; default: the TDP table, else the default power.
    """

    name: ClassVar[str] = "cpu_time"
    description: ClassVar[str] = (
        "Estimate from process CPU time × TDP per logical CPU (always available; labelled estimated)."
    )
    measured: ClassVar[bool] = False
    Config: ClassVar[type[MeterConfig]] = CpuTimeConfig
    config: CpuTimeConfig

    def __init__(self, watts_per_cpu: float | None = None) -> None:
        super().__init__(self.make_config(watts_per_cpu=watts_per_cpu))
        watts_per_cpu = self.config.watts_per_cpu
        if watts_per_cpu is not None:
            self.watts, self.label, self.source = (
                watts_per_cpu,
                "estimated:cpu-time-user-power",
                "given",
            )
        else:
            self.watts, self.label, self.source = watts_per_cpu_default()
        self._t0: tuple[float, float] | None = None

    def probe(self) -> Availability:
        return Availability("ok", f"{self.source}; process CPU time only")

    def start(self) -> None:
        self._t0 = (time.perf_counter(), _cpu_seconds())

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise RuntimeError("CpuTimeMeter.stop() called before start()")
        wall0, cpu0 = self._t0
        self._t0 = None
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds() - cpu0
        return EnergyReading(
            meter=self.name,
            seconds=wall,
            joules={"cpu:process": cpu * self.watts},
            methods={"cpu:process": self.label},
            details={
                "cpu_seconds": cpu,
                "watts_per_cpu": self.watts,
                "source": self.source,
                "logical_cpus": os.cpu_count(),
            },
        )


def watts_per_cpu_default() -> tuple[float, str, str]:
    return watts_per_cpu(None)


@hookimpl
def fq_register_energy_meters(register: RegisterFn) -> None:
    register(CpuTimeMeter)
