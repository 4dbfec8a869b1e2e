"""report.html: driven by a real `fq-plugins run`, checked against numpy and in headless Chromium.

The run (2 seeds, 1 epoch, 400 generated images, FP32 + Uniform-4 + FairQuant-3)
takes a few seconds; every test below reads its output folder. The Chromium test needs
Debian's ``chromium`` (``.ci/run`` installs it) and skips, saying so, where it is absent.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fq_plugins.cli import main
from fq_plugins.errors import FQError
from fq_plugins.html_report import (
    PLOT_IDS,
    _aggregate,
    _by_name,
    energy_kind,
    render_html_report,
    write_html_report,
)
from fq_plugins.plots import have_matplotlib, pareto_front

RECIPE = """\
name: html-tiny
seed: 0
data:
  source: synthetic
  synthetic: {n: 400, n_classes: 4, image_size: 8, minority_fraction: 0.2}
  test_fraction: 0.3
model: {name: small_cnn, kwargs: {width: 4}}
train: {epochs: 1, batch_size: 64}
compress:
  - method: uniform
    bits: 4
compare:
  fq-3: [{method: fairquant, budget: {avg_bits: 3}}]
finetune: {epochs: 1}
energy:
  meters: [cpu_time]
  carbon: {world_average: true}
"""

pytestmark = pytest.mark.slow  # one 2-seed run, 3 page renders, 3 Chromium launches: ~20 s

NAMES = ["fp32", "uniform-4", "fq-3"]
SEEDS = [0, 1]


class _Doc(HTMLParser):
    """Tags with attributes, and the text of every table cell by table class."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self.script_texts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("class") or ""
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "script":
            self._in_script = True
            self.script_texts.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_script:
            self.script_texts[-1] += data


def _parse(page: str) -> _Doc:
    d = _Doc()
    d.feed(page)
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("html")
    recipe = base / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = base / "out"
    argv = ["run", str(recipe), "-o", str(out), "-q", "--seeds", *map(str, SEEDS)]
    assert main(argv) == 0
    assert (out / "report.html").is_file(), (
        "fq-plugins run wrote no report.html: fq_plugins/run.py must call "
        "html_report.write_html_report(report.to_dict(), out) after each report write"
    )
    return out


@pytest.fixture(scope="module")
def report(run_dir) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


def _pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'<img class="plot"[^>]*src="data:image/png;base64,([^"]+)"', page)
    ]


def _nonblank(png: bytes) -> tuple[int, float]:
    """(distinct colours, share of non-white pixels) of a PNG."""
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.uint32)
    colours = len(np.unique((im[..., 0] << 16) | (im[..., 1] << 8) | im[..., 2]))
    return colours, float((im.min(axis=2) < 245).mean())


# --- the page of a real run -------------------------------------------------------------


def test_the_summary_table_is_mean_and_sample_std_over_seeds(report, page):
    rows = _parse(page).tables["summary"]
    header, body = rows[0], rows[1:]
    assert [r[0] for r in body] == NAMES
    col = {h: i for i, h in enumerate(header)}
    for r in body:
        vs = [v for v in report["variants"] if v["variant"] == r[0]]
        assert sorted(v["seed"] for v in vs) == SEEDS
        assert r[col["seeds"]] == str(len(SEEDS))
        for head, key in (
            ("accuracy", "accuracy"),
            ("worst-group acc", "worst_group_accuracy"),
            ("mean-group acc", "mean_group_accuracy"),
            ("gap", "accuracy_gap"),
        ):
            x = np.array([v[key] for v in vs], dtype=np.float64)
            mean, std = (float(t) for t in r[col[head]].split(" ± "))
            assert mean == pytest.approx(x.mean(), abs=5e-5), (r[0], head)
            assert std == pytest.approx(x.std(ddof=1), abs=5e-5), (r[0], head)
        e = np.array([v["energy_joules"] for v in vs])
        # printed with 3 significant digits: off by at most half a unit in the third (≤ 0.5 %)
        assert float(r[col["energy (J)"]].split(" ± ")[0]) == pytest.approx(e.mean(), rel=5e-3)
        assert r[col["energy method"]] == "estimated:cpu-time-default"
        bits = np.array([v["cost"]["avg_bits_param"] for v in vs])
        assert float(r[col["avg bits"]].split(" ± ")[0]) == pytest.approx(bits.mean(), abs=5e-3)
    per_seed = _parse(page).tables["per-seed"]
    assert len(per_seed) - 1 == len(NAMES) * len(SEEDS)


def test_plot_data_is_the_mean_over_seeds(report):
    """The numbers behind the plots, against numpy over the report's variants."""
    groups = _by_name(report["variants"])
    pareto, (gnames, gmeans, gstds), layers, energy = _aggregate(groups)
    assert gnames == report["dataset"]["groups"]
    for i, name in enumerate(NAMES):
        vs = groups[name]
        acc = np.array([v["accuracy"] for v in vs])
        assert pareto[i].accuracy == pytest.approx(acc.mean(), abs=1e-12)
        assert pareto[i].accuracy_std == pytest.approx(acc.std(ddof=1), abs=1e-12)
        for g, gname in enumerate(gnames):
            ga = np.array([v["group_accuracy"][gname] for v in vs])
            assert gmeans[i][g] == pytest.approx(ga.mean(), abs=1e-12)
            assert gstds[i][g] == pytest.approx(ga.std(ddof=1), abs=1e-12)
        total = sum(energy[i].phases.values())
        assert total == pytest.approx(np.mean([v["energy_joules"] for v in vs]), rel=1e-9)
        assert energy[i].kind == "estimated"
    # per-layer bits: only the quantized variants; fq-3's layers vary, uniform-4's are all 4
    assert [lb.name for lb in layers] == NAMES[1:]
    fq = groups["fq-3"]
    for j, lname in enumerate(layers[1].layers):
        b = [
            next(lc for lc in v["cost"]["layers"] if lc["name"] == lname)["bits_param"] for v in fq
        ]
        assert layers[1].bits[j] == pytest.approx(np.mean(b), abs=1e-12)
    assert layers[0].bits == pytest.approx([4.0] * len(layers[0].bits))


@pytest.mark.skipif(not have_matplotlib(), reason="matplotlib (the plot extra) not installed")
def test_every_plot_is_embedded_and_not_blank(page):
    doc = _parse(page)
    figures = [a.get("id") for t, a in doc.tags if t == "figure"]
    assert figures == list(PLOT_IDS)
    assert "could not be drawn" not in page
    pngs = _pngs(page)
    assert len(pngs) == len(PLOT_IDS)
    for png in pngs:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        colours, ink = _nonblank(png)
        assert colours > 20 and ink > 0.02, (colours, ink)


def test_nothing_is_loaded_from_outside_the_page(page):
    doc = _parse(page)
    for tag, attrs in doc.tags:
        for k in ("src", "href", "action", "data", "poster"):
            v = attrs.get(k)
            assert v is None or v.startswith(("data:", "#")), (tag, k, v)
    assert not re.search(r"url\(\s*['\"]?(?!data:)", page), "a CSS url() would fetch"
    assert "@import" not in page and "http://" not in page.replace("http-equiv", "")
    csp = next(a["content"] for t, a in doc.tags if t == "meta" and a.get("http-equiv"))
    assert "default-src 'none'" in csp and "img-src data:" in csp
    assert len(doc.script_texts) == 1


def test_the_recipe_and_status_are_shown(report, page):
    import yaml

    pre = re.search(r'<pre class="recipe">(.*?)</pre>', page, re.S)
    assert pre is not None
    import html

    assert yaml.safe_load(html.unescape(pre.group(1))) == report["recipe"]
    assert 'class="status status-ok">ok<' in page


# --- escaping, failures, one seed, no matplotlib ------------------------------------------

EVIL = "<script>alert(1)</script>"


def _evil(report: dict) -> dict:
    r = copy.deepcopy(report)
    for v in r["variants"]:
        if v["variant"] == "fq-3":
            v["variant"] = EVIL
    r["recipe"]["compare"][EVIL] = r["recipe"]["compare"].pop("fq-3")
    r["recipe"]["note"] = "</pre><img src=x onerror=alert(2)>"
    r["name"] = "</title><script>alert(3)</script>"
    r["status"] = "partial"
    r["failed_variants"] = [
        {"variant": "bad&<b>", "seed": 1, "error": "diverged: loss is NaN <img src=y>"}
    ]
    return r


@pytest.fixture(scope="module")
def evil_html(report, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("evil")
    return Path(write_html_report(_evil(report), str(d)))


def test_every_report_string_is_escaped(evil_html):
    page = evil_html.read_text(encoding="utf-8")
    doc = _parse(page)
    assert len(doc.script_texts) == 1  # ours only
    assert "alert" not in doc.script_texts[0]
    assert [a.get("class") for t, a in doc.tags if t == "img"] == ["plot"] * page.count(
        '<img class="plot"'
    )
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
    summary = doc.tables["summary"]
    assert EVIL in [r[0] for r in summary]  # the cell's text is the name itself
    failed = doc.tables["failed"]
    assert failed[1] == ["bad&<b>", "1", "diverged: loss is NaN <img src=y>"]
    assert 'status status-partial">partial<' in page


def test_one_seed_without_seed_keys_has_no_spread(report):
    r = copy.deepcopy(report)
    r["variants"] = [v for v in r["variants"] if v["seed"] == 0]
    for v in r["variants"]:
        del v["seed"]
    del r["seeds"]
    page = render_html_report(r)
    rows = _parse(page).tables["summary"]
    col = {h: i for i, h in enumerate(rows[0])}
    for row, v in zip(rows[1:], r["variants"], strict=True):
        assert row[0] == v["variant"] and row[col["seeds"]] == "1"
        assert row[col["accuracy"]] == f"{v['accuracy']:.4f}"
        assert row[col["worst-group acc"]] == f"{v['worst_group_accuracy']:.4f}"
    assert "±" not in "".join(c for row in rows for c in row)
    assert "one seed" in page


def test_without_matplotlib_the_tables_stay_and_the_page_says_what_to_install(report, monkeypatch):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert not have_matplotlib()
    page = render_html_report(report)
    assert "<img" not in page
    assert "pip install &#x27;fq-plugins[plot]&#x27;" in page
    assert len(_parse(page).tables["summary"]) == 1 + len(NAMES)


def test_a_run_with_no_finished_variant_yet(report, tmp_path):
    r = copy.deepcopy(report)
    r["variants"], r["status"] = [], "running"
    path = write_html_report(r, str(tmp_path))
    page = Path(path).read_text()
    assert "No variant has finished yet" in page and "<img" not in page
    assert os.listdir(tmp_path) == ["report.html"]  # written through .tmp, none left


def test_bad_input_is_an_fq_error_that_says_what_to_pass(tmp_path):
    with pytest.raises(FQError, match=r"to_dict"):
        write_html_report("report.json", str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(FQError, match=r"variants'\]\[0\] has no 'variant'"):
        render_html_report({"variants": [{"accuracy": 0.5}]})
    with pytest.raises(FQError, match="could not write"):
        write_html_report({"variants": []}, str(tmp_path / "missing" / "dir"))


def test_energy_kind_labels():
    assert energy_kind("measured:rapl") == "measured"
    assert energy_kind("measured:nvml+measured:rapl") == "measured"
    assert energy_kind("estimated:cpu-time-default") == "estimated"
    assert energy_kind("estimated:tdp+measured:rapl") == "mixed"
    assert energy_kind("none") == "none" and energy_kind(None) == "none"


def _front_oracle(points: list[tuple[float, float]]) -> list[int]:
    """O(n²) from the definition: nobody has bits ≤ and accuracy ≥ with one strict; of exact
    duplicates the first index stands."""
    keep = []
    for i, (b, a) in enumerate(points):
        if not (math.isfinite(b) and math.isfinite(a)):
            continue
        dominated = any(
            (b2 <= b and a2 >= a and (b2 < b or a2 > a)) or ((b2, a2) == (b, a) and j < i)
            for j, (b2, a2) in enumerate(points)
            if j != i and math.isfinite(b2) and math.isfinite(a2)
        )
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1.0, 2.0, 2.5, 3.0, 4.0, 8.0, 32.0, math.nan]),
            st.sampled_from([0.1, 0.5, 0.55, 0.6, 0.9, math.nan]),
        ),
        max_size=12,
    )
)
def test_pareto_front_matches_the_definition(points):
    assert pareto_front(points) == _front_oracle(points)


# --- headless Chromium ----------------------------------------------------------------------


def _chromium() -> str | None:
    return (
        os.environ.get("FQ_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


def _browse(browser: str, url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def _console(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium not found (Debian: apt-get install -y chromium; .ci/run "
    "installs it; or set FQ_CHROMIUM=/path/to/chrome)",
)
@pytest.mark.skipif(not have_matplotlib(), reason="matplotlib (the plot extra) not installed")
def test_chromium_renders_every_plot_without_console_errors(run_dir, evil_html, tmp_path):
    browser = _chromium()
    assert browser is not None
    url = (run_dir / "report.html").resolve().as_uri()
    dom = _browse(browser, url, tmp_path / "p1", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console(dom.stderr) == []
    n = len(PLOT_IDS)
    assert f'data-plots-rendered="{n}/{n}"' in dom.stdout, "a plot did not decode in Chromium"
    assert ">(this plot did not render)" not in dom.stdout

    shot = tmp_path / "shot.png"
    res = _browse(browser, url, tmp_path / "p2", "--window-size=1280,3600", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    assert _console(res.stderr) == []
    colours, ink = _nonblank(shot.read_bytes())
    assert colours > 200 and ink > 0.05, (colours, ink)

    res = _browse(browser, evil_html.as_uri(), tmp_path / "p3", "--dump-dom")
    assert res.returncode == 0 and _console(res.stderr) == []
    assert res.stdout.count("<script") == 1 and "<img src=" not in res.stdout
    assert f'data-plots-rendered="{n}/{n}"' in res.stdout
