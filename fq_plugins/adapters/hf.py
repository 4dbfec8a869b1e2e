"""Hugging Face ``Trainer`` host: :class:`FQCallback` (installer: parametrize; driver: Trainer).

A thin host over :mod:`fq_plugins.engine`: the loss is :class:`~fq_plugins.engine.Objective`,
the stages and the checked finalize are :class:`~fq_plugins.engine.CompressionPipeline`,
the metrics are :class:`~fq_plugins.fairness.table.GroupConfusion` →
:func:`~fq_plugins.engine.build_report`. This module only decides *when* Trainer calls them::

    fq = FQCallback.from_recipe("recipe.yaml")
    args = TrainingArguments(..., label_names=["labels", "group"])
    trainer = fq.trainer(Trainer, model=model, args=args, train_dataset=ds, eval_dataset=ev)
    trainer.train(); trainer.evaluate()

How each Trainer fact is met (measured on transformers 5.24):

* **attach** in ``on_init_end`` — the model is on its device, no optimizer or DDP wrapper
  exists yet; new parameters are moved to that device.
* **loss** — Trainer's callbacks and ``compute_loss_func`` never see the batch, and a
  column survives ``remove_unused_columns`` only through ``label_names``, after which it is
  also passed to ``model(**inputs)``. So the callback puts a forward pre-hook (with kwargs)
  on the model that pops the group ids, the labels and ``num_items_in_batch``, and a forward
  hook that replaces ``outputs.loss`` by ``Objective(logits, labels, groups).total``. This
  works with the stock Trainer, under DDP, and with a model whose ``forward`` has no
  ``**kwargs``. When Trainer passed ``num_items_in_batch`` (models accepting loss kwargs)
  the loss is scaled by ``batch / num_items_in_batch``, the normalisation Trainer expects
  from such models under gradient accumulation.
* **optimizer** — Trainer puts every parameter whose name lacks bias/norm into weight decay
  with one learning rate. :meth:`FQCallback.trainer` builds a subclass of the given Trainer
  class whose ``create_optimizer`` uses ``session.param_groups`` (the methods' own lr and
  weight decay; the rest split the Trainer way). With the callback alone, ``on_train_begin``
  checks the optimizer and raises :class:`~fq_plugins.errors.ConfigError` when a method's
  parameter sits in a group with the wrong lr or weight decay (the fix: ``fq.trainer(...)``).
* **checkpoints** — all method state is in ``model.state_dict()`` as tensors (a
  :class:`~fq_plugins.protocols.MethodState` record travels as a uint8 JSON tensor), which
  Trainer's safetensors checkpoints hold; ``resume_from_checkpoint`` then restores every
  method exactly (a state that is not a tensor is refused at attach).
* **metrics** — :meth:`FQCallback.compute_metrics` reads ``label_ids = (labels, group)``
  (``label_names`` order) and returns the report's figures: accuracy, per-group accuracy,
  the recipe's fairness metrics, bits / sparsity / packed size / BOPs (``session.cost``)
  and the energy of training and of this evaluation (with ``fq.trainer``, whose
  ``evaluation_loop`` meters each evaluation as its own phase and pauses the train
  phase meanwhile), each named ``..._measured`` or ``..._estimated``.
* **from_pretrained / save_pretrained** — :class:`FQQuantizationConfig` and
  :class:`FQHfQuantizer`, registered as ``quant_method="fq_plugins"`` on import: the
  methods attach after the weights load (no uninitialised tensor), the checkpoint keeps
  the plain weight names (a load without fq-plugins is the FP32 model, with
  transformers' warning) plus the methods' own tensors, and a reload rebuilds the
  compressed model exactly.

Private transformers pieces used: none beyond documented ``Trainer`` methods
(``create_optimizer``, ``get_decay_parameter_names``, ``get_optimizer_cls_and_kwargs``,
``log``); the version range below is the one tested.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
from torch import nn

from .._log import Log, stderr_log
from ..errors import ConfigError, FQError, MissingDependencyError
from ..protocols import AttachContext, EnergyReading

try:
    import transformers
    from transformers import TrainerCallback
    from transformers.quantizers import (
        HfQuantizer,
        register_quantization_config,
        register_quantizer,
    )
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError as exc:  # pragma: no cover - exercised by a test with the import blocked
    raise MissingDependencyError(
        "transformers", "hf", "fq_plugins.adapters.hf (the Hugging Face Trainer adapter)"
    ) from exc

if TYPE_CHECKING:
    from ..accounting import ModelCost
    from ..energy.tracker import EnergyTracker
    from ..engine import CompressionPipeline, Objective
    from ..manager import FQPluginManager
    from ..recipe import CompressionRecipe
    from ..report import EvaluationReport

__all__ = [
    "QUANT_METHOD",
    "SUPPORTED_TRANSFORMERS",
    "FQCallback",
    "FQHfQuantizer",
    "FQQuantizationConfig",
    "FQTrainerMixin",
    "base_state_dict",
    "calib_loader",
    "check_transformers_version",
    "register_fq_quantizer",
]

SUPPORTED_TRANSFORMERS = ((5, 0), (6, 0))
"""Tested range of transformers versions: ``>= 5.0, < 6``."""


def check_transformers_version(version: str | None = None) -> None:
    """Raise :class:`~fq_plugins.errors.FQError` if transformers is outside the tested range."""
    v = version if version is not None else transformers.__version__
    try:
        major, minor = (int(p) for p in v.split(".")[:2])
    except ValueError:
        return  # a dev build with an odd version string: let it run
    lo, hi = SUPPORTED_TRANSFORMERS
    if not lo <= (major, minor) < hi:
        raise FQError(
            f"fq_plugins.adapters.hf supports transformers >= {lo[0]}.{lo[1]}, < {hi[0]}; "
            f"found {v}. Install a supported version: pip install 'transformers>=5.0,<6'"
        )


check_transformers_version()


# --- safetensors-safe method state ------------------------------------------------------


def _check_tensor_state(model: nn.Module) -> None:
    bad = [k for k, v in model.state_dict().items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(
            f"the compressed model's state_dict has non-tensor entries {bad[:5]}, which Trainer's "
            "safetensors checkpoints cannot hold (the methods' state would be lost on resume); "
            "make the method keep its state in buffers or a MethodState"
        )


# --- the model's logits as a plain tensor (what methods and probes call) -----------------


def _logits_of(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


class _LogitsOnly:
    """While active, ``model(x)`` returns the logits tensor: methods that trace or calibrate
    (BMRS, FairQuant's importance) and the finalize probe call ``model(x)`` positionally and
    expect a tensor, while HF models return a ``ModelOutput``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handle: Any = None

    def __enter__(self) -> nn.Module:
        self.handle = self.model.register_forward_hook(_logits_hook)
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _logits_hook(_module: nn.Module, _args: Any, out: Any) -> Any:
    return _logits_of(out)


def _strip_logits_hooks(model: nn.Module) -> None:
    """Remove :class:`_LogitsOnly` hooks a deep copy made inside the context carried along."""
    hooks = model._forward_hooks
    for hid in [k for k, fn in hooks.items() if fn is _logits_hook]:
        del hooks[hid]


class _SharedHook:
    """A hook calling back into the callback; a deepcopy of the model (BMRS's finalize, a
    user's copy) shares the callback rather than copying it (and its plugin manager)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedHook:
        return self

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # torch.save(model): the callback (plugin manager, Trainer) stays out of the file;
        # the unpickled model's hook does nothing (no callback to call)
        return (_passthrough_hook, ())


def _passthrough(*_args: Any) -> None:
    return None


def _passthrough_hook() -> Callable[..., None]:
    return _passthrough


def calib_loader(
    dataset: Any,
    model: nn.Module,
    *,
    collate: Callable[[list[Any]], Any] | None = None,
    batch_size: int = 32,
    input_key: str | None = None,
    label_key: str = "labels",
    group_key: str = "group",
) -> Callable[[], Iterator[Any]]:
    """``(x, y, group)`` calibration batches from a dataset of dicts (Trainer's format), on
    the model's device; ``x`` is the model's main input (``input_key``, else its
    ``main_input_name``, else the batch's only other key)."""
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    collate_fn = collate or default_data_collator
    key_given = input_key or getattr(model, "main_input_name", None)
    device = next(model.parameters()).device

    def batches() -> Iterator[Any]:
        for b in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
            others = [k for k in b if k not in (label_key, group_key)]
            key = key_given or (others[0] if len(others) == 1 else "input_ids")
            if key not in b or label_key not in b:
                raise ConfigError(
                    f"a calibration batch has keys {sorted(b)}; it needs the model's input "
                    f"{key!r} and the labels {label_key!r}; name the input with "
                    "input_key=..."
                )
            g = b.get(group_key)
            yield (
                b[key].to(device),
                b[label_key].to(device),
                g.to(device) if g is not None else None,
            )

    return batches


# --- the callback -------------------------------------------------------------------------


class FQCallback(TrainerCallback):
    """Compression + fairness + energy for a Hugging Face ``Trainer``, from one recipe.

    :param recipe: a path, a dict or a :class:`~fq_plugins.recipe.CompressionRecipe`
        (host-neutral keys: ``compress``, ``fairness``, ``energy``).
    :param finalize_at_end: at ``on_train_end``, bake the methods in with the pipeline's
        checked finalize (the model becomes a plain model: real low-bit weights, removed
        channels); :attr:`final_model` and :attr:`finalize_max_abs_diff` are set.
    :param calib_dataset: examples for the methods that calibrate at attach (FairQuant's
        importance) or trace one forward pass (BMRS); :meth:`trainer` passes the
        ``train_dataset`` when this is not given.
    :param n_groups: number of groups (default: the largest group id seen, plus one).
    :param label_key: the labels' key in a batch (Trainer's default ``labels``).
    :param input_key: the model input's key in a calibration batch (default: the model's
        ``main_input_name``: ``input_ids``, ``pixel_values``; else the batch's only other key).
    :param variant: the report's variant name.
    """

    def __init__(
        self,
        recipe: str | os.PathLike[str] | dict[str, Any] | CompressionRecipe,
        *,
        finalize_at_end: bool = False,
        calib_dataset: Any = None,
        data_collator: Callable[[list[Any]], Any] | None = None,
        n_groups: int | None = None,
        label_key: str = "labels",
        input_key: str | None = None,
        variant: str = "hf",
        plugin_manager: FQPluginManager | None = None,
        log: Log = stderr_log,
    ) -> None:
        from ..manager import get_plugin_manager
        from ..recipe import load_compression_recipe

        self.pm = plugin_manager or get_plugin_manager()
        self.recipe = load_compression_recipe(recipe, plugin_manager=self.pm)
        if not self.recipe.compress:
            raise ConfigError(
                "the recipe has no methods to apply; add at least one item, e.g. "
                "compress: [{method: uniform, bits: 4}]",
                key="compress",
            )
        self.finalize_at_end = bool(finalize_at_end)
        self.calib_dataset = calib_dataset
        self.data_collator = data_collator
        self.n_groups = n_groups
        self.label_key = label_key
        self.input_key = input_key
        self.variant = variant
        self.log = log
        self.group_key = self.recipe.fairness.group_key
        self.pipeline: CompressionPipeline | None = None
        self.objective: Objective | None = None
        self.model: nn.Module | None = None
        self.final_model: nn.Module | None = None
        self.report: EvaluationReport | None = None
        self.example_input: torch.Tensor | None = None
        self.label_names: list[str] = []
        self.energy: dict[str, EnergyReading] = {}
        self._phase: EnergyTracker | None = None
        self._running: str | None = None
        """The metered phase now: ``"train"``, ``"eval"`` or None."""
        self._paused_train = False
        """Meters of the training phase (begun at on_train_begin, ended at on_train_end)."""
        self._pending: tuple[Any, Any, Any] | None = None
        self._terms_sum: dict[str, float] = {}
        self._terms_n = 0
        self._t0 = time.perf_counter()
        self._hooks: list[Any] = []
        self._last_epoch_end: int | None = None
        self._step_terms: dict[str, float] = {}

    @classmethod
    def from_recipe(
        cls, recipe: str | os.PathLike[str] | dict[str, Any] | CompressionRecipe, **kwargs: Any
    ) -> FQCallback:
        """``FQCallback(recipe, **kwargs)``: a path, a dict or a CompressionRecipe."""
        return cls(recipe, **kwargs)

    # --- the Trainer helper ---------------------------------------------------------------

    def trainer(self, trainer_cls: type[Any], **kwargs: Any) -> Any:
        """Build ``trainer_cls(**kwargs)`` with this callback, ``compute_metrics`` and the
        methods' own optimizer groups (a subclass of ``trainer_cls`` with
        :class:`FQTrainerMixin`; any Trainer subclass works)."""
        if self.calib_dataset is None:
            self.calib_dataset = kwargs.get("train_dataset")
        if self.data_collator is None:
            self.data_collator = kwargs.get("data_collator")
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if self not in callbacks:
            callbacks.append(self)
        kwargs.setdefault("compute_metrics", self.compute_metrics)
        sub = fq_trainer_class(trainer_cls)
        return sub(fq_callback=self, callbacks=callbacks, **kwargs)

    # --- attach ---------------------------------------------------------------------------

    def _check_args(self, args: Any) -> None:
        names = list(args.label_names) if args.label_names is not None else None
        if names is None or self.group_key not in names or self.label_key not in names:
            raise ConfigError(
                f"TrainingArguments.label_names is {names!r}; it must name the labels and the "
                f"group column ({self.label_key!r} and {self.group_key!r}, fairness.group_key): "
                f"Trainer drops every other column before the batch reaches the model. Pass "
                f"TrainingArguments(..., label_names=[{self.label_key!r}, {self.group_key!r}])"
            )
        self.label_names = names
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and int(getattr(args, "world_size", 1)) == 1:
            warnings.warn(
                f"WORLD_SIZE={world} but Trainer runs without a process group: every rank trains "
                "alone on all the data. On CPU pass TrainingArguments(use_cpu=True) under torchrun",
                RuntimeWarning,
                stacklevel=3,
            )

    def _calib_batches(self, model: nn.Module, args: Any) -> Callable[[], Iterator[Any]] | None:
        if self.calib_dataset is None:
            return None
        bs = int(getattr(args, "per_device_train_batch_size", 32) or 32)
        return calib_loader(
            self.calib_dataset, model, collate=self.data_collator, batch_size=bs,
            input_key=self.input_key, label_key=self.label_key, group_key=self.group_key,
        )

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        from ..engine import CompressionPipeline, Objective

        model = kwargs.get("model")
        if self.pipeline is not None:
            raise ConfigError(
                "this FQCallback is attached to a model already; make one FQCallback per Trainer"
            )
        if not isinstance(model, nn.Module):
            raise ConfigError("FQCallback needs Trainer(model=...) (got no model)")
        self._check_args(args)
        n_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if isinstance(n_labels, int) and not isinstance(n_labels, bool) and n_labels >= 2:
            from ..fairness.rates import pos_label_in_range

            pos_label_in_range(self.recipe.fairness.pos_label, n_labels)  # before training
        device = next(model.parameters()).device
        calib = self._calib_batches(model, args)
        if calib is not None:
            x, _, _ = next(iter(calib()))
            self.example_input = x[:8].detach().clone()
        quantizer = getattr(model, "hf_quantizer", None)
        if _is_fq_quantizer(quantizer) and quantizer.pipeline is not None:
            self._adopt(model, quantizer)
            return control
        ctx = AttachContext(
            calib_batches=calib,
            group_key=self.group_key,
            n_groups=self.n_groups,
            device=device,
            example_input=self.example_input,
        )
        pipe = CompressionPipeline(self.recipe.compress, plugin_manager=self.pm, context=ctx)
        if len(pipe.stages) > 1:
            raise ConfigError(
                f"this recipe has {len(pipe.stages)} stages (a structural method such as bmrs, then "
                "the others); a Trainer trains one stage: run the bmrs stage with "
                "FQCallback(..., finalize_at_end=True), then a second Trainer with the other "
                "methods on fq.final_model",
                key="compress",
            )
        with _LogitsOnly(model):
            pipe.start(model)
        model.to(device)
        _check_tensor_state(model)
        self.pipeline, self.model = pipe, model
        self.objective = Objective.from_recipe(self.recipe, pipe.session, n_groups=self.n_groups)
        self._install_hooks(model)
        return control

    def _adopt(self, model: nn.Module, quantizer: FQHfQuantizer) -> None:
        """The model came from ``from_pretrained(..., quantization_config=FQQuantizationConfig)``:
        its methods are attached already; train them (same methods required)."""
        from ..engine import Objective

        pipe = quantizer.pipeline
        assert pipe is not None
        mine = [c.model_dump(mode="json") for c in self.recipe.compress]
        theirs = [c.model_dump(mode="json") for c in pipe.configs]
        if mine != theirs:
            raise ConfigError(
                "the model was loaded with FQQuantizationConfig methods "
                f"{[c['method'] for c in theirs]}, and this FQCallback's recipe has other methods "
                f"or settings ({[c['method'] for c in mine]}); a model carries one set of methods. "
                "Build the callback from the model's recipe: "
                "FQCallback.from_recipe(model.config.quantization_config.recipe)",
                key="compress",
            )
        if self.example_input is None and quantizer.example_input is not None:
            self.example_input = quantizer.example_input
        self.pipeline, self.model = pipe, model
        self.objective = Objective.from_recipe(self.recipe, pipe.session, n_groups=self.n_groups)
        self._install_hooks(model)

    def _install_hooks(self, model: nn.Module) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = [
            model.register_forward_pre_hook(_SharedHook(self._pre_forward), with_kwargs=True),
            model.register_forward_hook(_SharedHook(self._post_forward), with_kwargs=True),
        ]

    # --- the loss (forward hooks) ---------------------------------------------------------

    def _pre_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        labels = kwargs.pop(self.label_key, None)
        groups = kwargs.pop(self.group_key, None)
        n_items = kwargs.pop("num_items_in_batch", None)
        self._pending = (labels, groups, n_items) if labels is not None else None
        return args, kwargs

    def _post_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> Any:
        pending, self._pending = self._pending, None
        if pending is None or self.objective is None:
            return out
        labels, groups, n_items = pending
        if groups is None and self.objective.uses_groups:
            raise ConfigError(
                f"the fairness regularizer ({self.recipe.fairness.regularizer.kind}) needs group "
                f"ids, but the batch has no {self.group_key!r} column; give the dataset a "
                f"{self.group_key!r} column and keep it with TrainingArguments(label_names="
                f"[{self.label_key!r}, {self.group_key!r}]), or set fairness.regularizer.kind: none"
            )
        logits = _logits_of(out)
        terms = self.objective(logits, labels.reshape(-1).long(), groups)
        loss = terms.total
        if n_items is not None:
            loss = loss * (labels.numel() / n_items)
        if module.training:
            self._step_terms = terms.floats()
            for k, v in self._step_terms.items():
                self._terms_sum[k] = self._terms_sum.get(k, 0.0) + v
            self._terms_n += 1
        if isinstance(out, Mapping):
            fields = {k: v for k, v in out.items() if k != "loss"}
            return cast(Any, type(out))(loss=loss, **fields)
        if isinstance(out, tuple):
            return (loss, *out)
        return (loss, out)  # a plain tensor of logits: Trainer reads outputs[0] as the loss

    def pop_loss_terms(self) -> dict[str, float]:
        """Mean of each loss term (``fq_task``, ``fq_fairness``, ``fq_penalty``,
        ``fq_total``) over the training forwards since the last call."""
        n, sums = self._terms_n, self._terms_sum
        self._terms_sum, self._terms_n = {}, 0
        return {f"fq_{k}": v / n for k, v in sums.items()} if n else {}

    # --- training events -------------------------------------------------------------------

    def _require_attached(self, event: str) -> CompressionPipeline:
        if self.pipeline is None:
            raise ConfigError(
                f"FQCallback got {event} without having attached: it was added after "
                "Trainer.__init__ (trainer.add_callback), when the optimizer may exist already. "
                "Pass it at construction: Trainer(..., callbacks=[fq]) or fq.trainer(Trainer, ...)"
            )
        return self.pipeline

    def _check_optimizer(self, optimizer: Any, args: Any) -> None:
        pipe = self._require_attached("on_train_begin")
        if optimizer is None or self.model is None:
            return
        where: dict[int, dict[str, Any]] = {}
        for g in optimizer.param_groups:
            for p in g["params"]:
                where[id(p)] = g
        wanted = pipe.session.param_groups(self.model, lr=args.learning_rate, weight_decay=0.0)
        wrong = []
        for g in wanted[1:]:
            for p in g["params"]:
                have = where.get(id(p))
                if have is None:
                    continue
                lr_now = have.get("initial_lr", have.get("lr"))
                if not math.isclose(float(have.get("weight_decay", 0.0)), float(g["weight_decay"])) or (
                    lr_now is not None and not math.isclose(float(lr_now), float(g["lr"]))
                ):
                    wrong.append((g["lr"], g["weight_decay"], lr_now, have.get("weight_decay")))
                    break
        if wrong:
            want_lr, want_wd, lr, wd = wrong[0]
            raise ConfigError(
                f"the optimizer puts the methods' own parameters (bits, dead-zones, gates) in a "
                f"group with lr={lr}, weight_decay={wd}; the methods ask for lr={want_lr}, "
                f"weight_decay={want_wd}. Build the Trainer with fq.trainer(YourTrainerClass, ...) "
                "(any Trainer subclass), which creates the optimizer from session.param_groups"
            )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._check_optimizer(kwargs.get("optimizer"), args)
        tracker = self._tracker()
        if self._running is not None:  # a phase left open by an interrupted call
            tracker.abort()
        self.energy = {k: v for k, v in self.energy.items() if not k.startswith("train:")}
        tracker.begin("train")
        self._running = "train"
        return control

    # --- energy: the train phase, and each evaluation as a phase of its own -----------------

    def _tracker(self) -> EnergyTracker:
        if self._phase is None:
            from ..energy.tracker import EnergyTracker, resolve_meters

            carbon = self.recipe.energy.carbon.model()
            meters = resolve_meters(
                self.recipe.energy.meters,
                self.pm,
                self.log,
                {"country": carbon.country if carbon else None},
            )
            self._phase = EnergyTracker(meters, self.pm, self.log)
        return self._phase

    def _end_phase(self) -> None:
        """End the running phase; a train phase paused for evaluations adds up its parts,
        an evaluation replaces the previous one's reading."""
        from ..energy.tracker import merge_readings

        assert self._phase is not None and self._running is not None
        for key, r in self._phase.end().items():
            have = self.energy.get(key)
            if self._running == "train" and have is not None:
                r = merge_readings(r.meter, [have, r], None, have.seconds + r.seconds)
            self.energy[key] = r
        self._running = None

    def eval_begin(self) -> None:
        """Start metering an evaluation (``FQTrainerMixin.evaluation_loop`` calls it): a
        running train phase is paused, so evaluation energy is not counted as training."""
        tracker = self._tracker()
        self._paused_train = self._running == "train"
        if self._running is not None:
            self._end_phase()
        tracker.begin("eval")
        self._running = "eval"

    def eval_end(self, ok: bool = True) -> None:
        """Stop metering the evaluation (its reading is ``energy["eval:<meter>"]``) and
        resume the train phase it paused."""
        tracker = self._tracker()
        if self._running == "eval":
            if ok:
                self._end_phase()
            else:
                tracker.abort()
                self._running = None
        if self._paused_train:
            tracker.begin("train")
            self._running = "train"
        self._paused_train = False

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._require_attached("on_step_begin")
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        pipe = self._require_attached("on_step_end")
        step = int(state.global_step) - 1  # the engine counts optimizer steps from 0
        pipe.session.on_step(step)
        self.pm.on_step(step, "train", dict(self._step_terms))
        # The last step of an epoch: run the epoch-end schedules now, before Trainer saves a
        # checkpoint at this step (Trainer's on_epoch_end comes after that save, so a run
        # resumed from it would never run them for this epoch).
        epoch = float(state.epoch or 0.0)
        if epoch > 0 and abs(epoch - round(epoch)) < 1e-9:
            self._epoch_end(pipe, round(epoch) - 1)
        return control

    def _epoch_end(self, pipe: CompressionPipeline, index: int) -> None:
        if index != self._last_epoch_end:
            pipe.session.on_epoch_end(index)
            self._last_epoch_end = index

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        pipe = self._require_attached("on_epoch_end")
        # an epoch cut short by max_steps ends here; a full one ended at its last step
        self._epoch_end(pipe, max(0, math.ceil(float(state.epoch or 0.0) - 1e-9) - 1))
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._require_attached("on_train_end")
        if self._running == "train":
            self._end_phase()
        if self.finalize_at_end:
            self.finalize()
        return control

    # --- finalize ----------------------------------------------------------------------------

    def _probe(self, m: nn.Module) -> torch.Tensor:
        assert self.example_input is not None
        with _LogitsOnly(m):
            return cast(torch.Tensor, m(self.example_input))

    @property
    def finalize_max_abs_diff(self) -> float | None:
        """Largest |finalized − fake-quantized| logit on the probe batch (after finalize)."""
        return self.pipeline.max_diff if self.pipeline is not None else None

    def finalize(self) -> nn.Module:
        """Bake the methods in (the pipeline's checked finalize); returns the plain model,
        also :attr:`final_model`. Called at train end with ``finalize_at_end=True``."""
        from ..engine import FINALIZE_TOLERANCE, Objective

        pipe = self._require_attached("finalize")
        if pipe.finalized:
            assert self.final_model is not None
            return self.final_model
        assert self.model is not None
        probe = self._probe if self.example_input is not None else None
        if probe is None:
            warnings.warn(
                "no calibration data: the finalized model is not checked against the "
                "fake-quantized one; pass FQCallback(calib_dataset=...) or use fq.trainer(...)",
                RuntimeWarning,
                stacklevel=2,
            )
        with _LogitsOnly(self.model):  # BMRS compares model(x) before and after removal
            final = pipe.finalize(self.model, probe)
        _strip_logits_hooks(final)
        quantizer = getattr(final, "hf_quantizer", None)
        if _is_fq_quantizer(quantizer):
            # baked in: a plain model now, saved and loaded without the quantizer
            quantizer.remove_quantization_config(final)
        diff = pipe.max_diff
        if diff is not None and diff > FINALIZE_TOLERANCE:
            self.log(f"warning: finalized model differs from the fake-quantized one by {diff:.3g}")
        if final is not self.model:  # a structural method may return another module
            self._install_hooks(final)
        self.final_model = self.model = final
        # the methods are baked in: no penalties any more, the fairness term stays
        self.objective = Objective.from_recipe(self.recipe, None, n_groups=self.n_groups)
        return final

    def export(self, path: str | os.PathLike[str]) -> nn.Module:
        """Finalize (if not yet) and write the plain model with ``save_pretrained``, loadable
        by stock ``from_pretrained``; checked: reloaded, it gives the same logits on the
        probe batch. Refused when a method changed the shapes (BMRS removed channels), since
        the model's config would no longer describe them."""
        from ..engine.pipeline import run_probe

        final = self.finalize()
        if not hasattr(final, "save_pretrained") or not hasattr(final, "config"):
            raise ConfigError(
                f"export() needs a transformers PreTrainedModel; got {type(final).__name__}: "
                "save fq.final_model with torch.save, or fq.pipeline.save(model, 'model.fqz')"
            )
        with torch.device("meta"):
            ref = type(final)(final.config)
        want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        changed = [
            k for k, v in final.state_dict().items() if k in want and tuple(v.shape) != want[k]
        ]
        if changed:
            raise ConfigError(
                f"the finalized model's shapes differ from its config at {changed[:3]} (a "
                "structural method removed channels), so from_pretrained could not load it; "
                "keep fq.final_model (torch.save) or save before finalize"
            )
        cast(Any, final).save_pretrained(os.fspath(path))
        if self.example_input is not None:
            loaded = cast(Any, type(final)).from_pretrained(os.fspath(path)).to(self.example_input.device)
            a, b = run_probe(self._probe, final), run_probe(self._probe, loaded)
            mine, theirs = final.state_dict(), loaded.state_dict()
            differ = [k for k in mine if k not in theirs or not torch.equal(mine[k], theirs[k])]
            # the weights must be bit-identical; the logits may differ in the last bits (a
            # CPU conv kernel can pick another algorithm for the reloaded tensors' layout)
            diff = float((a - b).abs().max()) if a.numel() else 0.0
            if differ or diff > 1e-6 * max(1.0, float(a.abs().max())):
                raise FQError(
                    f"the exported model at {os.fspath(path)!r} does not reproduce the finalized "
                    f"model (tensors that differ: {differ[:3]}; max |logit diff| {diff:.3g})"
                )
        return final

    # --- evaluation ----------------------------------------------------------------------------

    def cost(self) -> ModelCost:
        """Bits, sparsity, packed size, MACs and BOPs of the model now (``session.cost``)."""
        pipe = self._require_attached("cost")
        assert self.model is not None
        if self.example_input is None:
            return pipe.cost(self.model)
        with _LogitsOnly(self.model):
            return pipe.cost(self.model, self.example_input[:1])

    def _split_label_ids(self, label_ids: Any) -> tuple[Any, Any]:
        if not isinstance(label_ids, tuple | list) or len(label_ids) != len(self.label_names):
            raise ConfigError(
                f"compute_metrics got label_ids of type {type(label_ids).__name__}; with "
                f"TrainingArguments(label_names=[{self.label_key!r}, {self.group_key!r}]) Trainer "
                "passes one array per name. Set label_names so, and build the Trainer with this "
                "callback (it checks them at init)"
            )
        return (
            label_ids[self.label_names.index(self.label_key)],
            label_ids[self.label_names.index(self.group_key)],
        )

    def evaluation_report(self, logits: Any, labels: Any, groups: Any) -> EvaluationReport:
        """The engine's :class:`~fq_plugins.report.EvaluationReport` from evaluation logits
        ``(N, C)``, labels ``(N,)`` and group ids ``(N,)`` (arrays or tensors)."""
        from ..engine import build_report
        from ..fairness.table import GroupConfusion

        pipe = self._require_attached("compute_metrics")
        lg = torch.as_tensor(logits)
        y = torch.as_tensor(labels).reshape(-1).long()
        g = torch.as_tensor(groups).reshape(-1).long()
        n_groups = max(self.n_groups or 1, int(g.max()) + 1 if g.numel() else 1)
        table = GroupConfusion(n_groups, int(lg.shape[-1]))
        table.update(lg.reshape(-1, lg.shape[-1]), y, g)
        energy = dict(self.energy)
        if self._phase is not None and self._running is not None:
            # the running phase so far; a running train phase adds to its ended parts
            from ..energy.tracker import merge_readings

            for key, r in self._phase.snapshot().items():
                have = energy.get(key)
                if have is not None and self._running == "train":
                    r = merge_readings(r.meter, [have, r], None, have.seconds + r.seconds)
                energy[key] = r
        rep = build_report(
            self.variant,
            [c.method for c in pipe.configs],
            table,
            self.recipe.fairness.metrics,
            self.pm,
            self.cost(),
            energy,
            time.perf_counter() - self._t0,
            pipe.max_diff,
            metric_options=self.recipe.fairness.metric_options,
            carbon=self.recipe.energy.carbon.model(),
        )
        rep.method_stats = [{"method": st.method, **st.extra} for st in pipe.stats()]
        self.report = rep
        self.pm.on_evaluation(rep)
        return rep

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        """Trainer's ``compute_metrics``: the report's figures as floats (Trainer prefixes
        them with ``eval_``); the full report is :attr:`report`."""
        preds = eval_pred.predictions
        if isinstance(preds, tuple | list):
            preds = preds[0]
        labels, groups = self._split_label_ids(eval_pred.label_ids)
        return report_metrics(self.evaluation_report(preds, labels, groups))


def report_metrics(rep: EvaluationReport) -> dict[str, float]:
    """Flat float figures of a report, for Trainer's logs (TensorBoard shows scalars only)."""
    out: dict[str, float] = {
        "accuracy": rep.accuracy,
        "mean_group_accuracy": rep.mean_group_accuracy,
        "worst_group_accuracy": rep.worst_group_accuracy,
        "accuracy_gap": rep.accuracy_gap,
    }
    for name, acc in zip(rep.group_names, rep.group_accuracy, strict=True):
        out[f"group_accuracy_{name}"] = float(acc)
    for name, res in rep.metrics.items():
        out.setdefault(name, float(res.value))
    c = rep.cost
    out.update(
        avg_bits=c.avg_bits_param,
        avg_bits_channel=c.avg_bits_channel,
        sparsity=c.sparsity,
        packed_bytes=float(c.packed_bytes),
        compression_ratio=c.compression_ratio,
        macs=float(c.macs),
        bops=c.bops,
        bops_rel=c.bops_rel,
    )
    for key, r in rep.energy.items():
        phase, meter = key.split(":", 1) if ":" in key else (key, r.meter)
        label = "missing" if r.missing else ("estimated" if r.estimated else "measured")
        out[f"energy_{phase}_{meter}_joules_{label}"] = r.total_joules
    if rep.carbon is not None:
        out["carbon_g"] = float(getattr(rep.carbon, "grams", math.nan))
    if rep.finalize_max_abs_diff is not None:
        out["finalize_max_abs_diff"] = rep.finalize_max_abs_diff
    return out


# --- the Trainer subclass -----------------------------------------------------------------


class FQTrainerMixin:
    """Mixed into a Trainer class by :meth:`FQCallback.trainer`: the optimizer from
    ``session.param_groups``, the loss terms in the training logs, ``self.model`` replaced
    by the finalized model."""

    fq: FQCallback

    def __init__(self, *args: Any, fq_callback: FQCallback, **kwargs: Any) -> None:
        self.fq = fq_callback
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> Any:
        t = cast(Any, self)
        opt_model = t.model if model is None else model
        pipe = self.fq.pipeline
        if t.optimizer is not None or pipe is None:
            return super().create_optimizer(model)  # type: ignore[misc]
        cls, kw = t.get_optimizer_cls_and_kwargs(t.args, opt_model)
        if any(k in kw for k in ("params", "model", "optimizer_dict")) or not isinstance(cls, type):
            return super().create_optimizer(model)  # type: ignore[misc]  # checked at train begin
        groups = pipe.session.param_groups(opt_model, lr=t.args.learning_rate, weight_decay=0.0)
        rest, own = groups[0]["params"], groups[1:]
        decay = set(t.get_decay_parameter_names(opt_model))
        by_id = {id(p): n for n, p in opt_model.named_parameters()}
        t.optimizer = cls(
            [
                {"params": [p for p in rest if by_id.get(id(p)) in decay], "weight_decay": t.args.weight_decay},
                {"params": [p for p in rest if by_id.get(id(p)) not in decay], "weight_decay": 0.0},
                *own,
            ],
            **kw,
        )
        return t.optimizer

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            logs = {**logs, **self.fq.pop_loss_terms()}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        # evaluate() and predict(): the evaluation is an energy phase of its own
        self.fq.eval_begin()
        try:
            out = super().evaluation_loop(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            self.fq.eval_end(ok=False)
            raise
        self.fq.eval_end()
        return out

    def train(self, *args: Any, **kwargs: Any) -> Any:
        out = super().train(*args, **kwargs)  # type: ignore[misc]
        t = cast(Any, self)
        if self.fq.final_model is not None and self.fq.final_model is not t.model:
            t.model = t.model_wrapped = self.fq.final_model
        return out


_SUBCLASSES: dict[type[Any], type[Any]] = {}


def fq_trainer_class(trainer_cls: type[Any]) -> type[Any]:
    """``trainer_cls`` with :class:`FQTrainerMixin` mixed in (one class per base)."""
    if not isinstance(trainer_cls, type) or not issubclass(trainer_cls, transformers.Trainer):
        raise ConfigError(
            f"fq.trainer() needs a transformers.Trainer class (or a subclass); got {trainer_cls!r}"
        )
    if issubclass(trainer_cls, FQTrainerMixin):
        return trainer_cls
    sub = _SUBCLASSES.get(trainer_cls)
    if sub is None:
        sub = type(f"FQ{trainer_cls.__name__}", (FQTrainerMixin, trainer_cls), {})
        _SUBCLASSES[trainer_cls] = sub
    return sub



# --- from_pretrained / save_pretrained: the quantizer registration ------------------------

QUANT_METHOD = "fq_plugins"
"""``quant_method`` of :class:`FQQuantizationConfig` in a saved ``config.json``."""

_PARAMETRIZED = re.compile(r"(.*)\.parametrizations\.([^.]+)\.(original\d*)")


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every parametrized tensor under its plain name
    (``X.parametrizations.weight.original`` → ``X.weight``), the methods' own state under its
    own keys: what :class:`FQHfQuantizer` saves, so that a load without fq-plugins is at least
    the FP32 (latent) model."""
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        m = _PARAMETRIZED.fullmatch(k)
        if m is not None:
            if m[3] != "original":
                raise ConfigError(
                    f"{k!r} is one of several tensors of a parametrization with a right_inverse; "
                    "save_pretrained can keep only one tensor under the plain name "
                    f"{m[1]}.{m[2]!s}. Save with fq.pipeline / torch.save instead"
                )
            k = f"{m[1]}.{m[2]}"
        out[k] = v
    return out


def _to_model_keys(state: Mapping[str, Any], model_keys: set[str], prefix: str = "") -> dict[str, Any]:
    """Rename plain keys to the parametrized ones the model has (the inverse of
    :func:`base_state_dict`)."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k.startswith(prefix) and k not in model_keys:
            head, _, leaf = k.rpartition(".")
            alt = f"{head}.parametrizations.{leaf}.original" if head else k
            if alt in model_keys:
                k = alt
        out[k] = v
    return out


def _rename_on_load(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_args: Any
) -> None:
    """Load pre-hook: a state dict with plain names (a checkpoint this quantizer saved, e.g.
    Trainer's, which loads with ``load_state_dict(sd, strict=False)``) fills the
    parametrized tensors."""
    keys = {prefix + k for k in module.state_dict(keep_vars=True)}
    renamed = _to_model_keys(state_dict, keys, prefix)
    if renamed.keys() != state_dict.keys():
        state_dict.clear()
        state_dict.update(renamed)


def _read_checkpoint(files: list[str]) -> dict[str, torch.Tensor]:
    from ..storage import CheckpointError

    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.endswith(".safetensors"):
                from safetensors.torch import load_file

                out.update(load_file(f, device="cpu"))
            else:
                out.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise CheckpointError(f"cannot read the checkpoint file {f!r}: {exc}") from exc
    return out


def _checkpoint_keys(files: list[str]) -> list[str]:
    keys: list[str] = []
    for f in files:
        if f.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(f, framework="pt") as fh:
                keys.extend(fh.keys())
    return keys


def _tensor_spec(x: torch.Tensor | None) -> dict[str, Any] | None:
    if x is None:
        return None
    return {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}


def _from_spec(spec: Mapping[str, Any] | None, device: torch.device) -> torch.Tensor | None:
    if not spec:
        return None
    dtype = getattr(torch, str(spec["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(
            f"quantization_config.example_input has dtype {spec['dtype']!r}, not a torch dtype; "
            "save the model again with this version of fq-plugins"
        )
    return torch.zeros([int(n) for n in spec["shape"]], dtype=dtype, device=device)


_RUNTIME = ("_calib_dataset", "_data_collator", "_batch_size", "_example_tensor", "_plugin_manager")


class FQQuantizationConfig(QuantizationConfigMixin):
    """``from_pretrained(..., quantization_config=FQQuantizationConfig(recipe))``: the recipe's
    methods attached to the loaded model (weights loaded first, then attach, so every
    method starts from the real weights).

    :param recipe: a path, a dict or a :class:`~fq_plugins.recipe.CompressionRecipe`; saved
        in ``config.json`` as the validated recipe (JSON).
    :param calib_dataset: examples (dicts, Trainer's format) for methods that calibrate or
        trace at attach (FairQuant's importance, BMRS); not saved.
    :param example_input: a model input batch for the finalize probe and for BMRS's trace
        (default: the first calibration batch); its shape and dtype are saved, so a reload
        rebuilds the same gates.
    :param n_groups: number of groups for the methods' group statistics.

    Only JSON fields are saved (``to_dict``); the data arguments are for this load only.
    """

    def __init__(
        self,
        recipe: str | os.PathLike[str] | dict[str, Any] | CompressionRecipe | None = None,
        *,
        calib_dataset: Any = None,
        data_collator: Callable[[list[Any]], Any] | None = None,
        batch_size: int = 32,
        example_input: torch.Tensor | dict[str, Any] | None = None,
        n_groups: int | None = None,
        input_key: str | None = None,
        label_key: str = "labels",
        plugin_manager: FQPluginManager | None = None,
        quant_method: str = QUANT_METHOD,
        **unknown: Any,
    ) -> None:
        from ..recipe import load_compression_recipe

        if quant_method != QUANT_METHOD:
            raise ConfigError(
                f"FQQuantizationConfig got quant_method={quant_method!r}; it is always "
                f"{QUANT_METHOD!r}"
            )
        if unknown:
            raise ConfigError(
                f"FQQuantizationConfig got unknown fields {sorted(unknown)}; allowed: recipe, "
                "example_input, n_groups, input_key, label_key (saved) and calib_dataset, "
                "data_collator, batch_size, plugin_manager (this load only)"
            )
        if recipe is None:
            raise ConfigError(
                "FQQuantizationConfig needs a recipe: FQQuantizationConfig('recipe.yaml') or "
                "FQQuantizationConfig({'compress': [{'method': 'uniform', 'bits': 4}]})"
            )
        recipe = load_compression_recipe(recipe, plugin_manager=plugin_manager)
        if not recipe.compress:
            raise ConfigError(
                "FQQuantizationConfig: the recipe has no methods; add at least one item, e.g. "
                "compress: [{method: uniform, bits: 4}]",
                key="compress",
            )
        self.quant_method = cast(Any, QUANT_METHOD)
        self.recipe: dict[str, Any] = recipe.model_dump(mode="json")
        if isinstance(example_input, torch.Tensor):
            self.example_input = _tensor_spec(example_input)
        else:
            self.example_input = dict(example_input) if example_input else None
        self.n_groups = n_groups
        self.input_key = input_key
        self.label_key = label_key
        self._calib_dataset = calib_dataset
        self._data_collator = data_collator
        self._batch_size = int(batch_size)
        self._example_tensor = example_input if isinstance(example_input, torch.Tensor) else None
        self._plugin_manager = plugin_manager

    def compression_recipe(self) -> CompressionRecipe:
        from ..recipe import load_compression_recipe

        return load_compression_recipe(self.recipe, plugin_manager=self._plugin_manager)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in _RUNTIME})

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        yield from self.to_dict().items()

    def __deepcopy__(self, memo: dict[int, Any]) -> FQQuantizationConfig:
        new = object.__new__(type(self))
        for k, v in self.__dict__.items():
            new.__dict__[k] = v if k in _RUNTIME else copy.deepcopy(v, memo)
        return new


class FQHfQuantizer(HfQuantizer):
    """The ``HfQuantizer`` behind :class:`FQQuantizationConfig` (registered as
    ``quant_method="fq_plugins"`` on import of :mod:`fq_plugins.adapters.hf`).

    * a plain checkpoint + ``FQQuantizationConfig(recipe)``: the weights load, then the
      methods attach (calibrating on ``calib_dataset``);
    * a checkpoint it saved (``config.json`` has the config): the weights load under their
      plain names, the methods attach structurally (``AttachContext(dry_run=True)``, BMRS
      traced on zeros of the saved ``example_input`` shape), then every method tensor is
      loaded from the checkpoint and checked complete — the rebuilt model computes exactly
      what the saved one did. Nothing is created before the weights load, so no tensor is
      left uninitialised;
    * ``save_pretrained``: :func:`base_state_dict` (plain names + the methods' state);
    * trainable (QAT) and serializable, as Trainer requires.
    """

    requires_calibration = False
    quantization_config: FQQuantizationConfig

    def __init__(self, quantization_config: FQQuantizationConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.checkpoint_files: list[str] = []
        self.pipeline: CompressionPipeline | None = None
        self.example_input: torch.Tensor | None = None
        self._base_keys: set[str] = set()

    def __deepcopy__(self, memo: dict[int, Any]) -> FQHfQuantizer:
        return self  # a copy of the model (BMRS's finalize) shares its quantizer

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True

    def is_serializable(self, safe_serialization: Any = None) -> bool:
        return True

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        self.checkpoint_files = [os.fspath(f) for f in (kwargs.get("checkpoint_files") or [])]
        self._base_keys = set(model.state_dict())
        if self.pre_quantized:
            # the methods' own tensors are loaded after attach: keep transformers from
            # reporting them as unexpected
            extra = [k for k in _checkpoint_keys(self.checkpoint_files) if k not in self._base_keys]
            ignore = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
            ignore.update(f"^{re.escape(k)}$" for k in extra)
            model.__dict__["_keys_to_ignore_on_load_unexpected"] = ignore
        return model

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        from ..engine import CompressionPipeline
        from ..manager import get_plugin_manager

        cfg = self.quantization_config
        recipe = cfg.compression_recipe()
        pm = cfg._plugin_manager or get_plugin_manager()
        device = next(model.parameters()).device
        group_key = recipe.fairness.group_key
        if self.pre_quantized:
            # structure only: every method tensor is overwritten from the checkpoint below.
            # A method that measures even in a dry run gets one placeholder batch (zeros of
            # the saved input shape, class 0, group 0); nothing it computes from it survives.
            x = _from_spec(cfg.example_input, device)
            placeholder = None
            if x is not None:
                zeros = torch.zeros(x.shape[0], dtype=torch.long, device=device)
                batch = (x, zeros, zeros)

                def placeholder() -> Iterator[Any]:
                    yield batch

            ctx = AttachContext(
                calib_batches=placeholder,
                group_key=group_key,
                n_groups=cfg.n_groups,
                device=device,
                example_input=x,
                dry_run=True,
            )
        else:
            calib = None
            if cfg._calib_dataset is not None:
                calib = calib_loader(
                    cfg._calib_dataset, model, collate=cfg._data_collator,
                    batch_size=cfg._batch_size, input_key=cfg.input_key,
                    label_key=cfg.label_key, group_key=group_key,
                )
            x = cfg._example_tensor
            if x is None and calib is not None:
                x = next(iter(calib()))[0][:8].detach().clone()
            if x is not None:
                x = x.to(device)
            cfg.example_input = _tensor_spec(x)
            ctx = AttachContext(calib_batches=calib, group_key=group_key, n_groups=cfg.n_groups,
                                device=device, example_input=x)
        pipe = CompressionPipeline(recipe.compress, plugin_manager=pm, context=ctx)
        if len(pipe.stages) > 1:
            raise ConfigError(
                f"this recipe has {len(pipe.stages)} stages (a structural method such as bmrs, "
                "then the others); FQQuantizationConfig attaches one stage: load with the bmrs "
                "stage, finalize it, then attach the others",
                key="compress",
            )
        with _LogitsOnly(model):
            pipe.start(model)
        model.to(device)
        _check_tensor_state(model)
        if self.pre_quantized:
            self._load_method_state(model)
        model.register_load_state_dict_pre_hook(_rename_on_load)
        self.pipeline, self.example_input = pipe, x
        return model

    def _load_method_state(self, model: nn.Module) -> None:
        from ..storage import CheckpointError

        keys = set(model.state_dict())
        saved = _to_model_keys(_read_checkpoint(self.checkpoint_files), keys)
        own = {k for k in keys if k not in self._base_keys}
        missing = sorted(k for k in own if k not in saved)
        unexpected = sorted(k for k in saved if k not in keys)
        if missing or unexpected:
            raise CheckpointError(
                f"the checkpoint {self.checkpoint_files[:1]} does not hold the state of the "
                f"methods its quantization_config names (missing {missing[:4]}, unexpected "
                f"{unexpected[:4]}); it was saved from another recipe or model. Load it with "
                "the recipe it was saved with (its config.json), or without quantization_config"
            )
        model.load_state_dict({k: v for k, v in saved.items() if k in keys}, strict=False)

    def get_state_dict_and_metadata(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        return base_state_dict(model), {}


def _is_fq_quantizer(q: Any) -> TypeGuard[FQHfQuantizer]:
    """``q`` is this package's quantizer (by ``quant_method``: a module imported twice has
    two FQHfQuantizer classes)."""
    cfg = getattr(q, "quantization_config", None)
    return getattr(cfg, "quant_method", None) == QUANT_METHOD and hasattr(q, "pipeline")


def register_fq_quantizer() -> None:
    """Register :class:`FQQuantizationConfig` / :class:`FQHfQuantizer` as
    ``quant_method="fq_plugins"`` (idempotent; a re-imported module keeps the classes
    registered first, which the callback recognises by ``quant_method``; another
    package's registration of the name is an error)."""
    from transformers.quantizers import auto

    for mapping, cls, register in (
        (auto.AUTO_QUANTIZATION_CONFIG_MAPPING, FQQuantizationConfig, register_quantization_config),
        (auto.AUTO_QUANTIZER_MAPPING, FQHfQuantizer, register_quantizer),
    ):
        have = mapping.get(QUANT_METHOD)
        if have is cls:
            continue
        if have is None:
            register(QUANT_METHOD)(cls)
        elif getattr(have, "__module__", "") == __name__ and have.__name__ == cls.__name__:
            continue  # this module imported a second time (a reload): keep the first classes
        else:
            raise FQError(
                f"transformers has quant_method {QUANT_METHOD!r} registered already, by "
                f"{have.__module__}.{have.__name__}; uninstall the package that registers it"
            )


register_fq_quantizer()
