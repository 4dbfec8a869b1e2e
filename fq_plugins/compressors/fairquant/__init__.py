"""FairQuant: group-aware importance → budgeted mixed precision → QAT or learnable bits (BAQ).

Registered as the built-in compressor ``fairquant`` with three modes:

* ``static`` — importance and allocation, then fixed per-channel bits (post-training: no
  fine-tuning in ``fq-plugins run``);
* ``qat`` (default) — the same fixed bits, fine-tuned with fake-quantization (the recipe's
  fairness regularizer, e.g. ``gap`` with weight 0.5, supplies FairQuant's λ_fair term);
* ``baq`` — learnable per-channel bits (and optional dead-zone) initialised from the
  allocation, a bitrate penalty toward the budget, and a projection that keeps the learned
  parameter-weighted average at or under the budget.

Public parts: :func:`group_importance`, :func:`allocate_bits`, :class:`FairQuantCompressor`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import nn

from ..._config import StrictConfig
from ...accounting import UNQUANTIZED_BITS, average_bits, weight_params_total
from ...errors import ConfigError
from ...protocols import AttachContext, CompressionStats, Compressor, LayerStats, MethodConfig
from ...targets import Target
from ..uniform import SymmetricWeightQuant
from .allocation import Allocation, allocate_bits, check_levels
from .baq import LearnableBitQuant
from .importance import ImportanceResult, check_calib_groups, group_importance, reduce_groups

__all__ = [
    "Allocation",
    "FairQuantCompressor",
    "FairQuantConfig",
    "ImportanceResult",
    "LearnableBitQuant",
    "allocate_bits",
    "group_importance",
    "reduce_groups",
]

log = logging.getLogger("fq_plugins")


class ImportanceSpec(StrictConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)

    signal: Literal["grape", "gradient", "hawq"] = "grape"
    reducer: Literal["balanced", "max", "mean", "cvar", "subtractive"] = "balanced"
    calib_batches: int = Field(50, ge=1)
    granularity: Literal["channel", "tensor"] = "channel"
    group_source: Literal["auto", "groups", "classes"] = "auto"
    cvar_alpha: float = Field(0.1, ge=0.0, lt=1.0)
    hawq_samples: int = Field(10, ge=1)


class BudgetSpec(StrictConfig):
    """Either ``levels`` (bit → fraction of channels) or ``avg_bits`` (parameter-weighted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: dict[int, float] | None = None
    avg_bits: float | None = Field(None, gt=0)
    choices: list[int] = Field(
        default_factory=lambda: [2, 3, 4, 5, 6, 7, 8],
        description="Bit-widths the avg_bits solver may use.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_levels(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("levels") is None and data.get("avg_bits") is None:
            return {**data, "levels": {2: 0.2, 4: 0.4, 8: 0.4}}
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetSpec:
        if self.levels is not None and self.avg_bits is not None:
            raise ValueError("give either `levels` or `avg_bits`, not both")
        if self.levels is not None:
            check_levels(list(self.levels), list(self.levels.values()))
        else:
            check_levels(self.choices)
        return self


class BitRange(StrictConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int = Field(2, ge=1, le=16)
    max: int = Field(8, ge=1, le=16)

    @model_validator(mode="after")
    def _ordered(self) -> BitRange:
        if self.min >= self.max:
            raise ValueError(f"bits.min must be < bits.max; got {self.min} and {self.max}")
        return self


class Penalties(StrictConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bitrate: float = Field(1.0, ge=0.0, description="λ_b of λ_b·(avg_bits − target)².")


class FairQuantConfig(MethodConfig):
    """``method: fairquant``."""

    mode: Literal["static", "qat", "baq"] = "qat"
    learnable_bits: bool | None = Field(
        None, description="True is the same as mode: baq (DESIGN.md's recipe sketch)."
    )
    importance: ImportanceSpec = Field(default_factory=ImportanceSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    bits: BitRange = Field(default_factory=BitRange)
    deadzone: bool = Field(False, description="BAQ: learn a per-channel dead-zone too.")
    penalties: Penalties = Field(default_factory=Penalties)
    bit_lr: float = Field(3e-3, gt=0, description="BAQ: lr of the bit/dead-zone logits.")

    @model_validator(mode="before")
    @classmethod
    def _mode(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        learnable, mode = data.get("learnable_bits"), data.get("mode")
        if learnable is True:
            if mode is not None and mode != "baq":
                raise ValueError(f"learnable_bits: true contradicts mode: {mode}; use mode: baq")
            return {**data, "mode": "baq"}
        if learnable is False and mode == "baq":
            raise ValueError("learnable_bits: false contradicts mode: baq")
        return data


_QUANTIZERS = (SymmetricWeightQuant, LearnableBitQuant)


class FairQuantCompressor(Compressor):
    """FairQuant: group-aware importance, budgeted mixed precision, QAT or learnable bits."""

    name = "fairquant"
    description = (
        "FairQuant: group-aware importance → budgeted mixed-precision bits; modes static/qat/baq."
    )
    Config = FairQuantConfig
    config: FairQuantConfig

    def __init__(self, config: MethodConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.importance: ImportanceResult | None = None
        """The importance measured at attach (a report; the scores in use are in the
        model's state, so a checkpoint restores them)."""
        self.allocation: Allocation | None = None
        self._n_all = 0
        self._n_untargeted = 0
        self._unit_params: dict[str, int] = {}

    @property
    def target_avg_bits(self) -> float | None:
        """The parameter-weighted budget (from ``avg_bits`` or the levels' allocation)."""
        if self._state is None:
            return None
        v = float(self.state.get("target_avg_bits"))
        return None if math.isnan(v) else v

    def _scores(self, name: str) -> torch.Tensor:
        return self.state.get(f"score:{name}")

    # --- life cycle ---------------------------------------------------------------

    def attach(
        self,
        model: nn.Module,
        targets: Sequence[Target],
        context: AttachContext | None = None,
    ) -> None:
        cfg = self.config
        imp = cfg.importance
        for t in targets:
            name, mod = t
            if self.find_transform(mod, _QUANTIZERS, t.param) is not None:
                raise ConfigError(
                    f"module {name!r} is already quantized; apply one quantizer per module",
                    key="targets",
                )
        if context is None:
            raise ConfigError(
                "fairquant needs calibration batches (x, y, group) for its group-aware "
                "importance: pass AttachContext(calib_batches=...) to attach, or run it through "
                "`fq-plugins run` / CompressionSession.attach(model, context)"
            )
        # A dry run (``fq-plugins validate``, the start of ``run``) does the real computation
        # on the first calibration batch: the model's forward/backward on it (output shape,
        # label range, group ids, double-backward for hawq), then the allocation below (budget
        # feasibility). "Every group present" needs the whole calibration set: from the
        # group ids alone, without the model.
        if context.dry_run:
            check_calib_groups(
                context.iter_calib(),
                calib_batches=imp.calib_batches,
                n_groups=context.n_groups,
                group_source=imp.group_source,
            )
        self.importance = group_importance(
            model,
            context.iter_calib(),
            targets,
            signal=imp.signal,
            reducer=imp.reducer,
            calib_batches=1 if context.dry_run else imp.calib_batches,
            n_groups=context.n_groups,
            group_source=imp.group_source,
            granularity=imp.granularity,
            cvar_alpha=imp.cvar_alpha,
            hawq_samples=1 if context.dry_run else imp.hawq_samples,
            require_all_groups=not context.dry_run,
        )
        if self.importance.groups_from == "classes":
            log.warning(
                "fairquant: no group ids in the calibration batches; used classes as groups"
            )
        self._n_all = weight_params_total(model)
        n_targeted = sum(self.original(t.module, t.param).numel() for t in targets)
        self._n_untargeted = self._n_all - n_targeted
        self._unit_params = {
            t.name: self.original(t.module, t.param).numel()
            // self.importance.scores[t.name].numel()
            for t in targets
        }
        budget = cfg.budget
        try:
            if budget.avg_bits is not None:
                self.allocation = allocate_bits(
                    self.importance.scores,
                    self._unit_params,
                    levels=budget.choices,
                    avg_bits=budget.avg_bits,
                    untargeted_params=self._n_untargeted,
                )
            else:
                assert budget.levels is not None  # the validator filled it
                self.allocation = allocate_bits(
                    self.importance.scores,
                    self._unit_params,
                    levels=list(budget.levels),
                    fractions=list(budget.levels.values()),
                    untargeted_params=self._n_untargeted,
                )
        except ConfigError as exc:
            msg = str(exc).removeprefix(f"{exc.key}: ") if exc.key else str(exc)
            raise ConfigError(
                msg, key="budget.avg_bits" if budget.avg_bits is not None else "budget.levels"
            ) from None
        target = budget.avg_bits if budget.avg_bits is not None else self.allocation.avg_bits_param
        # Everything a resumed run needs lives in the model: the scores (projection uses
        # them), the budget, and the attach-time report.
        state = self.add_state(targets[0][1])
        state.put("target_avg_bits", torch.tensor(float(target), dtype=torch.float64))
        for name, sc in self.importance.scores.items():
            state.put(f"score:{name}", sc.double())
        state.record = self._attach_record()
        per_channel = imp.granularity == "channel"
        for t in targets:
            name, mod = t
            bits = self.allocation.bits[name]
            if cfg.mode == "baq":
                c = self.original(mod, t.param).shape[0]
                init = bits.expand(c) if bits.numel() == 1 else bits
                quant: nn.Module = LearnableBitQuant(
                    init, b_min=cfg.bits.min, b_max=cfg.bits.max, deadzone=cfg.deadzone
                )
            else:
                quant = SymmetricWeightQuant(bits, per_channel=per_channel)
            self.install_transform(name, mod, quant, t.param)
            self.attached.append((name, mod))

    def _attach_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        if self.allocation is not None:
            rec["allocation"] = {
                "method": self.allocation.method,
                "avg_bits_param": self.allocation.avg_bits_param,
                "avg_bits_channel": self.allocation.avg_bits_channel,
            }
        if self.importance is not None:
            rec["importance"] = {
                "signal": self.importance.signal,
                "reducer": self.importance.reducer,
                "groups_from": self.importance.groups_from,
                "group_totals": self.importance.group_totals.tolist(),
                "group_counts": self.importance.group_counts.tolist(),
                "batches": self.importance.n_batches,
            }
        return rec

    def wants_training(self) -> bool:
        return self.config.mode != "static"

    # --- BAQ ----------------------------------------------------------------------

    def _baq(self) -> list[tuple[str, nn.Module, LearnableBitQuant]]:
        return [
            (t.name, t.module, t.transform)
            for t in self.transforms
            if isinstance(t.transform, LearnableBitQuant)
        ]

    def _static(self) -> list[tuple[str, SymmetricWeightQuant]]:
        return [
            (t.name, t.transform)
            for t in self.transforms
            if isinstance(t.transform, SymmetricWeightQuant)
        ]

    def avg_bits(self, *, ste: bool = False) -> torch.Tensor:
        """Parameter-weighted average bits over all Conv/Linear weights (untargeted = 32)."""
        total: torch.Tensor = torch.zeros((), dtype=torch.float64)
        for name, _, q in self._baq():
            b = q.bits_ste() if ste else q.bits()
            total = total + (b.double() * self._unit_params[name]).sum()
        for name, sq in self._static():
            total = total + sq.bits.double().sum() * self._unit_params[name]
        return average_bits(total, self._n_untargeted, self._n_all)

    def penalty(self) -> torch.Tensor:
        if (
            self.config.mode != "baq"
            or self.target_avg_bits is None
            or self.config.penalties.bitrate == 0
        ):
            return torch.zeros(())
        excess = self.avg_bits(ste=True) - self.target_avg_bits
        return (self.config.penalties.bitrate * excess**2).float()

    def param_groups(self) -> list[dict[str, Any]]:
        params = []
        for _, _, q in self._baq():
            params.append(q.bit_logit)
            if q.dz_logit is not None:
                params.append(q.dz_logit)
        return [{"params": params, "lr": self.config.bit_lr, "weight_decay": 0.0}] if params else []

    def on_epoch_end(self, epoch: int) -> None:
        self.project_to_budget()

    @torch.no_grad()
    def project_to_budget(self) -> bool:
        """If the learned average exceeds the budget, lower bits optimally to meet it.

        Solves the same exact allocation (importance-weighted error, MILP) with each
        channel's learned bits as its upper bound. Returns True when bits changed.
        """
        baq = self._baq()
        budget = self.target_avg_bits
        if not baq or budget is None:
            return False
        if float(self.avg_bits()) <= budget + 1e-9:
            return False
        cfg = self.config
        scores = {name: self._scores(name).float() for name, _, _ in baq}
        max_bits = {}
        for name, _, q in baq:  # one cap per importance unit (a tensor unit: its widest channel)
            b, units = q.bits().flatten(), scores[name].numel()
            max_bits[name] = b if b.numel() == units else b.reshape(units, -1).amax(dim=1)
        static = self._static()
        fixed = self._n_untargeted + sum(
            int(sq.bits.numel()) * self._unit_params[n] for n, sq in static
        )
        fixed_bits = UNQUANTIZED_BITS * self._n_untargeted + sum(
            float(sq.bits.sum()) * self._unit_params[n] for n, sq in static
        )
        # the solver counts `fixed` weights at 32 bits; fold their real bits into the target
        target = budget + (UNQUANTIZED_BITS * fixed - fixed_bits) / max(self._n_all, 1)
        alloc = allocate_bits(
            scores,
            {n: self._unit_params[n] for n in scores},
            levels=list(range(cfg.bits.min, cfg.bits.max + 1)),
            avg_bits=target,
            untargeted_params=fixed,
            max_bits=max_bits,
        )
        for name, _, q in baq:
            q.set_bits(alloc.bits[name].expand_as(q.bit_logit))
        log.info(
            "fairquant: projected learned bits to the budget (avg %.4f)", float(self.avg_bits())
        )
        return True

    # --- reporting and finalize ---------------------------------------------------

    def stats(self) -> CompressionStats:
        layers = {}
        for t in self.transforms:
            q = t.transform
            c = int(self.original(t.module, t.param).shape[0])
            bits = (
                q.bits() if isinstance(q, LearnableBitQuant) else cast(SymmetricWeightQuant, q).bits
            )
            layers[t.name] = LayerStats(
                bits=(bits if bits.numel() == c else bits.expand(c)).detach().clone()
            )
        extra: dict[str, Any] = {"mode": self.config.mode, "target_avg_bits": self.target_avg_bits}
        if self._state is not None:
            extra.update(self.state.record)
        return CompressionStats(method=self.name, layers=layers, extra=extra)

    def before_finalize(self) -> None:
        if self.project_to_budget():
            log.warning(
                "fairquant: bits were over budget at finalize and were projected; "
                "outputs differ from the last fake-quantized evaluation"
            )

    def finalize(self, model: nn.Module) -> nn.Module:
        self.before_finalize()
        self.bake_transforms()
        self.remove_state()
        return model
