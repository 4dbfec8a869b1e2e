"""Example third-party plugin: a magnitude pruner, a worst-class-recall metric and a
wall-clock × power energy estimate."""

from __future__ import annotations

import time

import torch
from pydantic import Field
from torch import nn

from fq_plugins import hookimpl
from fq_plugins.fairness.table import GroupConfusion
from fq_plugins.hookspecs import RegisterFn
from fq_plugins.protocols import (
    Availability,
    Compressor,
    EnergyMeter,
    EnergyReading,
    FairnessMetric,
    MeterConfig,
    MethodConfig,
    MetricResult,
)

__all__ = ["MagnitudePrune", "WallTdpConfig", "WallTdpMeter", "WorstClassRecall"]


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


class MagnitudePruneConfig(MethodConfig):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="Fraction of each weight set to 0.")


class MagnitudePrune(Compressor):
    """Unstructured per-layer magnitude pruning (mask fixed at attach)."""

    name = "magnitude_prune"
    description = "Zero the smallest-|w| fraction of each targeted weight (example plugin)."
    Config = MagnitudePruneConfig
    config: MagnitudePruneConfig

    def attach(self, model, targets, context=None):  # type: ignore[no-untyped-def]
        for t in targets:  # t.name, t.module, t.param ("weight" unless the recipe says)
            w = self.original(t.module, t.param).detach()
            k = int(self.config.sparsity * w.numel())
            mask = torch.ones_like(w)
            if k > 0:
                thresh = w.abs().flatten().kthvalue(k).values
                mask = (w.abs() > thresh).to(w.dtype)
            # through the host's installer: parametrize here, an NNCF hook or a torchao
            # handler under the adapters; the mask is a buffer, so checkpoints carry it
            self.install_transform(t.name, t.module, _Mask(mask), t.param)
            self.attached.append((t.name, t.module))

    def finalize(self, model):  # type: ignore[no-untyped-def]
        self.bake_transforms()
        return model


class WorstClassRecall(FairnessMetric):
    """Lowest recall over classes with examples (all groups pooled)."""

    name = "worst_class_recall"
    description = "Minimum per-class recall over classes with examples (example plugin)."

    def compute(self, table: GroupConfusion) -> MetricResult:
        pooled = table.counts.sum(dim=0)  # true × predicted
        support = pooled.sum(dim=1)
        recall = torch.diagonal(pooled) / support.clamp_min(1)
        present = recall[support > 0]
        return MetricResult(
            self.name,
            float(present.min()) if present.numel() else float("nan"),
            per_class=torch.where(support > 0, recall, torch.nan).tolist(),
        )


class WallTdpConfig(MeterConfig):
    """Options of ``walltdp``: the recipe item ``{name: walltdp, watts: 10}``."""

    watts: float = Field(gt=0, description="Assumed constant power draw of the machine (W)")


class WallTdpMeter(EnergyMeter):
    """Estimate: wall-clock seconds × a configured power (``estimated:wall-tdp``).

    Every option comes from :class:`WallTdpConfig`; the base constructor validates it
    (``WallTdpMeter(watts=10)`` or ``WallTdpMeter(config)``) and keeps it as ``self.config``.
    """

    name = "walltdp"
    description = "Estimate: wall-clock seconds × a configured power in watts (example plugin)."
    measured = False  # an estimate: `auto` never picks it, and its label says estimated:
    Config = WallTdpConfig
    config: WallTdpConfig

    _t0: float | None = None

    def probe(self) -> Availability:
        return Availability("ok", f"wall clock × {self.config.watts:g} W (estimate)")

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> EnergyReading:
        if self._t0 is None:
            raise RuntimeError("WallTdpMeter.stop() called before start()")
        seconds = time.perf_counter() - self._t0
        self._t0 = None
        return EnergyReading(
            meter=self.name,
            seconds=seconds,
            joules={"system:wall-tdp": seconds * self.config.watts},
            methods={"system:wall-tdp": "estimated:wall-tdp"},
            details={"watts": self.config.watts},
        )


@hookimpl
def fq_register_compressors(register):  # type: ignore[no-untyped-def]
    register(MagnitudePrune)


@hookimpl
def fq_register_fairness_metrics(register):  # type: ignore[no-untyped-def]
    register(WorstClassRecall)


@hookimpl
def fq_register_energy_meters(register: RegisterFn) -> None:
    register(WallTdpMeter)
