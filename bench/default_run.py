"""Wall time of `fq-plugins run` with no arguments (the README's main command).

Target: ≤ 5 minutes on a 2-core machine. Runs the command REPEATS times back to back in a
fresh temporary folder, prints a table and writes bench/results/default_run.json.

    python bench/default_run.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    exe = shutil.which("fq-plugins")
    cmd = [exe, "run"] if exe else [sys.executable, "-m", "fq_plugins", "run"]
    times = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                sys.exit(f"run {i} failed:\n{out.stderr}")
            report = json.loads(next(Path(tmp, "fq-runs").glob("*/report.json")).read_text())
        times.append(wall)
        print(f"run {i + 1}: {wall:.1f} s (pipeline {report['wall_seconds']:.1f} s)")
    result = {
        "command": " ".join(["fq-plugins", "run"]),
        "wall_seconds": times,
        "max_seconds": max(times),
        "target_seconds": 300,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": dt.date.today().isoformat(),
    }
    print(f"max {max(times):.1f} s of a 300 s target on {os.cpu_count()} CPUs")
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "default_run.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
