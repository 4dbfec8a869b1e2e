"""Real installed third-party distributions for plugin tests: a ``*.dist-info`` folder with
``entry_points.txt`` and the plugin module, found by ``importlib.metadata`` on ``sys.path``."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_dist(
    tmp_path: Path,
    dist: str,
    ep_name: str,
    module: str,
    source: str,
    version: str = "1.2.3",
    extra_modules: dict[str, str] | None = None,
) -> Path:
    """Write the distribution into ``tmp_path/site`` (returned; put it on the path).

    :param extra_modules: more modules to write beside the plugin module (name → source).
    """
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    for name, text in {module: source, **(extra_modules or {})}.items():
        (site / f"{name}.py").write_text(textwrap.dedent(text), encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[fq_plugins]\n{ep_name} = {module}\n", encoding="utf-8"
    )
    return site
