"""Budgeted bit allocation (FairQuant step 4).

Two budgets:

* **levels** — fractions of units (channels) per bit level, e.g. ``{2: 0.2, 4: 0.4, 8: 0.4}``:
  global quantiles of the unit scores across the whole model, least important → fewest bits.
* **avg_bits** — a target *parameter-weighted* average over all Conv/Linear weights
  (untargeted weights count as 32 bits, as in :mod:`fq_plugins.accounting`), solved exactly
  as a multiple-choice knapsack with ``scipy.optimize.milp`` (HiGHS): choose one bit-width
  ``b`` per unit ``u`` minimising the importance-weighted quantization error
  ``Σ_u s_u · n_u · 4^(−b_u)`` subject to ``Σ_u n_u · b_u + 32 · N_untargeted ≤ avg_bits · N``.
  ``4^(−b)`` is the relative quantization-noise power of a ``b``-bit uniform grid; GRAPE's
  ``(g·w)²`` times it is the first-order loss change of that noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from ...accounting import UNQUANTIZED_BITS
from ...errors import ConfigError

__all__ = ["Allocation", "allocate_bits", "check_levels"]


@dataclasses.dataclass
class Allocation:
    """Bits per unit for each module, and the averages they give.

    ``avg_bits_param`` counts every Conv/Linear weight given to :func:`allocate_bits`
    (untargeted ones as 32 bits); ``avg_bits_channel`` is the mean over targeted units.
    """

    bits: dict[str, torch.Tensor]
    avg_bits_param: float
    avg_bits_channel: float
    objective: float
    method: str


def check_levels(levels: Sequence[int], fractions: Sequence[float] | None = None) -> None:
    """Bit levels in 1–16, distinct; fractions ≥ 0 summing to 1 (same length)."""
    if not levels:
        raise ConfigError("give at least one bit level")
    bad = [b for b in levels if not (isinstance(b, int) and 1 <= b <= 16)]
    if bad:
        raise ConfigError(f"bit levels must be integers in 1–16; got {bad}")
    if len(set(levels)) != len(levels):
        raise ConfigError(f"bit levels must be distinct; got {list(levels)}")
    if fractions is not None:
        if len(fractions) != len(levels):
            raise ConfigError(f"{len(levels)} levels but {len(fractions)} fractions")
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"fractions must be ≥ 0 and sum to 1; got {list(fractions)} (sum {sum(fractions):.6g})"
            )


def _flatten(scores: Mapping[str, torch.Tensor], unit_params: Mapping[str, int]):
    names = list(scores)
    s = np.concatenate([scores[n].detach().double().cpu().numpy().ravel() for n in names])
    sizes = [scores[n].numel() for n in names]
    n = np.concatenate(
        [np.full(k, float(unit_params[name])) for name, k in zip(names, sizes, strict=True)]
    )
    return names, sizes, s, n


def _unflatten(names: list[str], sizes: list[int], flat: np.ndarray) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, k in zip(names, sizes, strict=True):
        out[name] = torch.tensor(flat[i : i + k], dtype=torch.float32)
        i += k
    return out


def allocate_bits(
    scores: Mapping[str, torch.Tensor],
    unit_params: Mapping[str, int],
    *,
    levels: Sequence[int] = (2, 4, 8),
    fractions: Sequence[float] | None = None,
    avg_bits: float | None = None,
    untargeted_params: int = 0,
    max_bits: Mapping[str, torch.Tensor] | None = None,
    time_limit: float = 60.0,
) -> Allocation:
    """Allocate a bit-width to every unit (channel or tensor) of the scored modules.

    :param scores: unit scores per module (higher = more important).
    :param unit_params: weights per unit of each module (``weight.numel() / units``).
    :param levels: allowed bit-widths.
    :param fractions: with ``levels``: the fraction of units at each level (ignored when
        ``avg_bits`` is given).
    :param avg_bits: target parameter-weighted average bits (solved exactly by MILP).
    :param untargeted_params: Conv/Linear weights outside the targets (count as 32 bits).
    :param max_bits: optional per-unit upper bounds (used to project learned bits back under
        a budget).
    """
    levels = [int(b) for b in levels]
    names, sizes, s, n = _flatten(scores, unit_params)
    if s.size == 0:
        raise ConfigError("no units to allocate bits to (empty scores)")
    if avg_bits is None:
        if fractions is None:
            raise ConfigError("give either fractions (with levels) or avg_bits")
        check_levels(levels, fractions)
        order = sorted(range(len(levels)), key=lambda i: levels[i])
        lv = [levels[i] for i in order]
        fr = [fractions[i] for i in order]
        m = s.size
        quota = np.array(fr) * m
        take = np.floor(quota).astype(int)
        rem = m - int(take.sum())
        take[np.argsort(-(quota - take), kind="stable")[:rem]] += 1
        rank = np.argsort(s, kind="stable")  # least important first
        flat = np.empty(m)
        start = 0
        for b, k in zip(lv, take, strict=True):
            flat[rank[start : start + k]] = b
            start += k
        bits = _unflatten(names, sizes, flat)
        return _result(bits, flat, n, s, untargeted_params, "levels")
    check_levels(levels)
    return _solve_milp(
        names, sizes, s, n, levels, avg_bits, untargeted_params, max_bits, time_limit
    )


def _result(bits, flat, n, s, untargeted, method, objective=None):
    total = float((n * flat).sum()) + UNQUANTIZED_BITS * untargeted
    n_all = float(n.sum()) + untargeted
    obj = float((s * n * np.power(4.0, -flat)).sum()) if objective is None else objective
    return Allocation(bits, total / n_all, float(flat.mean()), obj, method)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS (C++) prints debug lines to fd 1 on some MIPs; keep the user's stdout clean."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. pytest capture without a real fd
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _solve_milp(names, sizes, s, n, levels, avg_bits, untargeted, max_bits, time_limit):
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    lv = np.array(sorted(levels), dtype=float)
    m, k = s.size, lv.size
    n_all = float(n.sum()) + untargeted
    budget = avg_bits * n_all - UNQUANTIZED_BITS * untargeted
    ub_bits = None
    if max_bits is not None:
        ub_bits = np.concatenate([max_bits[nm].double().numpy().ravel() for nm in names])
    lo_avg = (lv[0] * n.sum() + UNQUANTIZED_BITS * untargeted) / n_all
    hi_avg = (lv[-1] * n.sum() + UNQUANTIZED_BITS * untargeted) / n_all
    if budget < lv[0] * n.sum() - 1e-6 * n_all:
        raise ConfigError(
            f"avg_bits {avg_bits:g} cannot be met: with bit levels {[int(b) for b in lv]} the "
            f"parameter-weighted average can range from {lo_avg:.4f} to {hi_avg:.4f} "
            f"({untargeted} untargeted weights count as 32 bits). Raise avg_bits, add lower "
            f"levels, or target more layers.",
            key="budget.avg_bits",
        )
    # variables x[u, j] ∈ {0,1}: unit u takes level j; flattened u-major.
    # Units with zero score (e.g. behind a zero-initialised BatchNorm) would be indifferent
    # to their bits; a tiny floor keeps "more bits is better" true for every unit.
    pos = s[s > 0]
    s_eff = s + (1e-6 * float(pos.mean()) if pos.size else 1.0)
    cost = (s_eff[:, None] * n[:, None] * np.power(4.0, -lv)[None, :]).ravel()
    # scale for numerical conditioning (HiGHS); the argmin is unchanged
    cost = cost / max(cost.max(), 1e-300)
    rows = np.repeat(np.arange(m), k)
    cols = np.arange(m * k)
    one_per_unit = LinearConstraint(
        coo_matrix((np.ones(m * k), (rows, cols)), shape=(m, m * k)), 1, 1
    )
    weight_row = (n[:, None] * lv[None, :]).ravel()[None, :]
    upper = np.ones(m * k)
    cap = np.full(m, lv[-1])
    if ub_bits is not None:
        upper = (lv[None, :] <= ub_bits[:, None] + 1e-9).astype(float).ravel()
        cap = np.array(
            [lv[lv <= b + 1e-9].max() if (lv <= b + 1e-9).any() else lv[0] for b in ub_bits]
        )
    # "Met exactly": spend the budget up to one level step of the largest unit. Raising any
    # unit one level from a solution below this bound stays within budget, so the bound is
    # always feasible; without it, near-zero costs let the solver stop short of the budget.
    step = float(np.diff(lv).max()) if k > 1 else 0.0
    lower = min(budget - step * float(n.max()), float((n * cap).sum()))
    budget_c = LinearConstraint(weight_row, lower, budget)
    with _quiet_stdout():
        res = milp(
            cost,
            constraints=[one_per_unit, budget_c],
            integrality=np.ones(m * k),
            bounds=Bounds(np.zeros(m * k), upper),
            options={"time_limit": time_limit, "mip_rel_gap": 1e-4},
        )
    if res.x is None:
        raise ConfigError(f"bit allocation failed ({res.message}); avg_bits={avg_bits:g}")
    x = res.x.reshape(m, k)
    flat = lv[np.argmax(x, axis=1)]
    bits = _unflatten(names, sizes, flat)
    status = "milp:optimal" if res.status == 0 else f"milp:{res.message}"
    return _result(bits, flat, n, s, untargeted, status)
