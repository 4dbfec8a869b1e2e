"""PePR: performance per resource unit, over a set of runs compared together.

``PePR_R = P / (1 + R_n)`` with ``R_n = (R − min R) / (max R − min R)`` the resource
(energy, CO2, time or memory) min-max normalised over the runs compared, and ``P`` a
performance in [0, 1] (accuracy by default). ``R_n`` lies in [0, 1], so PePR lies in
[P/2, P]: the cheapest run keeps its full P, the most expensive keeps half. When every run
has the same R (or there is one run), ``R_n = 0`` and PePR = P.

Runs whose P or R is not a finite number (a missing energy figure) get NaN and are left
out of the min and max, so one missing figure does not change the others' PePR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import ConfigError

__all__ = ["normalize_resource", "pepr", "pepr_by_name"]


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def normalize_resource(resource: Sequence[float | None]) -> list[float]:
    """Min-max normalise over the finite entries; non-finite entries give NaN."""
    vals = [float(r) for r in resource if _finite(r)]  # type: ignore[arg-type]
    for r in vals:
        if r < 0:
            raise ConfigError(f"resource value {r!r} is negative; PePR needs amounts ≥ 0")
    if not vals:
        return [math.nan] * len(resource)
    lo, hi = min(vals), max(vals)
    span = hi - lo
    return [
        (0.0 if span == 0 else (float(r) - lo) / span) if _finite(r) else math.nan  # type: ignore[arg-type]
        for r in resource
    ]


def pepr(performance: Sequence[float | None], resource: Sequence[float | None]) -> list[float]:
    """``P / (1 + R_n)`` per run, runs in the same order in both sequences."""
    if len(performance) != len(resource):
        raise ConfigError(
            f"PePR needs one resource per run: {len(performance)} performances but "
            f"{len(resource)} resources"
        )
    rn = normalize_resource(resource)
    return [
        float(p) / (1.0 + r) if _finite(p) and math.isfinite(r) else math.nan  # type: ignore[arg-type]
        for p, r in zip(performance, rn, strict=True)
    ]


def pepr_by_name(
    performance: Mapping[str, float | None], resource: Mapping[str, float | None]
) -> dict[str, float]:
    """PePR keyed by run name (the names of ``performance``)."""
    names = list(performance)
    values = pepr([performance[n] for n in names], [resource.get(n) for n in names])
    return dict(zip(names, values, strict=True))
