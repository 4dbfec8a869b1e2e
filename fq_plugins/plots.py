"""Figures of a run (matplotlib is optional: the ``plot`` extra).

Every figure is drawn on a :class:`matplotlib.figure.Figure` (never ``pyplot``), so drawing
one neither switches the caller's backend (a notebook keeps its own) nor leaks global
figures. The ``*_png`` functions return PNG bytes, embedded by :mod:`fq_plugins.html_report`;
:func:`plot_layer_bits` writes one variant's bar chart into the run folder.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .accounting import ModelCost

__all__ = [
    "PLOT_EXTRA_HINT",
    "ParetoPoint",
    "energy_png",
    "group_accuracy_png",
    "have_matplotlib",
    "layer_bits_png",
    "pareto_front",
    "pareto_png",
    "plot_layer_bits",
]

PLOT_EXTRA_HINT = "pip install 'fq-plugins[plot]'"
"""What to run when matplotlib is missing."""

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "8")
_DPI = 110


def have_matplotlib() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _err(std: float | None) -> float:
    return std if _finite(std) else 0.0  # type: ignore[return-value]


@dataclass
class ParetoPoint:
    """One variant in the accuracy-against-bits plane (means over seeds, sample stds)."""

    name: str
    methods: str
    avg_bits: float
    accuracy: float
    worst_group_accuracy: float
    avg_bits_std: float | None = None
    accuracy_std: float | None = None
    worst_group_accuracy_std: float | None = None
    seeds: int = 1


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, fewer bits being better and higher
    accuracy being better (``(bits, accuracy)`` pairs), sorted by bits; ties keep the first.

    A point is dominated when another has bits ≤ and accuracy ≥ with one of them strict.
    Points with a non-finite coordinate are never on the front.
    """
    order = sorted(
        (i for i, (b, a) in enumerate(points) if math.isfinite(b) and math.isfinite(a)),
        key=lambda i: (points[i][0], -points[i][1], i),
    )
    front: list[int] = []
    best = -math.inf
    for i in order:  # by bits, then the more accurate first: a point is on the front
        if points[i][1] > best:  # iff it beats every point with fewer or equal bits
            front.append(i)
            best = points[i][1]
    return front


def pareto_png(points: Sequence[ParetoPoint]) -> bytes:
    """Accuracy and worst-group accuracy against average weight bits (log₂ axis): one marker
    shape per method, one colour per variant, error bars over seeds, the Pareto front as a
    dashed step line."""
    methods = list(dict.fromkeys(p.methods for p in points))
    marker = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(methods)}
    colors = _colors(len(points))
    fig = _figure(11.0, 4.6)
    axes = fig.subplots(1, 2, sharex=True)
    panels = (
        ("accuracy", "accuracy_std", "test accuracy"),
        ("worst_group_accuracy", "worst_group_accuracy_std", "worst-group accuracy"),
    )
    bits = [p.avg_bits for p in points]
    for ax, (key, std_key, label) in zip(axes, panels, strict=True):
        ys = [getattr(p, key) for p in points]
        for p, c, y in zip(points, colors, ys, strict=True):
            if not (_finite(p.avg_bits) and _finite(y)):
                continue
            ax.errorbar(
                p.avg_bits,
                y,
                xerr=_err(p.avg_bits_std) or None,
                yerr=_err(getattr(p, std_key)) or None,
                fmt=marker[p.methods],
                color=c,
                markersize=8,
                capsize=3,
                label=f"{p.name} ({p.methods})",
            )
            ax.annotate(
                p.name, (p.avg_bits, y), xytext=(5, 4), textcoords="offset points", fontsize=7
            )
        front = pareto_front(list(zip(bits, ys, strict=True)))
        if len(front) > 1:
            fx = [bits[i] for i in front]
            fy = [ys[i] for i in front]
            ax.step(fx, fy, where="post", ls="--", color="0.45", lw=1, label="Pareto front")
        ax.set_xscale("log", base=2)
        finite_bits = [b for b in bits if _finite(b) and b > 0]
        if finite_bits:
            lo, hi = min(finite_bits), max(finite_bits)
            ticks = [2.0**k for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.set_xlim(lo / 1.35, hi * 1.35)
        ax.set_xlabel("average weight bits (parameter-weighted; fewer →)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{label} against bits")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    return _png(fig)


def group_accuracy_png(
    names: Sequence[str],
    group_names: Sequence[str],
    means: Sequence[Sequence[float | None]],
    stds: Sequence[Sequence[float | None]],
) -> bytes:
    """Per-group accuracy bars, one cluster per variant (``means[v][g]``), error bars over
    seeds; a missing value leaves its bar out."""
    n_v, n_g = len(names), len(group_names)
    width = 0.8 / max(n_g, 1)
    fig = _figure(max(6.0, 0.9 + n_v * (0.35 + 0.22 * n_g)), 4.2)
    ax = fig.subplots()
    colors = _colors(n_g)
    for g, (gname, c) in enumerate(zip(group_names, colors, strict=True)):
        xs, ys, es = [], [], []
        for v in range(n_v):
            m = means[v][g]
            if _finite(m):
                xs.append(v - 0.4 + width * (g + 0.5))
                ys.append(m)
                es.append(_err(stds[v][g]))
        ax.bar(xs, ys, width=width * 0.95, color=c, label=gname, yerr=es if any(es) else None)
    ax.set_xticks(range(n_v))
    ax.set_xticklabels(
        list(names), rotation=30 if n_v > 5 else 0, ha="right" if n_v > 5 else "center"
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy on the group")
    ax.set_title("per-group test accuracy")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(
        fontsize=8,
        ncol=min(6, n_g),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18 if n_v > 5 else -0.1),
    )
    return _png(fig)


@dataclass
class LayerBits:
    """One variant's per-layer weight bits (means over seeds; channel min/max over seeds)."""

    name: str
    layers: list[str]
    bits: list[float]
    channel_min: list[float]
    channel_max: list[float]
    quantized: list[bool] = field(default_factory=list)
    avg_bits: float | None = None
    """The model's parameter-weighted average bits (mean over seeds), for the title."""


def layer_bits_png(variants: Sequence[LayerBits]) -> bytes:
    """Per-layer bit allocation: one bar panel per variant (shared axes), bar = the layer's
    parameter-weighted mean bits, whisker = its channels' min–max, grey = not quantized."""
    n = len(variants)
    n_layers = max(len(v.layers) for v in variants)
    fig = _figure(max(6.0, 0.3 * n_layers + 2.0), 1.0 + 1.9 * n)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    top = max([m for v in variants for m in v.channel_max if _finite(m)] + [1.0])
    for ax, v in zip(axes, variants, strict=True):
        xs = range(len(v.layers))
        lo = [max(0.0, b - m) for b, m in zip(v.bits, v.channel_min, strict=True)]
        hi = [max(0.0, m - b) for b, m in zip(v.bits, v.channel_max, strict=True)]
        q = v.quantized or [True] * len(v.layers)
        colors = ["tab:blue" if qi else "tab:gray" for qi in q]
        ax.bar(xs, v.bits, color=colors, yerr=[lo, hi], capsize=2)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(v.layers, rotation=75, fontsize=6)
        ax.set_ylim(0, top + 1)
        ax.set_ylabel("bits", fontsize=8)
        avg = f"avg {v.avg_bits:.2f} bits (parameter-weighted)" if _finite(v.avg_bits) else ""
        ax.set_title(f"{v.name}  {avg}", fontsize=9, loc="left")
        ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


@dataclass
class EnergyBar:
    """One variant's energy (per phase, means over seeds) and CO2."""

    name: str
    phases: dict[str, float]
    total_std: float | None
    kind: str
    """``measured``, ``estimated``, ``mixed`` or ``none``."""
    co2_grams: float | None = None
    co2_std: float | None = None
    co2_kind: str | None = None


_KIND_HATCH = {"measured": "", "estimated": "//", "mixed": "..", "none": "xx"}


def energy_png(bars: Sequence[EnergyBar]) -> bytes:
    """Energy per variant (J, stacked by phase; hatched = estimated) and, when any variant
    has one, CO2 (gCO2e) per variant; error bars = std over seeds of the totals."""
    from matplotlib.patches import Patch

    with_co2 = any(_finite(b.co2_grams) for b in bars)
    n = len(bars)
    fig = _figure(max(6.0, 1.5 + 0.6 * n) * (2 if with_co2 else 1), 4.4)
    axes = fig.subplots(1, 2 if with_co2 else 1, squeeze=False)[0]
    phases = list(dict.fromkeys(p for b in bars for p in b.phases))
    pcolors = dict(zip(phases, _colors(len(phases)), strict=True))
    ax = axes[0]
    bottoms = [0.0] * n
    for p in phases:
        vals = [b.phases.get(p, 0.0) for b in bars]
        ax.bar(
            range(n),
            vals,
            bottom=bottoms,
            color=pcolors[p],
            hatch=[_KIND_HATCH.get(b.kind, "") for b in bars],
            edgecolor="0.25",
            linewidth=0.5,
        )
        bottoms = [x + y for x, y in zip(bottoms, vals, strict=True)]
    errs = [_err(b.total_std) for b in bars]
    if any(errs):
        ax.errorbar(range(n), bottoms, yerr=errs, fmt="none", ecolor="k", capsize=3)
    for i, (b, tot) in enumerate(zip(bars, bottoms, strict=True)):
        ax.annotate(
            f"{tot:.3g} J\n{b.kind}",
            (i, tot + errs[i]),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    ax.set_ylim(
        bottom=0, top=max([t + e for t, e in zip(bottoms, errs, strict=True)] + [0]) * 1.2 or 1
    )
    ax.set_xticks(range(n))
    ax.set_xticklabels(
        [b.name for b in bars], rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center"
    )
    ax.set_ylabel("energy (J)")
    ax.set_title("energy per variant (own phases)")
    ax.grid(True, axis="y", alpha=0.3)
    handles = [Patch(facecolor=pcolors[p], edgecolor="0.25", label=p) for p in phases]
    kinds = list(dict.fromkeys(b.kind for b in bars))
    handles += [
        Patch(facecolor="white", edgecolor="0.25", hatch=_KIND_HATCH.get(k, ""), label=k)
        for k in kinds
    ]
    ax.legend(handles=handles, fontsize=7)
    if with_co2:
        ax2 = axes[1]
        ys = [
            b.co2_grams if b.co2_grams is not None and _finite(b.co2_grams) else 0.0 for b in bars
        ]
        es = [_err(b.co2_std) for b in bars]
        ax2.bar(
            range(n),
            ys,
            color="tab:green",
            yerr=es if any(es) else None,
            capsize=3,
            hatch=[_KIND_HATCH.get(b.kind, "") for b in bars],
            edgecolor="0.25",
            linewidth=0.5,
        )
        for i, b in enumerate(bars):
            ax2.annotate(
                f"{ys[i]:.3g} g" if _finite(b.co2_grams) else "none",
                (i, ys[i] + es[i]),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
        ax2.set_ylim(
            bottom=0, top=max([y + e for y, e in zip(ys, es, strict=True)] + [0]) * 1.2 or 1
        )
        intensity = sorted({b.co2_kind for b in bars if b.co2_kind})
        ax2.set_xlabel("grid intensity: " + ", ".join(intensity), fontsize=8)
        ax2.set_xticks(range(n))
        ax2.set_xticklabels(
            [b.name for b in bars], rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center"
        )
        ax2.set_ylabel("gCO2e")
        ax2.set_title("CO2 per variant (J × PUE × intensity; hatched: estimated J)")
        ax2.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def plot_layer_bits(cost: ModelCost, path: str, title: str) -> str | None:
    """Bar chart of bits per layer (parameter-weighted, with the channel min–max range),
    written atomically to ``path``.

    Returns the path written, or None when matplotlib is not installed.
    """
    if not have_matplotlib():
        return None
    from .run_folder import atomic_write

    layers = cost.layers
    names = [lc.name for lc in layers]
    mean = [lc.bits_param for lc in layers]
    lo = [lc.bits_param - lc.bits_channel_min for lc in layers]
    hi = [lc.bits_channel_max - lc.bits_param for lc in layers]
    fig = _figure(max(6.0, 0.35 * len(names) + 2), 4)
    ax = fig.subplots()
    colors = ["tab:blue" if lc.quantized else "tab:gray" for lc in layers]
    ax.bar(range(len(names)), mean, color=colors, yerr=[lo, hi], capsize=2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, fontsize=7)
    ax.set_ylabel("weight bits (mean; bar = channel min–max)")
    ax.set_title(f"{title}: avg {cost.avg_bits_param:.2f} bits (parameter-weighted)")
    ax.set_ylim(0, max([lc.bits_channel_max for lc in layers] + [1.0]) + 1)
    atomic_write(path, _png(fig))
    return path
