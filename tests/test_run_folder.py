"""The run folder: names stay inside it, it is never overwritten unless asked, one writer,
and SIGTERM leaves a report that says "interrupted" with every finished variant loadable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fq_plugins.errors import ConfigError, FQError
from fq_plugins.recipe import load_recipe
from fq_plugins.run import run
from fq_plugins.run_folder import LOCK_NAME, file_in, locked, prepare_folder

from .conftest import TINY


@pytest.mark.parametrize(
    "name", ["../../../x/important", "/abs/path", "a/b", "..", "", "x" * 101, "a b"]
)
def test_variant_names_that_are_not_file_names_are_refused(name):
    with pytest.raises(ConfigError, match=r"variant name .* is not allowed"):
        load_recipe({**TINY, "compare": {name: [{"method": "uniform", "bits": 2}]}})


def test_file_in_stays_inside_the_folder(tmp_path):
    for name in ("uniform+codeq", "../../etc/passwd", "a/../../b", "..."):
        p = Path(file_in(str(tmp_path), name, ".fqz"))
        assert p.parent == tmp_path and p.name.endswith(".fqz")


def test_a_folder_with_files_is_never_overwritten_unless_asked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    recipe = load_recipe(TINY)
    with pytest.raises(FQError, match=r"already holds 1 file.*--overwrite"):
        run(recipe, output_dir=str(out), log=lambda s: None)
    with pytest.raises(FQError, match="not a run folder"):
        run(recipe, output_dir=str(out), log=lambda s: None, overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"
    assert sorted(os.listdir(out)) == ["thesis.tex"]


def test_overwrite_replaces_a_previous_runs_files_only(tmp_path):
    out = tmp_path / "run"
    recipe = load_recipe({**TINY, "compare": {"old-variant": [{"method": "uniform", "bits": 2}]}})
    run(recipe, output_dir=str(out), log=lambda s: None)
    assert (out / "old-variant.fqz").exists()
    (out / "notes.txt").write_text("mine")
    run(load_recipe(TINY), output_dir=str(out), log=lambda s: None, overwrite=True)
    assert not (out / "old-variant.fqz").exists()  # no old .fqz mixed with the new run
    assert (out / "notes.txt").read_text() == "mine"
    report = json.loads((out / "report.json").read_text())
    assert [v["variant"] for v in report["variants"]] == ["fp32", "uniform-4"]


def test_a_second_writer_gets_in_use(tmp_path):
    folder = str(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK_NAME).write_text(str(sleeper.pid))
        with (
            pytest.raises(FQError, match=rf"in use by another run \(process {sleeper.pid}\)"),
            locked(folder),
        ):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()
    # the lock of a process that is gone is taken over, and released afterwards
    with locked(folder):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()


def test_output_under_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FQError, match="is a file"):
        prepare_folder(str(f))
    with pytest.raises(FQError, match="cannot create output folder"):
        prepare_folder(str(f / "sub"))


@pytest.mark.slow
def test_sigterm_mid_run_leaves_an_interrupted_report_and_loadable_variants(tmp_path):
    from fq_plugins.models import build_model
    from fq_plugins.storage import load_compressed

    recipe = {
        **TINY,
        "data": {"source": "synthetic", "synthetic": {"n": 1200, "n_classes": 4, "image_size": 8}},
        "finetune": {"epochs": 3},
        "compare": {f"u{b}": [{"method": "uniform", "bits": b}] for b in (8, 6, 5, 3, 2)},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fq_plugins", "run", str(path), "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    report = out / "report.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if report.exists() and len(json.loads(report.read_text())["variants"]) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    data = json.loads(report.read_text())
    assert data["status"] == "interrupted" and "SIGTERM" in data["error"]
    assert not (out / LOCK_NAME).exists()
    done = [v for v in data["variants"] if v["variant"] != "fp32"]
    assert done, "the run was stopped before a compressed variant finished"
    for v in done:
        model = build_model("small_cnn", in_channels=3, image_size=8, n_classes=4, width=4)
        load_compressed(v["checkpoint"]["path"], model)


# --- bad input: refused before training, never a wrong result reported as right --------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: &x [1, 2]\nb: *x\n", "aliases"),
        ("name: a\nname: b\n", "duplicate key 'name'"),
        ("train:\n  epochs: 1\n  epochs: 2\n", "duplicate key 'epochs'"),
    ],
)
def test_yaml_aliases_and_duplicate_keys_are_refused(tmp_path, text, match):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_recipe(p)


def test_json_duplicate_keys_big_files_and_non_utf8_are_refused(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"seed": 1, "seed": 2}')
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_recipe(p)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * ((1 << 20) + 10))
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_recipe(big)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_recipe(bad)
    utf32 = tmp_path / "utf32.yaml"
    utf32.write_bytes("name: x\n".encode("utf-32"))
    with pytest.raises(ConfigError, match=r"not UTF-8|NUL"):
        load_recipe(utf32)


def test_an_empty_test_split_is_refused_before_training(tmp_path):
    recipe = load_recipe(
        {**TINY, "data": {**TINY["data"], "max_examples": 10, "test_fraction": 0.05}}
    )
    with pytest.raises(ConfigError, match="test split is empty"):
        run(recipe, output_dir=str(tmp_path / "o"), log=lambda s: None)
    assert not (tmp_path / "o").exists()  # nothing was written


def test_a_diverged_training_stops_with_the_phase_and_the_fix(tmp_path):
    recipe = load_recipe({**TINY, "train": {"epochs": 2, "lr": 1e12}})
    with pytest.raises(
        FQError, match=r"\[train\] the loss is not finite .* lower the learning rate"
    ):
        run(recipe, output_dir=str(tmp_path / "o"), log=lambda s: None)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["status"] == "failed" and report["variants"] == []


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            {"compress": [{"method": "uniform", "targets": {"include": ["nothing.*"]}}]},
            r"compress\[0\]\.targets: matches no module",
        ),
        (
            {"compress": [{"method": "fairquant", "budget": {"avg_bits": 1.0}}]},
            r"compress\[0\]\.budget\.avg_bits: avg_bits 1 cannot be met",
        ),
        ({"model": {"kwargs": {"widht": 4}}}, r"model\.kwargs: 'small_cnn' does not accept"),
        (
            {"compress": [{"method": "momos", "k": 10**8}]},
            r"compress\[0\]\.k: k = 100000000 is larger",
        ),
        (
            {"compare": {"q": [{"method": "uniform", "bits": 4}, {"method": "fairquant"}]}},
            r"already quantized",
        ),
    ],
)
def test_what_would_fail_after_training_fails_before_it(tmp_path, override, match):
    logs: list[str] = []
    recipe = load_recipe({**TINY, **override})
    with pytest.raises(ConfigError, match=match):
        run(recipe, output_dir=str(tmp_path / "o"), log=logs.append)
    assert not any("[train] epoch" in line for line in logs)  # no training was spent
    assert not (tmp_path / "o").exists()


def test_a_full_disk_names_the_file_and_leaves_no_half_file(tmp_path, monkeypatch):
    """ENOSPC while writing a variant's checkpoint: one FQError naming the file (and the
    fix), no ``.tmp`` left, the report marks the variant failed and keeps the rest."""
    import errno
    import json

    import fq_plugins.run_folder as rf
    from fq_plugins.manager import get_plugin_manager
    from fq_plugins.recipe import load_recipe
    from fq_plugins.run import run

    from .conftest import TINY

    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith(".fqz.tmp") else f

    monkeypatch.setattr(rf, "open", fake_open, raising=False)
    pm = get_plugin_manager()
    out = tmp_path / "o"
    run(
        load_recipe(TINY, plugin_manager=pm),
        plugin_manager=pm,
        output_dir=str(out),
        log=lambda m: None,
    )
    data = json.loads((out / "report.json").read_text())
    assert data["status"] == "partial" and [v["variant"] for v in data["variants"]] == ["fp32"]
    (failed,) = data["failed_variants"]
    assert "could not write" in failed["error"] and "uniform-4.fqz" in failed["error"]
    assert "No space left on device; free some space and rerun with --resume" in failed["error"]
    assert not list(out.glob("*.tmp")) and not (out / "uniform-4.fqz").exists()
