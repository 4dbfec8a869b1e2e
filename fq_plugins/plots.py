"""Figures written into a run's output folder (matplotlib is optional: the ``plot`` extra)."""

from __future__ import annotations

import os

from .accounting import ModelCost

__all__ = ["plot_layer_bits"]


def plot_layer_bits(cost: ModelCost, path: str, title: str) -> str | None:
    """Bar chart of bits per layer (parameter-weighted, with the channel min–max range).

    Returns the path written, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    layers = cost.layers
    names = [lc.name for lc in layers]
    mean = [lc.bits_param for lc in layers]
    lo = [lc.bits_param - lc.bits_channel_min for lc in layers]
    hi = [lc.bits_channel_max - lc.bits_param for lc in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4))
    colors = ["tab:blue" if lc.quantized else "tab:gray" for lc in layers]
    ax.bar(range(len(names)), mean, color=colors, yerr=[lo, hi], capsize=2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, fontsize=7)
    ax.set_ylabel("weight bits (mean; bar = channel min–max)")
    ax.set_title(f"{title}: avg {cost.avg_bits_param:.2f} bits (parameter-weighted)")
    ax.set_ylim(0, max([lc.bits_channel_max for lc in layers] + [1.0]) + 1)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
