"""CO2ST: an a-priori estimate of the energy and CO2 of generative-AI usage.

From METHODS.md ("Energy, carbon, PePR, CO2ST"):

* energy ``E = N_eff · E_p`` (Wh), with ``E_p`` the per-unit energy of the task
  (:data:`WH_PER_UNIT`) and ``N_eff = N + 0.1 · N_in``: ``N`` output units plus input
  tokens weighted 0.1 (:data:`INPUT_TOKEN_WEIGHT`);
* emissions ``C = CI · E`` with ``CI`` in kgCO2e/kWh, default 0.481
  (:data:`DEFAULT_INTENSITY_KG_PER_KWH`);
* equivalents: km driven = 4 · kg, flight minutes = 0.24 · kg.

**What a unit is.** Input is counted in tokens and weighted against units, so a unit is a
token too: one *output token* of the task's model — text tokens for text-to-text and
image-to-text, the generator's output tokens for text-to-image / -audio / -video. CO2ST
gives no tokens-per-image or tokens-per-second conversion, and fq-plugins does not invent
one: count (or estimate) your generator's output tokens.

Nothing is measured: every figure is labelled ``estimated:co2st``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from ..errors import ConfigError

__all__ = [
    "DEFAULT_INTENSITY_KG_PER_KWH",
    "FLIGHT_MINUTES_PER_KG",
    "INPUT_TOKEN_WEIGHT",
    "KM_PER_KG",
    "WH_PER_UNIT",
    "Co2stEstimate",
    "co2st_estimate",
]

WH_PER_UNIT: dict[str, float] = {
    "text-to-text": 4.68515e-4,
    "text-to-image": 1.30097e-3,
    "image-to-text": 3.42265e-4,
    "text-to-audio": 1.141833e-3,
    "text-to-video": 2.174218e-3,
}
"""Wh per output token, by task (CO2ST, as given in METHODS.md)."""

INPUT_TOKEN_WEIGHT = 0.1
DEFAULT_INTENSITY_KG_PER_KWH = 0.481
KM_PER_KG = 4.0
FLIGHT_MINUTES_PER_KG = 0.24
METHOD = "estimated:co2st"


@dataclasses.dataclass(frozen=True)
class Co2stEstimate:
    """One CO2ST estimate: inputs, energy (Wh, kWh), emissions (kg, g) and equivalents."""

    task: str
    units: float
    input_tokens: float
    wh_per_unit: float
    effective_units: float
    wh: float
    kwh: float
    intensity_kg_per_kwh: float
    intensity_source: str
    kg_co2e: float
    g_co2e: float
    km_driven: float
    flight_minutes: float
    method: str = METHOD

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """Human-readable lines for the command line."""
        return "\n".join(
            [
                f"CO2ST a-priori estimate ({self.method}), task {self.task}",
                f"  output tokens (units)   {self.units:g}",
                f"  input tokens            {self.input_tokens:g}  (weighted {INPUT_TOKEN_WEIGHT:g})",
                f"  energy per unit         {self.wh_per_unit:.6g} Wh",
                f"  energy                  {self.wh:.6g} Wh = {self.kwh:.6g} kWh",
                f"  intensity               {self.intensity_kg_per_kwh:.6g} kgCO2e/kWh ({self.intensity_source})",
                f"  emissions               {self.kg_co2e:.6g} kgCO2e = {self.g_co2e:.6g} g",
                f"  equivalent to           {self.km_driven:.6g} km driven, "
                f"{self.flight_minutes:.6g} flight minutes",
            ]
        )


def _count(value: float, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{what} must be a finite number ≥ 0; got {value!r}")
    return float(value)


def co2st_estimate(
    task: str,
    units: float,
    *,
    input_tokens: float = 0,
    intensity_kg_per_kwh: float | None = None,
    country: str | None = None,
) -> Co2stEstimate:
    """Energy and CO2 of ``units`` output tokens (plus ``input_tokens``) of a task.

    :param task: one of :data:`WH_PER_UNIT` (``text-to-text`` …).
    :param units: output tokens, ≥ 0.
    :param input_tokens: prompt tokens, ≥ 0, weighted 0.1.
    :param intensity_kg_per_kwh: grid intensity; default 0.481 (CO2ST), or from ``country``.
    :param country: ISO code looked up in the bundled table (:mod:`.carbon`); not with
        ``intensity_kg_per_kwh``.
    """
    if task not in WH_PER_UNIT:
        hits = difflib.get_close_matches(str(task), list(WH_PER_UNIT), n=2, cutoff=0.5)
        raise ConfigError(
            f"unknown CO2ST task {task!r}; allowed: {', '.join(WH_PER_UNIT)}."
            + (f" Did you mean {' or '.join(repr(h) for h in hits)}?" if hits else "")
        )
    n = _count(units, "units (output tokens)")
    n_in = _count(input_tokens, "input tokens")
    if intensity_kg_per_kwh is not None and country is not None:
        raise ConfigError(
            "give either an intensity (kgCO2e/kWh) or a country, not both", key="--intensity"
        )
    if country is not None:
        from .carbon import TABLE_YEAR, lookup_country

        row = lookup_country(country, key="--country")
        ci = row.g_per_kwh / 1000.0
        source = f"{row.name} {TABLE_YEAR}, bundled table"
    elif intensity_kg_per_kwh is not None:
        ci = _count(intensity_kg_per_kwh, "intensity (kgCO2e/kWh)")
        source = "given"
    else:
        ci = DEFAULT_INTENSITY_KG_PER_KWH
        source = "CO2ST default"
    e_p = WH_PER_UNIT[task]
    eff = n + INPUT_TOKEN_WEIGHT * n_in
    wh = eff * e_p
    kwh = wh / 1000.0
    kg = ci * kwh
    return Co2stEstimate(
        task=task,
        units=n,
        input_tokens=n_in,
        wh_per_unit=e_p,
        effective_units=eff,
        wh=wh,
        kwh=kwh,
        intensity_kg_per_kwh=ci,
        intensity_source=source,
        kg_co2e=kg,
        g_co2e=kg * 1000.0,
        km_driven=KM_PER_KG * kg,
        flight_minutes=FLIGHT_MINUTES_PER_KG * kg,
    )
