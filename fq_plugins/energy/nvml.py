"""NVIDIA GPU energy from NVML's total-energy counter (``measured:nvml``).

``nvmlDeviceGetTotalEnergyConsumption`` returns millijoules since the driver was loaded
(Volta and newer). The meter reads it at ``start`` and ``stop`` per device; domains are
``gpu:<NVML index>``. Needs the optional ``nvidia-ml-py`` package (imported as ``pynvml``):
``pip install 'fq-plugins[energy]'``.

Which devices: the ``devices`` argument (NVML indices), else — under torchrun
(``LOCAL_RANK`` set) — only the local rank's GPU, so every GPU is read by exactly one rank;
else every GPU. ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-…`` UUIDs) maps the local rank to
the NVML device, since NVML ignores that variable.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field, field_validator

from .._markers import hookimpl
from ..errors import ConfigError, MissingDependencyError
from ..hookspecs import RegisterFn
from ..protocols import Availability, EnergyMeter, EnergyReading, MeterConfig

__all__ = ["NvmlConfig", "NvmlMeter"]

METHOD = "measured:nvml"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class NvmlConfig(MeterConfig):
    """Options of the ``nvml`` meter."""

    devices: list[int] | None = Field(
        None,
        description="NVML device indices to read (≥ 0, at least one); default: the local "
        "rank's GPU under torchrun, else every GPU.",
    )

    @field_validator("devices", mode="before")
    @classmethod
    def _indices(cls, v: Any) -> Any:
        if v is None:
            return v
        ok = (
            isinstance(v, list | tuple)
            and v
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)
        )
        if not ok:
            raise ValueError(
                "nvml devices must be a non-empty list of NVML indices ≥ 0 (as `nvidia-smi -L` "
                "numbers them), e.g. [0, 1]"
            )
        return list(v)


class NvmlMeter(EnergyMeter):
    """GPU energy from NVML total-energy counters (measured).

    :param devices: NVML device indices to read; default: the local rank's GPU under
        torchrun, else all GPUs.
    :param nvml: an object with pynvml's API (tests inject a fake); default ``import pynvml``.
        Not a recipe option.
    """

    name: ClassVar[str] = "nvml"
    description: ClassVar[str] = (
        "NVIDIA GPU energy from NVML total-energy counters (measured; needs nvidia-ml-py)."
    )
    measured: ClassVar[bool] = True
    Config: ClassVar[type[MeterConfig]] = NvmlConfig
    config: NvmlConfig

    def __init__(self, devices: Sequence[int] | None = None, *, nvml: Any = None) -> None:
        super().__init__(self.make_config(devices=None if devices is None else list(devices)))
        self.devices = self.config.devices
        self._nvml = nvml
        self._handles: dict[int, Any] = {}
        self._e0: dict[int, int] = {}
        self._t0: float | None = None

    def _lib(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError:
                raise MissingDependencyError(
                    "nvidia-ml-py", "energy", "The nvml energy meter"
                ) from None
        return self._nvml

    def _select(self, lib: Any) -> list[int]:
        count = int(lib.nvmlDeviceGetCount())
        if self.devices is not None:
            out = self.devices
        elif "LOCAL_RANK" in os.environ:
            out = [self._local_device(lib, int(os.environ["LOCAL_RANK"]))]
        else:
            out = list(range(count))
        bad = [d for d in out if d >= count]
        if bad:
            raise ConfigError(f"NVML devices {bad} do not exist; this host has {count} GPU(s)")
        return out

    @staticmethod
    def _local_device(lib: Any, local_rank: int) -> int:
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        visible = [v for v in visible if v]
        if not visible:
            return local_rank
        if local_rank >= len(visible):
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but CUDA_VISIBLE_DEVICES lists only {len(visible)} GPU(s)"
            )
        v = visible[local_rank]
        if v.isdigit():
            return int(v)
        handle = lib.nvmlDeviceGetHandleByUUID(v)
        return int(lib.nvmlDeviceGetIndex(handle))

    def probe(self) -> Availability:
        try:
            lib = self._lib()
        except MissingDependencyError as exc:
            return Availability("missing", str(exc))
        try:
            lib.nvmlInit()
        except Exception as exc:
            return Availability(
                "missing",
                f"NVML cannot start (no NVIDIA driver or GPU here): {_text(exc) or type(exc).__name__}",
            )
        try:
            devices = self._select(lib)
            if not devices:
                return Availability("missing", "NVML found no GPU")
            names = []
            for i in devices:
                h = lib.nvmlDeviceGetHandleByIndex(i)
                name = _text(lib.nvmlDeviceGetName(h))
                try:
                    lib.nvmlDeviceGetTotalEnergyConsumption(h)
                except Exception as exc:
                    return Availability(
                        "error",
                        f"GPU {i} ({name}) has no total-energy counter (NVML needs Volta or "
                        f"newer): {_text(exc) or type(exc).__name__}",
                    )
                names.append(f"gpu:{i} {name}")
            return Availability("ok", "NVML: " + ", ".join(names))
        except ConfigError as exc:
            return Availability("error", str(exc))
        finally:
            with contextlib.suppress(Exception):
                lib.nvmlShutdown()

    def _read(self, lib: Any) -> dict[int, int]:
        return {
            i: int(lib.nvmlDeviceGetTotalEnergyConsumption(h)) for i, h in self._handles.items()
        }

    def start(self) -> None:
        lib = self._lib()
        lib.nvmlInit()
        self._handles = {i: lib.nvmlDeviceGetHandleByIndex(i) for i in self._select(lib)}
        self._e0 = self._read(lib)
        self._t0 = time.perf_counter()

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise RuntimeError("NvmlMeter.stop() called before start()")
        lib = self._lib()
        seconds = time.perf_counter() - self._t0
        self._t0 = None
        try:
            e1 = self._read(lib)
            devices = {}
            for i, h in self._handles.items():
                try:
                    devices[f"gpu:{i}"] = _text(lib.nvmlDeviceGetUUID(h))
                except Exception:
                    devices[f"gpu:{i}"] = f"nvml-index-{i}"
        finally:
            with contextlib.suppress(Exception):
                lib.nvmlShutdown()
        joules = {}
        for i, end in e1.items():
            if end < self._e0[i]:
                raise RuntimeError(
                    f"NVML energy counter of GPU {i} went backwards ({self._e0[i]} → {end} mJ): "
                    "the driver was reloaded during the phase"
                )
            joules[f"gpu:{i}"] = (end - self._e0[i]) / 1000.0
        return EnergyReading(
            self.name,
            seconds,
            joules=joules,
            methods={k: METHOD for k in joules},
            details={"devices": devices},
        )


@hookimpl
def fq_register_energy_meters(register: RegisterFn) -> None:
    register(NvmlMeter)
