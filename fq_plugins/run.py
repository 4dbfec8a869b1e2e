"""The ``fq-plugins run`` pipeline: train FP32 → compress each variant → evaluate → report.

Everything is built from the recipe: data (embedded synthetic set or an ``.npz``), a model
built from code (never downloaded), the compression pipelines, fairness metrics and energy
meters from the plugin registries. The report is written after every variant, so an error
later in the run loses nothing already computed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import inspect
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from .data.base import GroupDataset, iterate_batches, stratified_split
from .data.npz import load_npz
from .data.synthetic import make_synthetic
from .energy.carbon import CarbonModel
from .errors import ConfigError
from .fairness.regularizers import RegularizerSpec, fairness_penalty
from .fairness.table import GroupConfusion
from .manager import FQPluginManager, get_plugin_manager
from .models import build_model
from .plots import plot_layer_bits
from .protocols import (
    AttachContext,
    CompressionStats,
    EnergyMeter,
    EnergyReading,
    MethodConfig,
    MetricResult,
)
from .recipe import DataSpec, Recipe
from .report import EvaluationReport, RunReport, format_table
from .session import CompressionSession, plan_stages
from .storage import save_compressed

__all__ = ["EnergyTracker", "build_datasets", "evaluate", "resolve_meters", "run", "train_model"]

Log = Callable[[str], None]


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- data ----------------------------------------------------------------------------


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
    else:
        assert spec.path is not None and spec.group is not None  # the recipe validator checked
        path = os.path.expanduser(os.path.expandvars(spec.path))
        ds = load_npz(path, spec.group, x_key=spec.x_key, y_key=spec.y_key)
    if spec.max_examples is not None and spec.max_examples < len(ds):
        _, ds = stratified_split(ds, spec.max_examples / len(ds), seed + 1)
    train, test = stratified_split(ds, spec.test_fraction, seed)
    if spec.normalize:
        mean = train.x.mean(dim=(0, 2, 3), keepdim=True)
        std = train.x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        train.x = (train.x - mean) / std
        test.x = (test.x - mean) / std
    return train, test


# --- energy --------------------------------------------------------------------------


def _construct(cls: type[Any], options: dict[str, Any] | None) -> Any:
    """``cls(**options)``, passing only the options its constructor accepts by name."""
    if not options:
        return cls()
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return cls()
    return cls(**{k: v for k, v in options.items() if k in params and v is not None})


def resolve_meters(
    names: Sequence[str],
    pm: FQPluginManager,
    log: Log = _stderr_log,
    options: dict[str, Any] | None = None,
) -> list[EnergyMeter]:
    """Instantiate meters; ``auto`` = first *measured* meter whose probe is ok, else ``cpu_time``.

    :param options: keyword options handed to every meter whose constructor accepts them
        by name (``country`` for the codecarbon meter).
    """
    meters: list[EnergyMeter] = []
    for i, name in enumerate(names):
        if name == "auto":
            chosen = None
            for entry in pm.meters:
                if not getattr(entry.cls, "measured", False):
                    continue
                try:
                    meter = entry.cls()
                    avail = meter.probe()
                except Exception as exc:  # a meter that cannot even probe is unavailable
                    log(f"energy: meter {entry.name!r} unavailable ({type(exc).__name__}: {exc})")
                    continue
                if avail.ok:
                    chosen = meter
                    break
                log(f"energy: meter {entry.name!r} unavailable ({avail.status}: {avail.reason})")
            if chosen is None:
                chosen = pm.meters.get("cpu_time", key=f"energy.meters[{i}]")()
                log(
                    "energy: no measured meter available here; using the labelled CPU-time estimate"
                )
            meters.append(chosen)
        else:
            meter = _construct(pm.meters.get(name, key=f"energy.meters[{i}]"), options)
            avail = meter.probe()
            if not avail.ok:
                raise ConfigError(
                    f"meter {name!r} cannot run here ({avail.status}): {avail.reason}",
                    key=f"energy.meters[{i}]",
                )
            meters.append(meter)
    return meters


class EnergyTracker:
    """Wraps a phase with every meter; a meter failing mid-run marks its figure missing.

    Inside :meth:`measure`, :meth:`lap` closes a lap (``stop()`` + ``start()`` on every
    meter) and returns the energy since the previous lap; the phase's reading adds the laps.
    Under DDP (an initialized process group) each phase's reading is combined over ranks,
    one figure per physical device (:func:`fq_plugins.energy.ddp.reduce_reading_across_ranks`).
    """

    def __init__(
        self, meters: list[EnergyMeter], pm: FQPluginManager, log: Log = _stderr_log
    ) -> None:
        self.meters, self.pm, self.log = meters, pm, log
        self._laps: dict[int, list[EnergyReading]] | None = None
        self._failed: dict[int, str] = {}
        self._phase = ""

    def _stop(self, m: EnergyMeter, phase: str, t0: float) -> EnergyReading:
        try:
            return m.stop()
        except Exception as exc:
            self.log(
                f"energy: meter {m.name!r} failed during {phase}: {exc}; figure marked missing"
            )
            return EnergyReading(
                m.name, time.perf_counter() - t0, missing=f"{type(exc).__name__}: {exc}"
            )

    def lap(self) -> float:
        """Joules (all meters) since the phase start or the previous lap; NaN if any failed."""
        if self._laps is None:
            raise RuntimeError("EnergyTracker.lap() is only valid inside measure()")
        total = 0.0
        for m in self.meters:
            if id(m) in self._failed:
                total = math.nan
                continue
            reading = self._stop(m, self._phase, time.perf_counter())
            self._laps[id(m)].append(reading)
            total += reading.total_joules
            if reading.missing is not None:
                self._failed[id(m)] = reading.missing
                continue
            try:
                m.start()
            except Exception as exc:
                self._failed[id(m)] = f"failed to restart: {exc}"
                self.log(
                    f"energy: meter {m.name!r} failed to restart: {exc}; figure marked missing"
                )
        return total

    def measure(self, phase: str, fn: Callable[[], Any]) -> tuple[Any, dict[str, EnergyReading]]:
        self._phase = phase
        self._failed = {}
        self._laps = {}
        for m in self.meters:
            self._laps[id(m)] = []
            try:
                m.start()
            except Exception as exc:
                self._failed[id(m)] = "failed to start"
                self.log(
                    f"energy: meter {m.name!r} failed to start for {phase}: {exc}; figure marked missing"
                )
        t0 = time.perf_counter()
        try:
            result = fn()
        except BaseException:
            for m in self.meters:  # leave no meter running (RAPL's sampling thread)
                if id(m) not in self._failed:
                    with contextlib.suppress(Exception):
                        m.stop()
            self._laps = None
            raise
        laps, failed = self._laps, self._failed
        self._laps = None
        readings: dict[str, EnergyReading] = {}
        for m in self.meters:
            parts = laps[id(m)]
            if id(m) not in failed:
                parts.append(self._stop(m, phase, t0))
            reading = merge_readings(m.name, parts, failed.get(id(m)), time.perf_counter() - t0)
            reading = _reduce_across_ranks(reading)
            readings[f"{phase}:{m.name}"] = reading
            self.pm.on_energy_reading(phase, reading)
        return result, readings


def merge_readings(
    meter: str, parts: Sequence[EnergyReading], failure: str | None, seconds: float
) -> EnergyReading:
    """One reading from a phase's laps: joules added per domain; missing if any lap was."""
    reason = failure or next((p.missing for p in parts if p.missing is not None), None)
    if reason is not None or not parts:
        return EnergyReading(meter, seconds, missing=reason or "no reading")
    if len(parts) == 1:
        return parts[0]
    joules: dict[str, float] = {}
    methods: dict[str, str] = {}
    for p in parts:
        for dom, j in p.joules.items():
            joules[dom] = joules.get(dom, 0.0) + j
            methods[dom] = p.methods.get(dom, "unknown")
    details = dict(parts[-1].details)
    details["laps"] = len(parts)
    return EnergyReading(meter, sum(p.seconds for p in parts), joules, methods, details=details)


def _reduce_across_ranks(reading: EnergyReading) -> EnergyReading:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from .energy.ddp import reduce_reading_across_ranks

        return reduce_reading_across_ranks(reading)
    return reading


# --- training and evaluation -----------------------------------------------------------


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
    log: Log = _stderr_log,
    on_epoch_end: Callable[[int], None] | None = None,
) -> None:
    """AdamW training with CE + λ·fairness regularizer + the session's penalties.

    :param on_epoch_end: called with the epoch index (from 0) after each epoch (the run
        uses it for the first-epoch energy prediction).
    """
    params: list[dict[str, Any]] | list[nn.Parameter]
    if session is not None:
        params = session.param_groups(model, lr=lr, weight_decay=weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    use_reg = regularizer is not None and regularizer.kind != "none" and regularizer.weight > 0
    step = 0
    n_batches = (len(data) + batch_size - 1) // batch_size
    tty = sys.stderr.isatty()
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        tot_loss = 0.0
        correct = 0
        seen = 0
        for b, (x, y, g) in enumerate(
            iterate_batches(data, batch_size, shuffle=True, generator=gen)
        ):
            logits = model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            task = losses.mean()
            total = task
            terms: dict[str, torch.Tensor] = {"task": task}
            if use_reg:
                assert regularizer is not None
                fair = fairness_penalty(regularizer.kind, losses, g, data.n_groups)
                total = total + regularizer.weight * fair
                terms["fairness"] = fair
            if session is not None:
                pen = session.penalty()
                total = total + pen
                terms["penalty"] = pen
            opt.zero_grad(set_to_none=True)
            total.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if session is not None:
                session.on_step(step)
            if pm is not None:
                terms["total"] = total
                pm.on_step(step, phase, {k: float(v.detach()) for k, v in terms.items()})
            step += 1
            tot_loss += float(task.detach()) * y.numel()
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += y.numel()
            if tty:
                print(
                    f"\r[{phase}] epoch {epoch + 1}/{epochs}  batch {b + 1}/{n_batches}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        if session is not None:
            session.on_epoch_end(epoch)
        if tty:
            print("\r", end="", file=sys.stderr)
        log(
            f"[{phase}] epoch {epoch + 1}/{epochs}  loss {tot_loss / max(seen, 1):.4f}  "
            f"train acc {correct / max(seen, 1):.4f}  {time.perf_counter() - t0:.1f}s"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: GroupDataset, batch_size: int = 512
) -> tuple[GroupConfusion, torch.Tensor]:
    """Group confusion table and the logits of ``model`` on ``data`` (eval mode)."""
    model.eval()
    table = GroupConfusion(
        data.n_groups, data.n_classes, group_names=data.group_names, class_names=data.class_names
    )
    outs = []
    for x, y, g in iterate_batches(data, batch_size, shuffle=False):
        logits = model(x)
        table.update(logits.argmax(1), y, g)
        outs.append(logits)
    return table, torch.cat(outs) if outs else torch.zeros(0)


def _metrics(
    table: GroupConfusion,
    names: Sequence[str],
    pm: FQPluginManager,
    options: dict[str, Any] | None = None,
) -> dict[str, MetricResult]:
    """Every named metric on ``table``; ``options`` (``undefined``) go to metrics accepting them."""
    return {name: _construct(pm.metrics.get(name), options).compute(table) for name in names}


def _eval_report(
    variant: str,
    methods: list[str],
    table: GroupConfusion,
    metric_names: Sequence[str],
    pm: FQPluginManager,
    cost: Any,
    energy: dict[str, EnergyReading],
    wall: float,
    diff: float | None = None,
    *,
    metric_options: dict[str, Any] | None = None,
    carbon: CarbonModel | None = None,
    prediction: dict[str, Any] | None = None,
) -> EvaluationReport:
    acc = table.group_accuracy()
    present = acc[~torch.isnan(acc)]
    mean_g = float(present.mean()) if present.numel() else float("nan")
    worst = float(present.min()) if present.numel() else float("nan")
    rep = EvaluationReport(
        variant=variant,
        methods=methods,
        accuracy=table.overall_accuracy(),
        mean_group_accuracy=mean_g,
        worst_group_accuracy=worst,
        accuracy_gap=mean_g - worst,
        group_accuracy=acc.tolist(),
        group_names=table.group_names,
        metrics=_metrics(table, metric_names, pm, metric_options),
        cost=cost,
        energy=energy,
        wall_seconds=wall,
        finalize_max_abs_diff=diff,
        energy_prediction=prediction or {},
    )
    if carbon is not None:
        rep.carbon = carbon.estimate(rep.energy_joules)
    return rep


class _Predictions:
    """Carbontracker-style prediction: after a training phase's first epoch, the phase's
    total energy ≈ first-epoch energy × epochs. Logged, and stored per phase."""

    def __init__(self, tracker: EnergyTracker, carbon: CarbonModel | None, log: Log) -> None:
        self.tracker, self.carbon, self.log = tracker, carbon, log
        self.by_phase: dict[str, dict[str, Any]] = {}

    def callback(self, phase: str, epochs: int) -> Callable[[int], None]:
        def after_epoch(epoch: int) -> None:
            if epoch != 0:
                return
            first = self.tracker.lap()
            predicted = first * epochs
            entry: dict[str, Any] = {
                "first_epoch_joules": first,
                "epochs": epochs,
                "predicted_joules": predicted,
                "rule": "first-epoch energy × epochs (carbontracker-style)",
            }
            msg = (
                f"[{phase}] predicted total energy for this phase: {predicted:.1f} J "
                f"(first epoch {first:.1f} J × {epochs} epoch{'s' if epochs != 1 else ''})"
            )
            if self.carbon is not None:
                entry["predicted_gco2e"] = self.carbon.grams(predicted)
                msg += f", ≈ {entry['predicted_gco2e']:.3g} gCO2e"
            self.by_phase[phase] = entry
            self.log(msg)

        return after_epoch

    def finish(self, phase: str, readings: dict[str, EnergyReading]) -> dict[str, Any]:
        """The phase's prediction with the measured total added (``{}`` if none was made)."""
        entry = self.by_phase.get(phase)
        if entry is None:
            return {}
        entry["actual_joules"] = float(sum(r.total_joules for r in readings.values()))
        return {phase: entry}


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
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }


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
    log: Log = _stderr_log,
) -> tuple[RunReport, str]:
    """Run the whole job; returns the report and the folder it was written to.

    On an error after the output folder exists, the partial report (status ``failed``) is
    written before the exception propagates.
    """
    pm = plugin_manager or get_plugin_manager()
    t_run = time.perf_counter()
    torch.manual_seed(recipe.seed)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    variants = recipe.variants()  # checks variant names before any work
    train, test = build_datasets(recipe.data, recipe.seed)
    carbon = recipe.energy.carbon.model()
    meters = resolve_meters(
        recipe.energy.meters, pm, log, {"country": carbon.country if carbon else None}
    )
    out = output_dir or make_output_dir(recipe.output.dir, recipe.name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "recipe.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(recipe.model_dump(mode="json"), f, sort_keys=False)
    dataset_info = {
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
    report = RunReport(
        name=recipe.name,
        recipe=recipe.model_dump(mode="json"),
        dataset=dataset_info,
        environment=_environment(),
    )
    log(
        f"fq-plugins run {recipe.name!r}: {train.name}, {len(train)} train / {len(test)} test, "
        f"{train.n_classes} classes, groups {train.group_names} "
        f"(test sizes {test.counts()['per_group']}); output {out}"
    )
    tracker = EnergyTracker(meters, pm, log)
    predictions = _Predictions(tracker, carbon, log)
    example = test.x[:1]
    try:
        model = build_model(
            recipe.model.name,
            in_channels=train.x.shape[1],
            image_size=train.x.shape[-1],
            n_classes=train.n_classes,
            **recipe.model.kwargs,
        )
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
                seed=recipe.seed,
                pm=pm,
                phase="train",
                log=log,
                on_epoch_end=predictions.callback("train", recipe.train.epochs),
            ),
        )
        (table, _), e_eval = tracker.measure("eval:fp32", lambda: evaluate(model, test))
        from .accounting import model_cost

        fp32 = _eval_report(
            "fp32",
            [],
            table,
            recipe.fairness.metrics,
            pm,
            model_cost(model, {}, example_input=example),
            {**e_train, **e_eval},
            time.perf_counter() - t0,
            metric_options={"undefined": recipe.fairness.undefined},
            carbon=carbon,
            prediction=predictions.finish("train", e_train),
        )
        fp32_path = os.path.join(out, "fp32.pt")
        torch.save(model.state_dict(), fp32_path)
        fp32.checkpoint = {"path": fp32_path, "file_bytes": os.path.getsize(fp32_path)}
        report.variants.append(fp32)
        pm.on_evaluation(fp32)
        report.write(out)
        log(f"[fp32] acc {fp32.accuracy:.4f}  worst-group {fp32.worst_group_accuracy:.4f}")
        for vname, methods in variants.items():
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
                out=out,
            )
            report.variants.append(rep)
            if any(lc.quantized for lc in rep.cost.layers):
                png = plot_layer_bits(rep.cost, os.path.join(out, f"bits-{vname}.png"), vname)
                if png is None:
                    log("note: per-layer bit plots need matplotlib: pip install 'fq-plugins[plot]'")
            pm.on_evaluation(rep)
            report.write(out)
        report.status = "ok"
    except BaseException as exc:
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        report.wall_seconds = time.perf_counter() - t_run
        report.write(out)
    pm.on_run_end(report, out)
    log("")
    log(format_table(report.variants))
    return report, out


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
    predictions: _Predictions | None = None,
    *,
    out: str | None = None,
) -> EvaluationReport:
    t0 = time.perf_counter()
    model = copy.deepcopy(fp32_model)
    key = "compress" if vname not in recipe.compare else f"compare.{vname}"
    ctx = AttachContext(
        calib_batches=lambda: iterate_batches(
            train,
            recipe.train.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(recipe.seed),
        ),
        group_key=recipe.fairness.group_key,
        n_groups=train.n_groups,
    )
    ft = recipe.finetune
    stages = plan_stages(methods, pm, key=key)
    e_ft: dict[str, EnergyReading] = {}
    earlier_stats: list[CompressionStats] = []
    stage_diffs: list[float] = []
    for si, stage in enumerate(stages):
        session = CompressionSession.from_configs(
            [methods[i] for i in stage], plugin_manager=pm, key=key, first_index=stage[0]
        )
        session.attach(model, ctx)
        epochs = ft.epochs if any(m.wants_training() for m in session.methods) else 0
        last = si == len(stages) - 1
        phase = f"finetune:{vname}" if len(stages) == 1 else f"finetune:{vname}:{si + 1}"
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
                seed=recipe.seed + 1,
                session=session,
                regularizer=recipe.fairness.regularizer,
                pm=pm,
                phase=phase,
                log=log,
                on_epoch_end=predictions.callback(phase, epochs) if predictions else None,
            ),
        )
        e_ft.update(e_stage)
        if last:
            break
        # a structural stage (BMRS): finalize now, so the next methods see the smaller model

        def finalize_stage(
            session: CompressionSession = session, model: nn.Module = model
        ) -> tuple[nn.Module, float]:
            _, before = evaluate(model, test)
            final = session.finalize(model)
            _, after = evaluate(final, test)
            return final, float((after - before).abs().max()) if before.numel() else 0.0

        (model, stage_diff), e_fin = tracker.measure(f"finalize:{vname}:{si + 1}", finalize_stage)
        e_ft.update(e_fin)
        stage_diffs.append(stage_diff)
        earlier_stats.extend(session.stats())
        log(f"[{vname}] stage {si + 1}/{len(stages)} finalized ({', '.join(m.name for m in session.methods)})")

    _, fake_logits = evaluate(model, test)
    compact: dict[str, int] = {}
    if out is not None:  # methods with a compact form of their own (MoMos) export it first
        for m in session.methods:
            export = getattr(m, "export_compact", None)
            if callable(export):
                path = os.path.join(out, f"{vname}.{m.name}")
                compact[path] = int(export(path))

    def finalize_and_eval() -> tuple[nn.Module, GroupConfusion, torch.Tensor]:
        final = session.finalize(model)
        table, logits = evaluate(final, test)
        return final, table, logits

    (final, table, logits), e_eval = tracker.measure(f"eval:{vname}", finalize_and_eval)
    diff = float((logits - fake_logits).abs().max()) if logits.numel() else 0.0
    diff = max([diff, *stage_diffs])
    if diff > 1e-4:
        log(f"warning: [{vname}] finalized model differs from the fake-quantized one by {diff:.3g}")
    cost = session.cost(final, test.x[:1])
    rep = _eval_report(
        vname,
        [m.method for m in methods],
        table,
        recipe.fairness.metrics,
        pm,
        cost,
        {**e_ft, **e_eval},
        time.perf_counter() - t0,
        diff,
        metric_options={"undefined": recipe.fairness.undefined},
        carbon=carbon,
        prediction=predictions.finish(phase, e_stage) if predictions else None,
    )
    rep.method_stats = [
        {"method": st.method, **st.extra} for st in [*earlier_stats, *session.stats()]
    ]
    for ms in rep.method_stats:
        if "removed_fraction" in ms:  # structural methods (BMRS): say what got smaller
            log(
                f"[{vname}] {ms['criterion']}: {ms['masked_fraction']:.1%} of {ms['units']} "
                f"gated channels masked, {ms['removed_fraction']:.1%} removed"
            )
    if out is not None:
        saved = save_compressed(final, session.bit_widths(), os.path.join(out, f"{vname}.fqz"))
        rep.checkpoint = {**dataclasses.asdict(saved), "compact_exports": compact}
        if saved.float_layers:
            log(
                f"note: [{vname}] layers stored as float32 (codes not recoverable): {saved.float_layers}"
            )
    log(
        f"[{vname}] acc {rep.accuracy:.4f}  worst-group {rep.worst_group_accuracy:.4f}  "
        f"avg bits {cost.avg_bits_param:.2f}"
    )
    return rep
