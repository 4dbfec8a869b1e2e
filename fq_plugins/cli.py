"""Command line: ``fq-plugins run | report | plugins | list | validate | show-default | co2st``.

User errors (:class:`~fq_plugins.errors.FQError`) print one message and exit 2; nothing
already computed is lost (``run`` writes its report after every variant).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError, FQError

if TYPE_CHECKING:
    from .manager import FQPluginManager

__all__ = ["main"]

_LIST_FAMILIES = ("compressors", "metrics", "meters", "selectors")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    from .recipe import parse_recipe_text

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=2); got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_recipe_text(v, source=f"--set {item!r}: the value")
    return out


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fq-plugins",
        description="Fairness-aware model compression and energy accounting.",
        epilog="Docs: docs/index.md. Errors exit with status 2 and one message.",
    )
    p.add_argument("--version", action="version", version=f"fq-plugins {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="train FP32, compress, evaluate fairness/size/energy, print and write a report",
        description=(
            "Run a complete compress → evaluate → report job. With no RECIPE, runs the embedded "
            "default, a tour of the library: a small CNN on generated images with a harder "
            "minority group, FP32 vs FairQuant (learned bits, 2.5 on average), Uniform-4/3/2, "
            "CoDeQ, BMRS→FairQuant and MoMos (see `fq-plugins show-default`). Writes "
            "report.json, results.csv and recipe.yaml to OUTPUT_DIR/<time>-<name>/ and prints "
            "a comparison table."
        ),
    )
    r.add_argument("recipe", nargs="?", help="recipe file (.yaml/.yml or .json); default: embedded")
    r.add_argument(
        "-o", "--output", metavar="DIR", help="write into exactly this folder (new or empty)"
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="with -o: replace the files of a previous run in that folder",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="with -o: continue the run in that folder (same recipe; more --seeds allowed), "
        "skipping every finished (variant, seed)",
    )
    seed = r.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, help="override recipe seed")
    seed.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="N",
        help="run every variant once per seed and report mean ± std (e.g. --seeds 0 1 2)",
    )
    r.add_argument("--epochs", type=int, help="override train.epochs")
    r.add_argument("--finetune-epochs", type=int, help="override finetune.epochs")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key by dotted path, value in YAML (repeatable), "
        "e.g. --set data.synthetic.n=2000",
    )
    r.add_argument("-q", "--quiet", action="store_true", help="no progress lines; table only")
    r.add_argument("--json", action="store_true", help="print the report JSON instead of the table")

    pl = sub.add_parser(
        "plugins", help="list loaded plugins with distribution, version, hooks, names"
    )
    pl.add_argument("--json", action="store_true", help="machine-readable output")

    ls = sub.add_parser("list", help="list registered names of a family with descriptions")
    ls.add_argument("family", choices=_LIST_FAMILIES)
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    v = sub.add_parser("validate", help="check a recipe and print it resolved (JSON)")
    v.add_argument("recipe", help="recipe file")

    sub.add_parser("show-default", help="print the embedded default recipe (YAML)")

    rp = sub.add_parser(
        "report",
        help="print the table of a run folder and rewrite its report.html and results.csv",
        description=(
            "Reads RUN_DIR/report.json (written by `fq-plugins run`, also a partial one), "
            "prints the comparison table and rewrites report.html and results.csv beside it. "
            "Nothing is recomputed."
        ),
    )
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run folder holding report.json")

    c = sub.add_parser(
        "co2st",
        help="a-priori energy/CO2 estimate of generative-AI usage (CO2ST)",
        description=(
            "CO2ST a-priori estimate: energy E = (units + 0.1 × input tokens) × E_p(task) Wh, "
            "emissions C = intensity × E, with equivalents (km driven = 4 × kg, flight "
            "minutes = 0.24 × kg). A unit is one output token of the task's model. Nothing "
            "is measured: figures are labelled estimated:co2st. Definitions: docs/measurement.md."
        ),
    )
    c.add_argument(
        "--task",
        required=True,
        metavar="TASK",
        help="text-to-text | text-to-image | image-to-text | text-to-audio | text-to-video",
    )
    c.add_argument(
        "--units", required=True, type=float, metavar="N", help="output tokens (units), ≥ 0"
    )
    c.add_argument(
        "--input-tokens", type=float, default=0.0, metavar="N", help="input tokens (weighted 0.1)"
    )
    src = c.add_mutually_exclusive_group()
    src.add_argument(
        "--intensity",
        type=float,
        metavar="KG_PER_KWH",
        help="grid intensity in kgCO2e/kWh (default 0.481, CO2ST)",
    )
    src.add_argument(
        "--country", metavar="ISO", help="take the intensity from the bundled table (e.g. DNK)"
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _plugin_manager(*, refuse_conflicts: bool = False) -> FQPluginManager:
    """Build the plugin manager, printing every load error as a warning on stderr.

    :param refuse_conflicts: raise the first name conflict (``DuplicateNameError``, exit
        status 2), after printing any further ones as warnings; otherwise print them all as
        warnings.
    """
    from .manager import get_plugin_manager

    pm = get_plugin_manager()
    for err in pm.load_errors:
        print(f"warning: {err}", file=sys.stderr)
    conflicts = pm.conflicts()
    for conflict in conflicts[1:] if refuse_conflicts else conflicts:
        print(f"warning: {conflict}", file=sys.stderr)
    if refuse_conflicts:
        pm.check_conflicts()
    return pm


def _cmd_plugins(args: argparse.Namespace) -> int:
    pm = _plugin_manager()
    infos = pm.plugin_infos()
    conflicts = [
        {"family": family, "name": name, "plugins": plugins}
        for family, reg in pm.registries.items()
        for name, plugins in reg.conflicts().items()
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "plugins": [i.to_dict() for i in infos],
                    "errors": [str(e) for e in pm.load_errors],
                    "conflicts": conflicts,
                },
                indent=2,
            )
        )
    else:
        others = {
            (c["family"], c["name"], p): [q for q in c["plugins"] if q != p]
            for c in conflicts
            for p in c["plugins"]
        }
        for i in infos:
            kind = "built-in" if i.builtin else "third-party"
            print(f"{i.name}  ({i.distribution} {i.version}, {kind})")
            print(f"  hooks: {', '.join(i.hooks)}")
            for fam, names in sorted(i.registered.items()):
                shown = [
                    f"{n} (conflict: also {', '.join(others[fam, n, i.name])})"
                    if (fam, n, i.name) in others
                    else n
                    for n in names
                ]
                print(f"  {fam}: {', '.join(shown)}")
    return 1 if pm.load_errors or conflicts else 0


def _cmd_list(args: argparse.Namespace) -> int:
    pm = _plugin_manager()
    reg = pm.registries[args.family]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "description": e.description,
                        "plugin": e.plugin,
                        "plugins": e.plugins,
                        "conflict": e.conflict,
                    }
                    for e in reg
                ],
                indent=2,
            )
        )
    else:
        width = max((len(e.name) for e in reg), default=0)
        for e in reg:
            mark = f"  [conflict: {' and '.join(e.plugins)}]" if e.conflict else ""
            print(f"{e.name.ljust(width)}  {e.description}{mark}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .recipe import load_recipe
    from .run import run

    pm = _plugin_manager(refuse_conflicts=True)
    overrides = _parse_set(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.resume and not args.output:
        raise FQError("--resume needs the run folder to continue: fq-plugins run --resume -o DIR")
    if args.resume and args.overwrite:
        raise FQError("--resume continues a run folder and --overwrite replaces it; choose one")
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.finetune_epochs is not None:
        overrides["finetune.epochs"] = args.finetune_epochs
    recipe = load_recipe(args.recipe, plugin_manager=pm, overrides=overrides)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    import os

    from .run import make_output_dir

    created = bool(args.output) and not os.path.exists(args.output)
    if args.output and not args.resume:
        from .run_folder import prepare_folder

        prepare_folder(args.output, overwrite=args.overwrite)  # before any training
    out = args.output or make_output_dir(recipe.output.dir, recipe.name)
    _signals_interrupt()
    t_start = time.time()

    def written_now(path: str) -> bool:  # a report this invocation wrote (not a resumed one's)
        return os.path.exists(path) and os.path.getmtime(path) >= t_start - 1e-3

    try:
        report, out = run(
            recipe,
            plugin_manager=pm,
            output_dir=out,
            log=log,
            overwrite=args.overwrite,
            resume=args.resume,
        )
    except KeyboardInterrupt:
        partial = os.path.join(out, "report.json")
        if written_now(partial):
            print(f"fq-plugins: partial report (status 'interrupted'): {partial}", file=sys.stderr)
        raise
    except FQError as exc:
        partial = os.path.join(out, "report.json")
        if written_now(partial):
            raise FQError(f"{exc}\npartial report (status 'failed'): {partial}") from None
        if (created or not args.output) and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)  # failed before writing anything: leave no empty folder
        raise
    from .engine.distributed import is_main

    if not is_main():  # under torchrun every rank computes; rank 0 prints and writes
        return 1 if report.failed_variants else 0
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from .report import format_table

        # the table is the result: stdout, after the progress lines on stderr
        print(format_table(report.variant_dicts(), metrics=recipe.fairness.metrics))
        print(f"report: {out}/report.json")
    for f in report.failed_variants:
        seed = f" (seed {f['seed']})" if len(report.seeds) > 1 else ""
        print(f"fq-plugins: variant {f['variant']!r}{seed} failed: {f['error']}", file=sys.stderr)
    return 1 if report.failed_variants else 0


def _signals_interrupt() -> None:
    """SIGTERM and SIGHUP stop a run like Ctrl-C: the report says "interrupted", every
    finished variant stays on disk."""
    import signal

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, handler)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .recipe import load_recipe
    from .run import build_datasets, check_recipe

    pm = _plugin_manager(refuse_conflicts=True)
    recipe = load_recipe(args.recipe, plugin_manager=pm)
    # what would fail only at run time: the data, the model, every method's attach
    train, _ = build_datasets(recipe.data, recipe.seed)
    check_recipe(recipe, train, pm)
    print(json.dumps(recipe.model_dump(mode="json"), indent=2))
    n = len(recipe.variants())
    print(
        f"ok: data, model and {n} pipeline{'s' if n != 1 else ''} checked (every method attached "
        "to a copy of the model)",
        file=sys.stderr,
    )
    return 0


def _cmd_co2st(args: argparse.Namespace) -> int:
    from .energy.co2st import co2st_estimate

    est = co2st_estimate(
        args.task,
        args.units,
        input_tokens=args.input_tokens,
        intensity_kg_per_kwh=args.intensity,
        country=args.country,
    )
    print(json.dumps(est.to_dict(), indent=2) if args.json else est.format())
    return 0


def _cmd_show_default(args: argparse.Namespace) -> int:
    from .recipe import default_recipe_text

    print(default_recipe_text(), end="")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import os

    from .html_report import write_html_report
    from .report import format_table, results_csv
    from .run_folder import atomic_write

    path = os.path.join(args.run_dir, "report.json")
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"no report.json in {args.run_dir!r}; give the folder `fq-plugins run` printed "
            "(report: <folder>/report.json)",
            key="RUN_DIR",
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable report ({exc})", key="RUN_DIR") from None
    variants = report.get("variants") if isinstance(report, dict) else None
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise ConfigError(
            f"{path} has no list of variants: not an fq-plugins report", key="RUN_DIR"
        )
    metrics = ((report.get("recipe") or {}).get("fairness") or {}).get("metrics")
    print(format_table(variants, metrics=metrics))
    atomic_write(os.path.join(args.run_dir, "results.csv"), results_csv(variants))
    html = write_html_report(report, args.run_dir)
    print(f"report: {html}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {
        "run": _cmd_run,
        "plugins": _cmd_plugins,
        "list": _cmd_list,
        "validate": _cmd_validate,
        "show-default": _cmd_show_default,
        "co2st": _cmd_co2st,
        "report": _cmd_report,
    }
    try:
        return handlers[args.command](args)
    except FQError as exc:
        print(f"fq-plugins: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fq-plugins: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
