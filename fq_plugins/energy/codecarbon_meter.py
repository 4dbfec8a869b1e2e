"""An optional meter that runs codecarbon's ``OfflineEmissionsTracker`` — always with a country.

codecarbon is not a dependency of fq-plugins (``pip install codecarbon``); it is imported
when the meter starts. Offline, without a country, codecarbon silently falls back to a
carbon intensity ~120× too low, so this meter refuses to run without one: pass
``country=`` (ISO alpha-3), or set the recipe's ``energy.carbon.country`` (``fq-plugins run``
hands it over), or ``$FQ_CARBON_COUNTRY``.

codecarbon itself chooses between RAPL, NVML and a TDP/RAM-size model and does not say
which per figure, so every domain is labelled ``estimated:codecarbon``. Domains:
``cpu:codecarbon``, ``gpu:codecarbon``, ``ram:codecarbon`` (its kWh × 3.6e6 J). Its own
emissions figure (kg) is kept in ``details["codecarbon_emissions_kg"]``.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from typing import Any, ClassVar

from pydantic import Field, field_validator

from .._markers import hookimpl
from ..errors import ConfigError
from ..hookspecs import RegisterFn
from ..protocols import Availability, EnergyMeter, EnergyReading, MeterConfig

__all__ = ["CodecarbonConfig", "CodecarbonMeter"]

METHOD = "estimated:codecarbon"
INSTALL = "pip install codecarbon"


class CodecarbonConfig(MeterConfig):
    """Options of the ``codecarbon`` meter."""

    country: str | None = Field(
        None,
        description="ISO 3166-1 alpha-3 code (DNK); default: the recipe's energy.carbon.country, "
        "else $FQ_CARBON_COUNTRY.",
    )
    measure_power_secs: float = Field(15.0, gt=0, description="codecarbon's sampling period (s).")

    @field_validator("country")
    @classmethod
    def _alpha3(cls, v: str | None) -> str | None:
        if v is None:
            return v
        code = v.strip().upper()
        if not re.fullmatch(r"[A-Z]{3}", code):
            raise ValueError("codecarbon needs an ISO 3166-1 alpha-3 country code such as 'DNK'")
        return code


class CodecarbonMeter(EnergyMeter):
    """Energy from codecarbon's OfflineEmissionsTracker, with an explicit country.

    :param country: ISO 3166-1 alpha-3 code passed as ``country_iso_code`` (required;
        default ``$FQ_CARBON_COUNTRY``).
    :param measure_power_secs: codecarbon's sampling period (s).
    """

    name: ClassVar[str] = "codecarbon"
    description: ClassVar[str] = (
        "codecarbon OfflineEmissionsTracker with an explicit country (optional: pip install codecarbon)."
    )
    measured: ClassVar[bool] = False  # codecarbon may estimate; `auto` never picks it
    Config: ClassVar[type[MeterConfig]] = CodecarbonConfig
    config: CodecarbonConfig

    def __init__(self, country: str | None = None, *, measure_power_secs: float = 15.0) -> None:
        country = country if country is not None else os.environ.get("FQ_CARBON_COUNTRY")
        super().__init__(self.make_config(country=country, measure_power_secs=measure_power_secs))
        self.country = self.config.country
        self.measure_power_secs = self.config.measure_power_secs
        self._tracker: Any = None
        self._t0: float | None = None

    @staticmethod
    def _module() -> Any:
        return importlib.import_module("codecarbon")

    def probe(self) -> Availability:
        try:
            self._module()
        except ImportError:
            return Availability(
                "missing",
                f"the codecarbon meter needs codecarbon, which is not installed: {INSTALL}",
            )
        if self.country is None:
            return Availability(
                "error",
                "codecarbon needs a country (offline it otherwise falls back to a value ~120× "
                "too low): set energy.carbon.country (e.g. DNK) or FQ_CARBON_COUNTRY",
            )
        return Availability("ok", f"codecarbon OfflineEmissionsTracker, country {self.country}")

    def start(self) -> None:
        avail = self.probe()
        if not avail.ok:
            raise ConfigError(avail.reason)
        cc = self._module()
        self._tracker = cc.OfflineEmissionsTracker(
            country_iso_code=self.country,
            measure_power_secs=self.measure_power_secs,
            save_to_file=False,
            log_level="error",
        )
        self._t0 = time.perf_counter()
        self._tracker.start()

    def stop(self) -> EnergyReading:
        if self._tracker is None or self._t0 is None:
            raise RuntimeError("CodecarbonMeter.stop() called before start()")
        tracker, self._tracker = self._tracker, None
        emissions_kg = tracker.stop()
        seconds = time.perf_counter() - self._t0
        self._t0 = None
        data = getattr(tracker, "final_emissions_data", None)
        if data is None:  # codecarbon logs its own errors and returns nothing
            raise RuntimeError("codecarbon produced no emissions data (see its log)")
        parts = {
            "cpu:codecarbon": getattr(data, "cpu_energy", None),
            "gpu:codecarbon": getattr(data, "gpu_energy", None),
            "ram:codecarbon": getattr(data, "ram_energy", None),
        }
        if all(v is None for v in parts.values()):
            parts = {"all:codecarbon": data.energy_consumed}
        joules = {k: float(v) * 3.6e6 for k, v in parts.items() if v is not None}
        return EnergyReading(
            self.name,
            seconds,
            joules=joules,
            methods={k: METHOD for k in joules},
            details={
                "country": self.country,
                "codecarbon_emissions_kg": None if emissions_kg is None else float(emissions_kg),
                "codecarbon_energy_kwh": float(getattr(data, "energy_consumed", float("nan"))),
            },
        )


@hookimpl
def fq_register_energy_meters(register: RegisterFn) -> None:
    register(CodecarbonMeter)
