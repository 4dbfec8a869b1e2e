"""``report.html``: one self-contained page a reader opens instead of ``report.json``.

:func:`write_html_report` takes the dict :meth:`fq_plugins.report.RunReport.to_dict`
produces and writes ``report.html`` into the run folder (atomically). The page holds the
comparison table (mean ± std over seeds), the plots as embedded PNGs — accuracy and
worst-group accuracy against average bits with the Pareto front, per-group accuracy, the
per-layer bit allocation, energy and CO2 per variant labelled measured/estimated — the
failed variants, the per-seed rows, the dataset, the environment and the recipe.

Nothing is fetched when the page is viewed: no CDN, no web font, no external image; a
Content-Security-Policy (``default-src 'none'``, images only from ``data:``, the one inline
script and style allowed by hash) makes a browser refuse anything else. Every string that
comes from the report is HTML-escaped. Without matplotlib (the ``plot`` extra) the page still
has every table and says how to get the plots.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from .errors import FQError
from .plots import (
    PLOT_EXTRA_HINT,
    EnergyBar,
    LayerBits,
    ParetoPoint,
    energy_png,
    group_accuracy_png,
    have_matplotlib,
    layer_bits_png,
    pareto_png,
)
from .report import RESULT_COLUMNS, _mean_std, headline

__all__ = ["HTML_NAME", "PLOT_IDS", "render_html_report", "write_html_report"]

HTML_NAME = "report.html"

PLOT_IDS = ("pareto", "group-accuracy", "layer-bits", "energy")
"""The ``id`` of each plot's ``<figure>`` (a plot is left out when the report has no data
for it: no finished variant, no quantized layer, no energy figure)."""

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:1.5rem auto;max-width:1250px;padding:0 1rem;color:#1b1b1b;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#555;font-size:.9rem}
.status{display:inline-block;padding:.1rem .55rem;border-radius:.8rem;font-weight:600;
font-size:.85rem;color:#fff;background:#777;vertical-align:middle}
.status-ok{background:#2e7d32}.status-partial{background:#ef6c00}
.status-failed,.status-interrupted{background:#c62828}.status-running{background:#1565c0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.name,th.name{text-align:left}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#444;max-width:1000px}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.6rem;overflow:auto;font-size:.8rem}
.note{background:#fff8e1;border:1px solid #f0d890;padding:.5rem .8rem;margin:.6rem 0}
.error{background:#fdecea;border:1px solid #f5b7b1;padding:.5rem .8rem;margin:.6rem 0}
details{margin:.5rem 0}.scroll{overflow-x:auto}summary{cursor:pointer;font-weight:600}
"""

_SCRIPT = (
    'window.addEventListener("load",function(){'
    'var im=document.querySelectorAll("img.plot"),ok=0;'
    "for(var i=0;i<im.length;i++){"
    "if(im[i].complete&&im[i].naturalWidth>0){ok++;}"
    'else{im[i].insertAdjacentText("afterend","(this plot did not render)");}}'
    'document.documentElement.setAttribute("data-plots-rendered",ok+"/"+im.length);});'
)
"""Marks ``<html data-plots-rendered="OK/TOTAL">`` once images loaded (the test reads it)
and flags a plot the browser could not decode. Allowed by the CSP through its hash."""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (
    "default-src 'none'; img-src data:; "
    f"style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


def _e(x: Any) -> str:
    """Any report value as escaped HTML text."""
    return html.escape("" if x is None else str(x), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if _finite(x) else "–"


def _ms_cell(ms: dict[str, Any], spec: str) -> str:
    if ms["mean"] is None:
        return "–"
    if ms["std"] is not None:
        return f"{ms['mean']:{spec}} ± {ms['std']:{spec}}"
    return f"{ms['mean']:{spec}}"


def _fmt_bytes(n: Any) -> str:
    if not _finite(n):
        return "–"
    x = float(n)
    for unit in ("B", "KiB", "MiB"):
        if abs(x) < 1024:
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} GiB"


def energy_kind(method: str | None) -> str:
    """``measured`` / ``estimated`` / ``mixed`` / ``none`` of an ``energy_method`` string
    (``+``-joined ``measured:*`` and ``estimated:*`` labels)."""
    parts = [p for p in (method or "").split("+") if p and p != "none"]
    if not parts:
        return "none"
    kinds = {p.split(":", 1)[0] for p in parts}
    if kinds == {"measured"}:
        return "measured"
    if kinds == {"estimated"}:
        return "estimated"
    return "mixed"


def _check(report: Any) -> list[dict[str, Any]]:
    if not isinstance(report, dict):
        raise FQError(
            f"write_html_report needs the report dict (RunReport.to_dict()), got "
            f"{type(report).__name__}; pass report.to_dict() or json.load(report.json)"
        )
    variants = report.get("variants", [])
    if not isinstance(variants, list):
        raise FQError(
            f"report['variants'] is {type(variants).__name__}, not a list of variant dicts; "
            "pass RunReport.to_dict() or the parsed report.json"
        )
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or not isinstance(v.get("variant"), str):
            raise FQError(
                f"report['variants'][{i}] has no 'variant' name (got {type(v).__name__}); "
                "each entry must be an EvaluationReport.to_dict()"
            )
    return variants


def _by_name(variants: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        out.setdefault(v["variant"], []).append(v)
    return out


def _phase_joules(v: dict[str, Any]) -> dict[str, float]:
    """A variant's energy per phase (``train``, ``finetune``, ``eval``, …): the readings'
    ``total_joules`` summed by the first part of their key (``finetune:NAME:meter``)."""
    out: dict[str, float] = {}
    for key, r in (v.get("energy") or {}).items():
        j = r.get("total_joules") if isinstance(r, dict) else None
        if j is not None and _finite(j):
            phase = str(key).split(":", 1)[0]
            out[phase] = out.get(phase, 0.0) + float(j)
    return out


def _aggregate(
    groups: dict[str, list[dict[str, Any]]],
) -> tuple[
    list[ParetoPoint],
    tuple[list[str], list[list[Any]], list[list[Any]]],
    list[LayerBits],
    list[EnergyBar],
]:
    """The plots' data, means and sample stds over each variant's seeds."""
    pareto: list[ParetoPoint] = []
    group_names: list[str] = list(
        dict.fromkeys(
            g for vs in groups.values() for v in vs for g in (v.get("group_accuracy") or {})
        )
    )
    g_means: list[list[Any]] = []
    g_stds: list[list[Any]] = []
    layers: list[LayerBits] = []
    energy: list[EnergyBar] = []
    for name, vs in groups.items():
        hs = [headline(v) for v in vs]
        ms = {k: _mean_std([h.get(k) for h in hs]) for k in hs[0]}
        pareto.append(
            ParetoPoint(
                name=name,
                methods=hs[0]["methods"],
                avg_bits=ms["avg_bits"]["mean"] if ms["avg_bits"]["mean"] is not None else math.nan,
                accuracy=ms["accuracy"]["mean"] if ms["accuracy"]["mean"] is not None else math.nan,
                worst_group_accuracy=ms["worst_group_accuracy"]["mean"]
                if ms["worst_group_accuracy"]["mean"] is not None
                else math.nan,
                avg_bits_std=ms["avg_bits"]["std"],
                accuracy_std=ms["accuracy"]["std"],
                worst_group_accuracy_std=ms["worst_group_accuracy"]["std"],
                seeds=len(vs),
            )
        )
        per_g = [
            _mean_std([(v.get("group_accuracy") or {}).get(g) for v in vs]) for g in group_names
        ]
        g_means.append([m["mean"] for m in per_g])
        g_stds.append([m["std"] for m in per_g])
        lay = _layer_bits(name, vs)
        if lay is not None:
            layers.append(lay)
        phases_by_seed = [_phase_joules(v) for v in vs]
        phase_names = list(dict.fromkeys(p for ph in phases_by_seed for p in ph))
        phases = {
            p: _mean_std([ph.get(p) for ph in phases_by_seed])["mean"] or 0.0 for p in phase_names
        }
        carbons = [v.get("carbon") or {} for v in vs]
        co2_methods = sorted({c["method"] for c in carbons if c.get("method")})
        energy.append(
            EnergyBar(
                name=name,
                phases=phases,
                total_std=ms["energy_joules"]["std"],
                kind=energy_kind("+".join(h["energy_method"] for h in hs)),
                co2_grams=ms["co2_grams"]["mean"],
                co2_std=ms["co2_grams"]["std"],
                co2_kind="+".join(co2_methods) or None,
            )
        )
    return pareto, (group_names, g_means, g_stds), layers, energy


def _layer_bits(name: str, vs: Sequence[dict[str, Any]]) -> LayerBits | None:
    """Per-layer bits of a variant with at least one quantized layer: ``bits_param`` mean
    over seeds, channel min / max over all seeds; layers in the first seed's order."""
    per_layer: dict[str, list[dict[str, Any]]] = {}
    for v in vs:
        for lc in (v.get("cost") or {}).get("layers") or []:
            if isinstance(lc, dict) and "name" in lc:
                per_layer.setdefault(str(lc["name"]), []).append(lc)
    if not any(lc.get("quantized") for lcs in per_layer.values() for lc in lcs):
        return None
    names, bits, lo, hi, q = [], [], [], [], []
    for lname, lcs in per_layer.items():
        b = _mean_std([lc.get("bits_param") for lc in lcs])["mean"]
        if b is None:
            continue
        names.append(lname)
        bits.append(b)
        lo.append(
            min(
                (lc["bits_channel_min"] for lc in lcs if _finite(lc.get("bits_channel_min"))),
                default=b,
            )
        )
        hi.append(
            max(
                (lc["bits_channel_max"] for lc in lcs if _finite(lc.get("bits_channel_max"))),
                default=b,
            )
        )
        q.append(any(lc.get("quantized") for lc in lcs))
    avg = _mean_std([(v.get("cost") or {}).get("avg_bits_param") for v in vs])["mean"]
    return LayerBits(name, names, bits, lo, hi, q, avg) if names else None


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _plots(groups: dict[str, list[dict[str, Any]]], n_seeds: int) -> str:
    if not groups:
        return (
            '<p class="note">No variant has finished yet: the plots appear with the first one.</p>'
        )
    if not have_matplotlib():
        return (
            f'<p class="note">Plots need matplotlib: <code>{_e(PLOT_EXTRA_HINT)}</code>, then '
            "rerun (or <code>fq_plugins.html_report.write_html_report(json.load(open("
            "'report.json')), folder)</code>). The tables below have every figure.</p>"
        )
    pareto, (gnames, gm, gs), layers, energy = _aggregate(groups)
    spread = f"error bars: sample std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    items: list[tuple[str, str, Callable[[], bytes], str]] = [
        (
            "pareto",
            "Accuracy and worst-group accuracy against average bits",
            lambda: pareto_png(pareto),
            "One marker shape per method, one colour per variant; dashed: the Pareto front "
            f"(no other variant has fewer bits and higher accuracy). Average bits are "
            f"parameter-weighted over Conv/Linear weights (unquantized = 32); {spread}.",
        ),
    ]
    if gnames:
        items.append(
            (
                "group-accuracy",
                "Per-group accuracy",
                lambda: group_accuracy_png(list(groups), gnames, gm, gs),
                f"Test accuracy of each group, per variant; {spread}.",
            )
        )
    if layers:
        items.append(
            (
                "layer-bits",
                "Per-layer bit allocation",
                lambda: layer_bits_png(layers),
                "Bar: the layer's parameter-weighted mean weight bits (mean over seeds); "
                "whisker: its channels' min–max (over seeds); grey: not quantized (32 bits).",
            )
        )
    if any(e.phases for e in energy):
        items.append(
            (
                "energy",
                "Energy and CO2 per variant",
                lambda: energy_png(energy),
                "Each variant's own phases (FP32: training + evaluation; a compressed "
                "variant: fine-tune + evaluation), stacked by phase; hatched bars are "
                "estimates (estimated:*), plain bars measurements (measured:*); the label "
                f"over each bar says which. CO2 = J × PUE × grid intensity; {spread}.",
            )
        )
    out = []
    for fid, title, draw, caption in items:
        try:
            img = _img(draw(), title)
        except Exception as exc:  # a plot that cannot be drawn must not lose the report
            out.append(
                f'<figure id="{fid}"><p class="error">The plot "{_e(title)}" could not be '
                f"drawn: {_e(type(exc).__name__)}: {_e(exc)}</p></figure>"
            )
            continue
        out.append(
            f'<figure id="{fid}"><h3>{_e(title)}</h3>{img}<figcaption>{_e(caption)}'
            "</figcaption></figure>"
        )
    return "\n".join(out)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "") -> str:
    head = "".join(
        f'<th class="name">{_e(h)}</th>' if i == 0 else f"<th>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="name">{_e(c)}</td>' if i == 0 else f"<td>{_e(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_table(groups: dict[str, list[dict[str, Any]]], report: dict[str, Any]) -> str:
    if not groups:
        return '<p class="note">No finished variants yet.</p>'
    metric_names = list(
        dict.fromkeys(m for vs in groups.values() for v in vs for m in (v.get("metrics") or {}))
    )
    extra = [
        m
        for m in metric_names
        if m not in ("group_accuracy", "worst_group_accuracy", "accuracy_gap")
    ]
    pepr = ((report.get("pepr") or {}).get("accuracy") or {}).get("energy") or {}
    header = [
        "variant", "methods", "seeds", "accuracy", "mean-group acc", "worst-group acc",
        "gap", "avg bits", "sparsity", "packed", "time (s)", "energy (J)", "energy method",
        "CO2 (g)", "CO2 method", "PePR-E", *extra,
    ]  # fmt: skip
    rows = []
    for name, vs in groups.items():
        hs = [headline(v) for v in vs]

        def ms(key: str, hs: list[dict[str, Any]] = hs) -> dict[str, Any]:
            return _mean_std([h.get(key) for h in hs])

        carbon_methods = sorted({(v.get("carbon") or {}).get("method") or "" for v in vs} - {""})
        rows.append(
            [
                name,
                hs[0]["methods"],
                str(len(vs)),
                _ms_cell(ms("accuracy"), ".4f"),
                _ms_cell(ms("mean_group_accuracy"), ".4f"),
                _ms_cell(ms("worst_group_accuracy"), ".4f"),
                _ms_cell(ms("accuracy_gap"), ".4f"),
                _ms_cell(ms("avg_bits"), ".2f"),
                _ms_cell(ms("sparsity"), ".3f"),
                _fmt_bytes(ms("packed_bytes")["mean"]),
                _ms_cell(ms("wall_seconds"), ".2f"),
                _ms_cell(ms("energy_joules"), ".3g"),
                "+".join(sorted({h["energy_method"] for h in hs})),
                _ms_cell(ms("co2_grams"), ".3g"),
                "+".join(carbon_methods) or "–",
                _fmt(pepr.get(name), ".4f"),
                *(_ms_cell(ms(f"metric:{m}"), ".4f") for m in extra),
            ]
        )
    return f'<div class="scroll">{_table(header, rows, cls="summary")}</div>'


def _seed_table(variants: Sequence[dict[str, Any]]) -> str:
    hs = [headline(v) for v in variants]
    metric_cols = list(dict.fromkeys(k for h in hs for k in h if k.startswith("metric:")))
    cols = [*RESULT_COLUMNS, *metric_cols]
    rows = [[_cellv(h.get(c)) for c in cols] for h in hs]
    return _table(cols, rows, cls="per-seed")


def _cellv(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.6g}" if math.isfinite(x) else "–"
    return str(x)


def _kv_table(d: dict[str, Any]) -> str:
    rows = [
        [str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)]
        for k, v in d.items()
    ]
    return _table(["key", "value"], rows)


def _recipe_text(recipe: Any) -> str:
    try:
        import yaml

        return str(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=100))
    except Exception:  # not YAML-representable: JSON says the same
        return json.dumps(recipe, indent=2, ensure_ascii=False, default=str)


def render_html_report(report: dict[str, Any]) -> str:
    """The HTML page of a run report dict (:meth:`RunReport.to_dict`); every string from the
    report is escaped, the page loads nothing from outside itself.

    :raises FQError: ``report`` is not a report dict.
    """
    variants = _check(report)
    groups = _by_name(variants)
    seeds = report.get("seeds") or sorted({int(v.get("seed", 0)) for v in variants}) or [0]
    n_seeds = max([len(vs) for vs in groups.values()] + [len(seeds) if groups else 1])
    name = report.get("name") or "run"
    status = str(report.get("status") or "unknown")
    env = report.get("environment") or {}
    failed = report.get("failed_variants") or []
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(name)} — fq-plugins report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f'<h1>{_e(name)} <span class="status status-{_e(status)}">{_e(status)}</span></h1>',
        '<p class="meta">'
        + " · ".join(
            _e(s)
            for s in (
                f"seeds: {', '.join(str(s) for s in seeds)}",
                f"{len(groups)} variant(s), {len(variants)} finished run(s)",
                f"wall time {_fmt(report.get('wall_seconds'), '.1f')} s",
                f"schema v{report.get('schema_version', '?')}",
                f"fq-plugins {env.get('fq_plugins', '?')}",
                f"torch {env.get('torch', '?')}",
                f"world size {env.get('world_size', 1)}",
                str(env.get("date", "")),
            )
            if s
        )
        + "</p>",
    ]
    if report.get("error"):
        parts.append(f'<p class="error">Run error: {_e(report["error"])}</p>')
    if status in ("running", "interrupted"):
        parts.append(
            f'<p class="note">This run is {_e(status)}: the page shows the variants finished so '
            "far (rerun with <code>--resume</code> to complete an interrupted run).</p>"
        )
    parts += [
        "<h2>Results</h2>",
        _summary_table(groups, report),
        f'<p class="meta">{_e(_summary_note(n_seeds))}</p>',
        "<h2>Plots</h2>",
        _plots(groups, n_seeds),
        "<h2>Failed variants</h2>",
    ]
    if failed:
        parts.append(
            _table(
                ["variant", "seed", "error"],
                [
                    [str(f.get("variant")), str(f.get("seed", "")), str(f.get("error", ""))]
                    for f in failed
                ],
                cls="failed",
            )
        )
    else:
        parts.append("<p>None.</p>")
    parts += [
        "<h2>Details</h2>",
        f"<details><summary>Per-seed results ({len(variants)} rows, as in results.csv)</summary>"
        f'<div class="scroll">{_seed_table(variants)}</div></details>',
        f"<details><summary>Dataset</summary>{_kv_table(report.get('dataset') or {})}</details>",
        f"<details><summary>Environment</summary>{_kv_table(env)}</details>",
        f"<details><summary>Conventions</summary>{_kv_table(report.get('conventions') or {})}</details>",
        "<h2>Recipe</h2>",
        f'<pre class="recipe">{_e(_recipe_text(report.get("recipe") or {}))}</pre>',
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
        "",
    ]
    return "\n".join(parts)


def _summary_note(n_seeds: int) -> str:
    s = f"{n_seeds} seeds: mean ± sample std (ddof 1) over seeds; " if n_seeds > 1 else "one seed; "
    return (
        s + "gap = mean-group − worst-group accuracy; avg bits parameter-weighted over "
        "Conv/Linear weights (unquantized = 32); energy: measured:* are meter readings, "
        "estimated:* are estimates; PePR-E = accuracy / (1 + min-max normalised energy), "
        "mean over seeds."
    )


def write_html_report(report: dict[str, Any], out_dir: str) -> str:
    """Write ``out_dir/report.html`` (atomically: a crash never leaves half a page) from the
    run report dict; returns its path.

    :raises FQError: ``report`` is not a report dict, or the file cannot be written.
    """
    from .run_folder import atomic_write

    page = render_html_report(report)
    path = os.path.join(out_dir, HTML_NAME)
    atomic_write(path, page)
    return path
