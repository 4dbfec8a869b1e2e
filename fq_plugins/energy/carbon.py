"""The carbon model: joules → kWh → × PUE → × grid intensity. Pure; never geolocates.

``kWh = J / 3.6e6``; ``kWh_facility = kWh × PUE``; ``gCO2e = kWh_facility × intensity``.

The intensity comes from exactly one of:

* an explicit **country** code (ISO 3166-1 alpha-3 such as ``DNK``, or alpha-2 such as
  ``DK``) looked up in the bundled table :data:`COUNTRY_INTENSITY`;
* an explicit number ``intensity_g_per_kwh``;
* ``world_average=True``: :data:`WORLD_AVERAGE_G_PER_KWH` (IEA), labelled
  ``estimated:world-average``.

With none of them, :meth:`CarbonModel.from_spec` returns ``None``: report energy only.

**The bundled table** (:data:`TABLE_SOURCE`, year :data:`TABLE_YEAR`): lifecycle carbon
intensity of electricity *generation* (gCO2e/kWh, rounded to whole grams) by country, from
Ember and the Energy Institute as published by Our World in Data ("Carbon intensity of
electricity generation", grapher table, values for 2023). Generation intensity ignores
imports and hourly variation; pass ``intensity_g_per_kwh`` when you know your supplier's or
your region's figure.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from ..errors import ConfigError

__all__ = [
    "COUNTRY_INTENSITY",
    "DEFAULT_PUE",
    "JOULES_PER_KWH",
    "TABLE_SOURCE",
    "TABLE_YEAR",
    "WORLD_AVERAGE_G_PER_KWH",
    "CarbonEstimate",
    "CarbonModel",
    "Country",
    "joules_to_kwh",
    "lookup_country",
]

JOULES_PER_KWH = 3.6e6
DEFAULT_PUE = 1.0
"""PUE default (the machine's own energy only). 1.58 is the commonly cited data-centre
average (Uptime Institute survey); pass it when the job ran in a typical data centre."""

WORLD_AVERAGE_G_PER_KWH = 475.0
WORLD_AVERAGE_SOURCE = (
    "IEA global average carbon intensity of electricity, 475 gCO2/kWh (IEA Global Energy & "
    "CO2 Status Report 2019, for 2018); an estimate, not your grid"
)

TABLE_YEAR = 2023
TABLE_SOURCE = (
    "Ember and Energy Institute via Our World in Data, 'Carbon intensity of electricity "
    "generation' (lifecycle gCO2e/kWh), 2023 values, rounded; "
    "https://ourworldindata.org/grapher/carbon-intensity-electricity"
)


@dataclasses.dataclass(frozen=True)
class Country:
    """One row of the bundled table."""

    iso3: str
    iso2: str
    name: str
    g_per_kwh: float


_ROWS: tuple[tuple[str, str, str, float], ...] = (
    # (ISO alpha-3, ISO alpha-2, name, gCO2e/kWh in 2023)
    ("ARG", "AR", "Argentina", 354),
    ("AUS", "AU", "Australia", 549),
    ("AUT", "AT", "Austria", 111),
    ("BGD", "BD", "Bangladesh", 691),
    ("BEL", "BE", "Belgium", 138),
    ("BOL", "BO", "Bolivia", 532),
    ("BIH", "BA", "Bosnia and Herzegovina", 600),
    ("BRA", "BR", "Brazil", 98),
    ("BGR", "BG", "Bulgaria", 335),
    ("CAN", "CA", "Canada", 170),
    ("CHL", "CL", "Chile", 291),
    ("CHN", "CN", "China", 582),
    ("COL", "CO", "Colombia", 260),
    ("CRI", "CR", "Costa Rica", 53),
    ("HRV", "HR", "Croatia", 205),
    ("CYP", "CY", "Cyprus", 534),
    ("CZE", "CZ", "Czechia", 450),
    ("DNK", "DK", "Denmark", 152),
    ("ECU", "EC", "Ecuador", 150),
    ("EGY", "EG", "Egypt", 570),
    ("SLV", "SV", "El Salvador", 271),
    ("EST", "EE", "Estonia", 417),
    ("FIN", "FI", "Finland", 79),
    ("FRA", "FR", "France", 56),
    ("GEO", "GE", "Georgia", 168),
    ("DEU", "DE", "Germany", 381),
    ("GRC", "GR", "Greece", 337),
    ("HUN", "HU", "Hungary", 204),
    ("IND", "IN", "India", 713),
    ("IRN", "IR", "Iran", 655),
    ("IRL", "IE", "Ireland", 291),
    # ITA, JPN, NLD, ESP, GBR, USA: recalled from the same OWID 2023 series, not re-read
    # from the page when this table was bundled; check them against the source.
    ("ITA", "IT", "Italy", 331),
    ("JPN", "JP", "Japan", 485),
    ("NLD", "NL", "Netherlands", 268),
    ("NOR", "NO", "Norway", 30),
    ("POL", "PL", "Poland", 662),
    ("ESP", "ES", "Spain", 174),
    ("SWE", "SE", "Sweden", 41),
    ("GBR", "GB", "United Kingdom", 238),
    ("USA", "US", "United States", 369),
)

COUNTRY_INTENSITY: dict[str, Country] = {
    r[0]: Country(r[0], r[1], r[2], float(r[3])) for r in _ROWS
}
"""ISO alpha-3 → :class:`Country` (gCO2e/kWh, :data:`TABLE_SOURCE`, :data:`TABLE_YEAR`)."""

_BY_ISO2 = {c.iso2: c for c in COUNTRY_INTENSITY.values()}
_BY_NAME = {c.name.lower(): c for c in COUNTRY_INTENSITY.values()}


def joules_to_kwh(joules: float) -> float:
    """J → kWh (``J / 3.6e6``)."""
    return joules / JOULES_PER_KWH


def lookup_country(code: str, *, key: str | None = "energy.carbon.country") -> Country:
    """The table row for an ISO alpha-3 or alpha-2 code (case-insensitive).

    Unknown codes raise :class:`ConfigError` listing close matches (codes and names).
    """
    c = str(code).strip()
    up = c.upper()
    if up in COUNTRY_INTENSITY:
        return COUNTRY_INTENSITY[up]
    if up in _BY_ISO2:
        return _BY_ISO2[up]
    found: list[Country] = []
    exact = _BY_NAME.get(c.lower())
    if exact is not None:
        found.append(exact)
    for hit in difflib.get_close_matches(up, [*COUNTRY_INTENSITY, *_BY_ISO2], n=3, cutoff=0.6):
        found.append(COUNTRY_INTENSITY.get(hit) or _BY_ISO2[hit])
    for hit in difflib.get_close_matches(c.lower(), list(_BY_NAME), n=3, cutoff=0.6):
        found.append(_BY_NAME[hit])
    unique = list(dict.fromkeys(found))
    hint = " or ".join(f"{f.iso3!r} ({f.name})" for f in unique)
    raise ConfigError(
        f"unknown country code {code!r}: the bundled carbon-intensity table ({TABLE_YEAR}) "
        f"has {', '.join(sorted(COUNTRY_INTENSITY))}."
        + (f" Did you mean {hint}?" if hint else "")
        + " Give an ISO alpha-3 code from that list, or set `intensity_g_per_kwh` to your "
        "grid's figure.",
        key=key,
    )


def check_pue(pue: float, *, key: str | None = "energy.carbon.pue") -> float:
    """PUE = facility energy / IT energy, so it is ≥ 1; anything else is a ConfigError."""
    if not (isinstance(pue, int | float) and math.isfinite(pue) and pue >= 1.0):
        raise ConfigError(
            f"PUE {pue!r} is not allowed: power usage effectiveness is facility energy / IT "
            "energy, a number ≥ 1 (1.0 = count the machine only; 1.58 = typical data centre).",
            key=key,
        )
    return float(pue)


def check_intensity(
    value: float, *, key: str | None = "energy.carbon.intensity_g_per_kwh"
) -> float:
    """A grid intensity must be a finite number ≥ 0 (gCO2e/kWh)."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(
            f"carbon intensity {value!r} g/kWh is not allowed: give a finite number ≥ 0 in "
            "gCO2e per kWh (e.g. 152 for Denmark in 2023), or a `country` code instead.",
            key=key,
        )
    return float(value)


@dataclasses.dataclass(frozen=True)
class CarbonEstimate:
    """Carbon of one energy figure: inputs, result and how the intensity was obtained."""

    joules: float
    kwh: float
    pue: float
    intensity_g_per_kwh: float
    grams: float
    method: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        from ..protocols import _json_safe

        out: dict[str, Any] = _json_safe(dataclasses.asdict(self))
        return out


@dataclasses.dataclass(frozen=True)
class CarbonModel:
    """Turns joules into gCO2e: ``J / 3.6e6 × pue × intensity_g_per_kwh``.

    ``method`` says where the intensity came from: ``country:DNK``, ``given`` or
    ``estimated:world-average``.
    """

    intensity_g_per_kwh: float
    pue: float = DEFAULT_PUE
    method: str = "given"
    source: str = "given by the user"
    country: str | None = None

    def __post_init__(self) -> None:
        check_pue(self.pue, key=None)
        check_intensity(self.intensity_g_per_kwh, key=None)

    @classmethod
    def from_spec(
        cls,
        *,
        country: str | None = None,
        intensity_g_per_kwh: float | None = None,
        pue: float = DEFAULT_PUE,
        world_average: bool = False,
    ) -> CarbonModel | None:
        """Build from the recipe's ``energy.carbon`` keys; ``None`` means energy only."""
        pue = check_pue(pue)
        given = [
            n
            for n, v in (("country", country), ("intensity_g_per_kwh", intensity_g_per_kwh))
            if v is not None
        ]
        if world_average:
            given.append("world_average")
        if len(given) > 1:
            raise ConfigError(
                f"give one source of carbon intensity, not {' and '.join(given)}: either "
                "`country`, or `intensity_g_per_kwh`, or `world_average: true`",
                key="energy.carbon",
            )
        if country is not None:
            row = lookup_country(country)
            return cls(
                row.g_per_kwh,
                pue,
                f"country:{row.iso3}",
                f"{row.name}: {TABLE_SOURCE}",
                row.iso3,
            )
        if intensity_g_per_kwh is not None:
            return cls(check_intensity(intensity_g_per_kwh), pue, "given", "given by the user")
        if world_average:
            return cls(
                WORLD_AVERAGE_G_PER_KWH, pue, "estimated:world-average", WORLD_AVERAGE_SOURCE
            )
        return None

    def grams(self, joules: float) -> float:
        """gCO2e for ``joules`` of IT energy (NaN in, NaN out)."""
        return joules_to_kwh(joules) * self.pue * self.intensity_g_per_kwh

    def estimate(self, joules: float) -> CarbonEstimate:
        if math.isfinite(joules) and joules < 0:
            raise ConfigError(f"energy {joules!r} J is negative; a meter reading must be ≥ 0")
        return CarbonEstimate(
            joules=joules,
            kwh=joules_to_kwh(joules),
            pue=self.pue,
            intensity_g_per_kwh=self.intensity_g_per_kwh,
            grams=self.grams(joules),
            method=self.method,
            source=self.source,
        )
