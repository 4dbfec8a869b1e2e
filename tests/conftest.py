from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fq_plugins.manager import get_plugin_manager

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # NNCF compiles a C++ extension on first use; a private folder avoids stale locks.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".pytest_cache" / "torch_extensions"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def pm():
    """Built-ins only: third-party plugins installed in the environment stay out."""
    return get_plugin_manager(autoload=False)


def data_dir() -> Path | None:
    d = Path(os.environ.get("FQ_DATA_DIR", ROOT.parent / "shared" / "data"))
    return d if d.is_dir() else None


TINY = {
    "name": "tiny",
    "data": {"source": "synthetic", "synthetic": {"n": 600, "n_classes": 4, "image_size": 8}},
    "model": {"name": "small_cnn", "kwargs": {"width": 4}},
    "train": {"epochs": 1, "batch_size": 64},
    "compress": [{"method": "uniform", "bits": 4}],
    "finetune": {"epochs": 1},
}


def run_cli(*args: str, cwd: str | Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run ``python -m fq_plugins ARGS`` as a user would; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fq_plugins", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TORCHRUN = Path(sys.executable).with_name("torchrun")


def torchrun(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300, nproc: int = 2
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node NPROC ARGS`` with one thread per process and
    the repository on PYTHONPATH; skips the test without torchrun, fails it (with the output's
    tails) on a non-zero exit."""
    if not TORCHRUN.exists():
        pytest.skip("torchrun is not installed next to this Python")
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def fake_rapl(tmp: Path, package_uj: int = 10_000_000, dram_uj: int = 20_000_000) -> Path:
    """A powercap tree with one package and one DRAM zone (for ``FQ_POWERCAP_ROOT``)."""
    from .test_rapl import zone

    root = tmp / "powercap"
    zone(root, "intel-rapl:0", "package-0", package_uj)
    zone(root, "intel-rapl:0:0", "dram", dram_uj)
    return root
