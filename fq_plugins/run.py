"""The ``fq-plugins run`` pipeline: train FP32 → compress each variant → evaluate → report.

Everything is built from the recipe: data (embedded synthetic set or an ``.npz``), a model
built from code (never downloaded), the compression pipelines, fairness metrics and energy
meters from the plugin registries. The report is written after every variant, so an error
later in the run loses nothing already computed.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import functools
import io
import json
import os
import platform
import time
import zlib
from collections.abc import Callable
from typing import Any

import torch
import yaml
from torch import nn

from ._log import Log, stderr_log
from .data.base import GroupDataset, iterate_batches, stratified_split
from .data.npz import load_npz
from .data.synthetic import make_synthetic
from .energy.carbon import CarbonModel
from .energy.tracker import EnergyPredictions, EnergyTracker, merge_readings, resolve_meters
from .engine import FINALIZE_TOLERANCE, CompressionPipeline, Objective, build_report, fit
from .engine import evaluate as engine_evaluate
from .engine.distributed import init_from_env, is_main, rank_world, resolve_device
from .errors import ConfigError, FQError
from .fairness.regularizers import RegularizerSpec
from .fairness.table import GroupConfusion
from .manager import FQPluginManager, get_plugin_manager
from .models import build_model
from .plots import plot_layer_bits
from .protocols import AttachContext, EnergyReading, MethodConfig
from .recipe import DataSpec, Recipe
from .report import EvaluationReport, RunReport
from .run_folder import atomic_write, file_in, locked, prepare_folder
from .session import CompressionSession

__all__ = [
    "EnergyTracker",
    "build_datasets",
    "evaluate",
    "merge_readings",
    "resolve_meters",
    "run",
    "train_model",
]


# --- data ----------------------------------------------------------------------------


def _reader(module: str, name: str) -> Callable[[], Callable[..., GroupDataset]]:
    def get() -> Callable[..., GroupDataset]:
        import importlib

        return getattr(importlib.import_module(f"fq_plugins.data.{module}"), name)

    return get


_READERS = {
    "images": _reader("images", "load_images"),
    "fitzpatrick17k": _reader("fitzpatrick", "load_fitzpatrick17k"),
    "isic2019": _reader("isic", "load_isic2019"),
    "tabular": _reader("tabular", "load_tabular"),
}


def build_datasets(spec: DataSpec, seed: int) -> tuple[GroupDataset, GroupDataset]:
    """Train and test splits (stratified by class × group), channels standardized on train."""
    if spec.source == "synthetic":
        s = spec.synthetic
        ds = make_synthetic(
            s.n,
            n_classes=s.n_classes,
            image_size=s.image_size,
            minority_fraction=s.minority_fraction,
            majority_amplitude=s.majority_amplitude,
            minority_amplitude=s.minority_amplitude,
            minority_noise=s.minority_noise,
            seed=seed,
        )
    elif spec.source in _READERS:
        reader = _READERS[spec.source]()
        opts = getattr(spec, spec.source)
        kw: dict[str, Any] = {}
        if spec.source != "tabular":  # image readers decode only the subsample
            kw = {"max_examples": spec.max_examples, "seed": seed + 1}
        ds = reader(opts, key=f"data.{spec.source}", **kw)
    else:
        assert spec.path is not None and spec.group is not None  # the recipe validator checked
        path = os.path.expanduser(os.path.expandvars(spec.path))
        ds = load_npz(path, spec.group, x_key=spec.x_key, y_key=spec.y_key, layout=spec.layout)
    if spec.max_examples is not None and spec.max_examples < len(ds):
        _, ds = stratified_split(ds, spec.max_examples / len(ds), seed + 1)
    train, test = stratified_split(ds, spec.test_fraction, seed)
    for split, name in ((train, "training"), (test, "test")):
        if len(split) == 0:
            raise ConfigError(
                f"the {name} split is empty ({len(ds)} examples, test_fraction "
                f"{spec.test_fraction}): raise data.max_examples or change data.test_fraction",
                key="data.max_examples" if spec.max_examples is not None else "data.test_fraction",
            )
    if not bool(torch.isfinite(ds.x).all()):
        bad = int((~torch.isfinite(ds.x)).flatten(1).any(dim=1).sum())
        raise ConfigError(
            f"{bad} example(s) of {ds.name!r} hold NaN or infinite values; clean the data "
            "(a model trained on them reports nonsense)",
            key="data",
        )
    if spec.normalize:
        mean = train.x.mean(dim=(0, 2, 3), keepdim=True)
        std = train.x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        train.x = (train.x - mean) / std
        test.x = (test.x - mean) / std
    return train, test


# --- training and evaluation (the engine's; kept here under their old names) -----------


def train_model(
    model: nn.Module,
    data: GroupDataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    seed: int = 0,
    session: CompressionSession | None = None,
    regularizer: RegularizerSpec | None = None,
    pm: FQPluginManager | None = None,
    phase: str = "train",
    log: Log = stderr_log,
    on_epoch_end: Callable[[int], None] | None = None,
) -> None:
    """:func:`fq_plugins.engine.fit` with the objective CE + λ·regularizer + penalties."""
    fit(
        model,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        seed=seed,
        session=session,
        objective=Objective(regularizer=regularizer, session=session, n_groups=data.n_groups),
        pm=pm,
        phase=phase,
        log=log,
        on_epoch_end=on_epoch_end,
    )


def evaluate(
    model: nn.Module, data: GroupDataset, batch_size: int = 512
) -> tuple[GroupConfusion, torch.Tensor]:
    """Group confusion table and logits of ``model`` on the whole of ``data`` (eval mode).

    Under DDP each rank evaluates its rows (``[rank::world]``) and the table is summed over
    ranks, so every rank holds the whole test set's table; the logits are this rank's rows.
    """
    rank, world = rank_world()
    if world == 1:
        return engine_evaluate(model, data, batch_size=batch_size, all_reduce=False)
    mine = data.subset(torch.arange(rank, len(data), world))
    return engine_evaluate(model, mine, batch_size=batch_size, all_reduce=True)


# --- the pipeline --------------------------------------------------------------------


def _environment() -> dict[str, Any]:
    import numpy

    from . import __version__

    return {
        "fq_plugins": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": rank_world()[1],
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def _build_model(recipe: Recipe, train: GroupDataset) -> nn.Module:
    try:
        return build_model(
            recipe.model.name,
            in_channels=train.x.shape[1],
            image_size=train.x.shape[-1],
            n_classes=train.n_classes,
            weights=(
                os.path.expanduser(os.path.expandvars(recipe.model.weights))
                if recipe.model.weights
                else None
            ),
            **recipe.model.kwargs,
        )
    except TypeError as exc:  # a kwarg the architecture does not take
        raise ConfigError(
            f"{recipe.model.name!r} does not accept these options: {exc}", key="model.kwargs"
        ) from None
    except (ValueError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"{recipe.model.name!r} cannot be built with {recipe.model.kwargs}: {exc}",
            key="model.kwargs",
        ) from None


def check_recipe(
    recipe: Recipe,
    train: GroupDataset,
    pm: FQPluginManager,
    variants: dict[str, list[MethodConfig]] | None = None,
) -> None:
    """Catch before any training what would otherwise fail after it: build the model and
    attach every variant's methods to a copy (calibration on one batch, ``dry_run``, so a
    method may skip costly measurements). Raises the methods' own ConfigErrors, with the
    recipe key path. The global RNG is left as it was (the run's model is built after)."""
    with torch.random.fork_rng(devices=[]):
        _check_recipe(recipe, train, pm, variants)


def _check_recipe(
    recipe: Recipe,
    train: GroupDataset,
    pm: FQPluginManager,
    variants: dict[str, list[MethodConfig]] | None,
) -> None:
    from .fairness.rates import pos_label_in_range

    pos_label_in_range(recipe.fairness.pos_label, train.n_classes)
    model = _build_model(recipe, train)

    def calib() -> Any:  # the order the run's first seed calibrates in (_run_variant)
        gen = torch.Generator().manual_seed(recipe.seed)
        return iterate_batches(train, recipe.train.batch_size, shuffle=True, generator=gen)

    batch = next(iter(calib()))
    ctx = AttachContext(
        calib_batches=calib,
        group_key=recipe.fairness.group_key,
        n_groups=train.n_groups,
        example_input=batch[0][:2],
        n_train=len(train),
        dry_run=True,
    )
    for vname, methods in (variants if variants is not None else recipe.variants()).items():
        key = "compress" if vname not in recipe.compare else f"compare.{vname}"
        pipe = CompressionPipeline(methods, plugin_manager=pm, key=key, context=ctx)
        m = pipe.start(copy.deepcopy(model))
        while not pipe.is_last_stage:
            m = pipe.next_stage(m)


def _write_text(path: str, text: str) -> None:
    """Write ``path`` atomically (a crash mid-write never leaves half a file); under DDP
    only rank 0 writes."""
    if is_main():
        atomic_write(path, text)


def _write_report(report: RunReport, out: str) -> None:
    if is_main():  # under DDP every rank holds the same report; rank 0 writes it
        report.write(out)


def make_output_dir(parent: str, name: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(parent, f"{stamp}-{name}")
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    os.makedirs(path)
    return path


def run(
    recipe: Recipe,
    *,
    plugin_manager: FQPluginManager | None = None,
    output_dir: str | None = None,
    log: Log = stderr_log,
    overwrite: bool = False,
    resume: bool = False,
) -> tuple[RunReport, str]:
    """Run the whole job; returns the report and the folder it was written to.

    Every variant runs once per seed of ``recipe.seed_list``. ``output_dir`` must be new or
    empty (``overwrite=True`` replaces a previous run's files there; ``resume=True``
    continues the run in it, skipping every finished (variant, seed) pair); a second run
    into a folder in use fails. On an error after the output folder exists, the partial
    report (status ``failed``, or ``interrupted`` for Ctrl-C / SIGTERM) is written before
    the exception propagates.
    """
    pm = plugin_manager or get_plugin_manager()
    t_run = time.perf_counter()
    if overwrite and resume:
        raise ConfigError("--resume continues a run folder and --overwrite replaces it; choose one")
    if resume and output_dir is None:
        raise ConfigError("--resume needs the run folder to continue: give it with -o DIR")
    seeds = recipe.seed_list
    torch.manual_seed(seeds[0])
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    device = resolve_device(recipe.train.device)
    if init_from_env(device) and not is_main():
        log = _silent  # one voice: rank 0 logs and writes; every rank computes
    variants = recipe.variants()  # checks variant names before any work
    first = build_datasets(recipe.data, seeds[0])
    check_recipe(recipe, first[0], pm, variants)  # everything that can fail, before training
    carbon = recipe.energy.carbon.model()
    meters = resolve_meters(
        recipe.energy.meters, pm, log, {"country": carbon.country if carbon else None}
    )
    if is_main():
        out = output_dir or make_output_dir(recipe.output.dir, recipe.name)
        prior = read_resumable(out, recipe) if resume else None
    if rank_world()[1] > 1:  # every rank learns rank 0's folder and what it resumes
        import torch.distributed as dist

        shared: list[Any] = [(out, prior) if is_main() else None]
        dist.broadcast_object_list(shared, src=0)
        out, prior = shared[0]
    if not is_main():
        return _run_in(recipe, pm, out, first, variants, carbon, meters, log, t_run, prior, device)
    if prior is None:
        prepare_folder(out, overwrite=overwrite)
    with locked(out):
        return _run_in(recipe, pm, out, first, variants, carbon, meters, log, t_run, prior, device)


def _silent(msg: str) -> None:
    del msg


_RESUME_IGNORED = ("seed", "seeds", "output")
"""Recipe keys a resumed run may change (more seeds; where new runs go)."""


def read_resumable(out: str, recipe: Recipe) -> dict[str, Any]:
    """The report of the run in ``out`` that ``recipe`` continues (``--resume``).

    :raises FQError: no readable report there, or it was made by a different recipe
        (listing the keys that differ).
    """
    path = os.path.join(out, "report.json")
    if not os.path.isfile(path):
        raise FQError(
            f"--resume: {out!r} holds no report.json, so there is no run to continue; "
            "run without --resume to start one"
        )
    try:
        with open(path, encoding="utf-8") as f:
            prior = json.load(f)
        if not isinstance(prior, dict) or not isinstance(prior.get("variants"), list):
            raise ValueError("not a run report")
    except (OSError, ValueError) as exc:
        raise FQError(
            f"--resume: cannot read {path!r} ({exc}); it is not a readable fq-plugins report — "
            "start a new run, or --overwrite to replace this one"
        ) from None
    mine = recipe.model_dump(mode="json")
    theirs = prior.get("recipe") or {}
    differ = [
        k
        for k in dict.fromkeys([*mine, *theirs])
        if k not in _RESUME_IGNORED and mine.get(k) != theirs.get(k)
    ]
    if differ:
        raise FQError(
            f"--resume: the run in {out!r} was made by a different recipe (these keys differ: "
            f"{', '.join(differ)}); resume with the same recipe (only the seeds may change), "
            "or start a new run"
        )
    return prior


def _variant_seed(seed: int, vname: str) -> int:
    """The global RNG seed of one (variant, seed) pair, so a variant's result depends
    neither on the variants before it nor on whether the run was resumed."""
    return (seed * 1_000_003 + zlib.crc32(vname.encode())) % (2**63)


def _run_in(
    recipe: Recipe,
    pm: FQPluginManager,
    out: str,
    first: tuple[GroupDataset, GroupDataset],
    variants: dict[str, list[MethodConfig]],
    carbon: CarbonModel | None,
    meters: list[Any],
    log: Log,
    t_run: float,
    prior: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> tuple[RunReport, str]:
    device = device or torch.device("cpu")
    _write_text(
        os.path.join(out, "recipe.yaml"),
        yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False),
    )
    seeds = recipe.seed_list
    restored = []
    if prior is not None:
        default_seed = int((prior.get("recipe") or {}).get("seed", 0))
        for v in prior["variants"]:
            restored.append({**v, "seed": int(v.get("seed", default_seed))})
        seeds = list(dict.fromkeys([*(v["seed"] for v in restored), *seeds]))
    report = RunReport(
        name=recipe.name,
        recipe=recipe.model_dump(mode="json"),
        dataset=_dataset_info(*first),
        environment=_environment(),
        seeds=seeds,
        restored=restored,
    )
    if prior is not None:
        log(
            f"resuming {out}: {len(restored)} finished (variant, seed) pair(s) kept; "
            f"status was {prior.get('status')!r}"
        )
    tracker = EnergyTracker(meters, pm, log)
    predictions = EnergyPredictions(tracker, carbon, log)
    suffix = recipe.seeds is not None  # file names carry the seed when seeds are listed
    try:
        for seed in recipe.seed_list:
            todo = [v for v in ("fp32", *variants) if (v, seed) not in report.done()]
            if not todo:
                log(f"seed {seed}: every variant finished before; skipped")
                continue
            train, test = (
                first if seed == recipe.seed_list[0] else build_datasets(recipe.data, seed)
            )
            e_select: dict[str, EnergyReading] = {}
            if recipe.data.selection is not None:
                train, e_select, picked = _select(recipe, pm, train, seed, device, tracker, log)
                report.dataset.setdefault("selection", {})[str(seed)] = picked
            if len(recipe.seed_list) > 1:
                report.datasets[str(seed)] = _dataset_info(train, test)
            log(
                f"fq-plugins run {recipe.name!r}"
                f"{f' seed {seed}' if len(recipe.seed_list) > 1 else ''}: {train.name}, "
                f"{len(train)} train / {len(test)} test, {train.n_classes} classes, groups "
                f"{train.group_names} (test sizes {test.counts()['per_group']}); output {out}"
            )
            model = _fp32_model(
                device,
                recipe,
                pm,
                out,
                seed,
                train,
                test,
                report,
                tracker,
                predictions,
                carbon,
                log,
                suffix=suffix,
                extra_energy=e_select,
            )
            for vname, methods in variants.items():
                if (vname, seed) in report.done():
                    continue
                torch.manual_seed(_variant_seed(seed, vname))
                try:
                    rep = _run_variant(
                        vname,
                        methods,
                        model,
                        train,
                        test,
                        recipe,
                        pm,
                        tracker,
                        log,
                        carbon,
                        predictions,
                        out=out if is_main() else None,
                        seed=seed,
                        stem=f"{vname}-s{seed}" if suffix else vname,
                    )
                except FQError as exc:  # this variant failed (e.g. diverged): the others run
                    report.failed_variants.append(
                        {"variant": vname, "seed": seed, "error": str(exc)}
                    )
                    log(f"[{vname}] failed: {exc}; the report marks it failed, the run goes on")
                    _write_report(report, out)
                    continue
                report.variants.append(rep)
                if is_main() and any(lc.quantized for lc in rep.cost.layers):
                    png = plot_layer_bits(
                        rep.cost,
                        file_in(
                            out, f"bits-{vname}-s{seed}" if suffix else f"bits-{vname}", ".png"
                        ),
                        vname,
                    )
                    if png is None:
                        log(
                            "note: per-layer bit plots need matplotlib: pip install 'fq-plugins[plot]'"
                        )
                pm.on_evaluation(rep)
                _write_report(report, out)
        report.status = "partial" if report.failed_variants else "ok"
    except BaseException as exc:
        report.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        report.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        report.wall_seconds = time.perf_counter() - t_run
        _write_report(report, out)
        if is_main():
            _write_html(report, out, log)
    pm.on_run_end(report, out)
    return report, out


def _select(
    recipe: Recipe,
    pm: FQPluginManager,
    train: GroupDataset,
    seed: int,
    device: torch.device,
    tracker: EnergyTracker,
    log: Log,
) -> tuple[GroupDataset, dict[str, EnergyReading], dict[str, Any]]:
    """``data.selection``: the kept part of the training split, the selection's energy
    (phase ``select``: a model-based selector's warm-up counts) and its summary."""
    from .data.coreset import select_subset

    sel = recipe.data.selection
    assert sel is not None

    def choose() -> Any:
        return select_subset(
            train,
            selector=sel.selector,
            fraction=sel.fraction,
            group_aware=sel.group_aware,
            floor=sel.floor,
            seed=seed,
            model_factory=lambda: _build_model(recipe, train).to(device),
            warmup_epochs=sel.warmup_epochs,
            lr=recipe.train.lr,
            batch_size=recipe.train.batch_size,
            weight_decay=recipe.train.weight_decay,
            options=dict(sel.options),
            pm=pm,
            log=log,
        )

    result, energy = tracker.measure("select", choose)
    for w in result.warnings:
        log(f"warning: data.selection: {w}")
    log(
        f"[select] {result.selector}: kept {result.n_kept} of {result.n_full} training "
        f"examples ({result.seconds:.1f} s, {result.warmup_epochs} warm-up epochs); groups "
        + ", ".join(f"{g['name']} {g['kept']}/{g['full']}" for g in result.per_group)
    )
    return result.apply(train), energy, result.to_dict()


def _write_html(report: RunReport, out: str, log: Log) -> None:
    """``report.html`` beside ``report.json`` (once, at the end: it renders every plot). A
    failure here costs the page only, never the run: it is logged with its reason."""
    from .html_report import write_html_report

    try:
        write_html_report(report.to_dict(), out)
    except (FQError, OSError, ValueError, RuntimeError) as exc:
        log(
            f"warning: report.html not written ({type(exc).__name__}: {exc}); report.json is complete"
        )


def _dataset_info(train: GroupDataset, test: GroupDataset) -> dict[str, Any]:
    return {
        "name": train.name,
        "n_train": len(train),
        "n_test": len(test),
        "classes": train.class_names,
        "groups": train.group_names,
        "train_counts": train.counts(),
        "test_counts": test.counts(),
        "dropped_rows": train.dropped,
        "input_shape": list(train.x.shape[1:]),
    }


def _fp32_model(
    device: torch.device,
    recipe: Recipe,
    pm: FQPluginManager,
    out: str,
    seed: int,
    train: GroupDataset,
    test: GroupDataset,
    report: RunReport,
    tracker: EnergyTracker,
    predictions: EnergyPredictions,
    carbon: CarbonModel | None,
    log: Log,
    *,
    suffix: bool,
    extra_energy: dict[str, EnergyReading] | None = None,
) -> nn.Module:
    """The seed's trained FP32 model: trained and reported now, or (resumed) loaded from
    the checkpoint an earlier invocation saved."""
    torch.manual_seed(seed)
    model = _build_model(recipe, train).to(device)
    if ("fp32", seed) in report.done():
        saved = next(v for v in report.restored if v["variant"] == "fp32" and v["seed"] == seed)
        path = (saved.get("checkpoint") or {}).get("path")
        if path and os.path.isfile(path):
            model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            log(f"[fp32] seed {seed}: loaded the finished FP32 model from {path}")
            return model
        # its weights are gone: train again (the same seed gives the same model)
        report.restored.remove(saved)
        log(f"[fp32] seed {seed}: the saved FP32 weights are missing; training again")
    example = test.x[:1].to(device)
    t0 = time.perf_counter()
    _, e_train = tracker.measure(
        "train",
        lambda: train_model(
            model,
            train,
            epochs=recipe.train.epochs,
            batch_size=recipe.train.batch_size,
            lr=recipe.train.lr,
            weight_decay=recipe.train.weight_decay,
            grad_clip=recipe.train.grad_clip,
            seed=seed,
            pm=pm,
            phase="train",
            log=log,
            on_epoch_end=predictions.callback("train", recipe.train.epochs),
        ),
    )
    (table, _), e_eval = tracker.measure("eval:fp32", lambda: evaluate(model, test))
    from .accounting import model_cost

    fp32 = build_report(
        "fp32",
        [],
        table,
        recipe.fairness.metrics,
        pm,
        model_cost(model, {}, example_input=example),
        {**(extra_energy or {}), **e_train, **e_eval},
        time.perf_counter() - t0 + sum(r.seconds for r in (extra_energy or {}).values()),
        metric_options=recipe.fairness.metric_options,
        carbon=carbon,
        prediction=predictions.finish("train", e_train),
    )
    fp32.seed = seed
    fp32_path = file_in(out, f"fp32-s{seed}" if suffix else "fp32", ".pt")
    if is_main():
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write(fp32_path, buf.getvalue())
        fp32.checkpoint = {"path": fp32_path, "file_bytes": os.path.getsize(fp32_path)}
    report.variants.append(fp32)
    pm.on_evaluation(fp32)
    _write_report(report, out)
    log(f"[fp32] acc {fp32.accuracy:.4f}  worst-group {fp32.worst_group_accuracy:.4f}")
    return model


def _run_variant(
    vname: str,
    methods: list[MethodConfig],
    fp32_model: nn.Module,
    train: GroupDataset,
    test: GroupDataset,
    recipe: Recipe,
    pm: FQPluginManager,
    tracker: EnergyTracker,
    log: Log,
    carbon: CarbonModel | None = None,
    predictions: EnergyPredictions | None = None,
    *,
    out: str | None = None,
    seed: int | None = None,
    stem: str | None = None,
) -> EvaluationReport:
    """One compression pipeline on a copy of the FP32 model: the engine's stages, trained
    with :func:`~fq_plugins.engine.fit`, each phase measured, then the report."""
    t0 = time.perf_counter()
    seed = recipe.seed if seed is None else seed
    stem = stem or vname
    model = copy.deepcopy(fp32_model)
    key = "compress" if vname not in recipe.compare else f"compare.{vname}"
    device = next(iter(fp32_model.parameters())).device
    ctx = AttachContext(
        calib_batches=lambda: (
            tuple(t.to(device) for t in b)
            for b in iterate_batches(
                train,
                recipe.train.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
        ),
        group_key=recipe.fairness.group_key,
        n_groups=train.n_groups,
        n_train=len(train),
    )
    ft = recipe.finetune
    pipe = CompressionPipeline(methods, plugin_manager=pm, key=key, context=ctx)
    final_table: dict[str, GroupConfusion] = {}

    def probe(m: nn.Module) -> torch.Tensor:
        table, logits = evaluate(m, test)
        final_table["table"] = table
        return logits

    energy: dict[str, EnergyReading] = {}
    model = pipe.start(model)
    while True:
        session = pipe.session
        epochs = ft.epochs if pipe.wants_training else 0
        phase = f"finetune:{vname}{pipe.stage_label}"
        _, e_stage = tracker.measure(
            phase,
            lambda session=session, epochs=epochs, phase=phase, model=model: train_model(  # type: ignore[misc]
                model,
                train,
                epochs=epochs,
                batch_size=recipe.train.batch_size,
                lr=ft.lr,
                weight_decay=ft.weight_decay,
                grad_clip=ft.grad_clip,
                seed=seed + 1,
                session=session,
                regularizer=recipe.fairness.regularizer,
                pm=pm,
                phase=phase,
                log=log,
                on_epoch_end=predictions.callback(phase, epochs) if predictions else None,
            ),
        )
        energy.update(e_stage)
        if pipe.is_last_stage:
            break
        # a structural stage (BMRS): finalize now, so the next methods see the smaller model
        label = pipe.stage_label
        names = ", ".join(m.name for m in session.methods)
        model, e_fin = tracker.measure(
            f"finalize:{vname}{label}", functools.partial(pipe.next_stage, model, probe)
        )
        energy.update(e_fin)
        log(f"[{vname}] stage {label[1:]}/{len(pipe.stages)} finalized ({names})")

    _, fake_logits = evaluate(model, test)
    if not bool(torch.isfinite(fake_logits).all()):
        raise FQError(
            f"[{vname}] the compressed model's outputs are not finite after fine-tuning "
            "(NaN/inf weights); lower finetune.lr or set finetune.grad_clip"
        )
    compact = pipe.export_compact(file_in(out, stem)) if out is not None else {}

    def finalize_and_eval() -> nn.Module:
        return pipe.finalize(model, probe, reference=fake_logits)

    final, e_eval = tracker.measure(f"eval:{vname}", finalize_and_eval)
    energy.update(e_eval)
    diff = pipe.max_diff
    if diff is not None and diff > FINALIZE_TOLERANCE:
        log(f"warning: [{vname}] finalized model differs from the fake-quantized one by {diff:.3g}")
    cost = pipe.cost(final, test.x[:1].to(device))
    rep = build_report(
        vname,
        [m.method for m in methods],
        final_table["table"],
        recipe.fairness.metrics,
        pm,
        cost,
        energy,
        time.perf_counter() - t0,
        diff,
        metric_options=recipe.fairness.metric_options,
        carbon=carbon,
        prediction=predictions.finish(phase, e_stage) if predictions else None,
    )
    rep.seed = seed
    rep.method_stats = [{"method": st.method, **st.extra} for st in pipe.stats()]
    for line in pipe.summaries():
        log(f"[{vname}] {line}")
    if out is not None:
        saved = pipe.save(final, file_in(out, stem, ".fqz"))
        rep.checkpoint = {**dataclasses.asdict(saved), "compact_exports": compact}
        if saved.float_layers:
            log(
                f"note: [{vname}] layers stored as float32 (codes do not reproduce the "
                f"finalized weights): {saved.float_layers}"
            )
    log(
        f"[{vname}] acc {rep.accuracy:.4f}  worst-group {rep.worst_group_accuracy:.4f}  "
        f"avg bits {cost.avg_bits_param:.2f}"
    )
    return rep
