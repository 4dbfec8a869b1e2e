"""Uniform k-bit: per-output-channel symmetric absmax fake-quantization of weights.

``s = max|w_c| / Q``, ``ŵ = clamp(round(w/s), -Q, Q)·s`` with ``Q = 2^(b-1) − 1``; 1 bit is
binary (``sign(w)·mean|w_c|``). Weights of Conv/Linear only; activations stay float. The
state (bits per channel) lives in the model as a parametrization buffer, so ``state_dict``
round-trips it; ``finalize`` bakes the fake-quantized weights in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils import parametrize

from .._markers import hookimpl
from ..errors import ConfigError
from ..hookspecs import RegisterFn
from ..protocols import AttachContext, CompressionStats, Compressor, LayerStats, MethodConfig
from ..targets import MODULE_TYPES
from .ops import bake_weight_parametrizations, find_weight_parametrization, symmetric_fake_quant
from .ops import module_weight as _weight

__all__ = ["SymmetricWeightQuant", "UniformCompressor", "UniformConfig", "weight_params_total"]


class SymmetricWeightQuant(nn.Module):
    """Parametrization: symmetric absmax fake-quant with per-channel (buffer) bit-widths."""

    bits: torch.Tensor

    def __init__(self, bits: torch.Tensor, per_channel: bool = True) -> None:
        super().__init__()
        self.per_channel = per_channel
        self.register_buffer("bits", bits.detach().clone().float())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return symmetric_fake_quant(w, self.bits, per_channel=self.per_channel)


class AvgBitsBudget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    avg_bits: float = Field(gt=0, description="Target parameter-weighted average bits.")


class UniformConfig(MethodConfig):
    """``method: uniform``. Either ``bits`` or ``budget.avg_bits`` (the widest k that fits)."""

    bits: int = Field(8, ge=1, le=16, description="Weight bit-width k (1–16).")
    granularity: Literal["channel", "tensor"] = "channel"
    budget: AvgBitsBudget | None = None


def _quantizer(mod: nn.Module) -> SymmetricWeightQuant | None:
    """This method's parametrization on ``mod.weight`` (other methods' may be chained)."""
    return cast(SymmetricWeightQuant | None, find_weight_parametrization(mod, SymmetricWeightQuant))


def weight_params_total(model: nn.Module) -> int:
    """Number of Conv/Linear weight parameters (the accounting's denominator)."""
    types = MODULE_TYPES["conv"] + MODULE_TYPES["linear"]
    return sum(_weight(m).numel() for m in model.modules() if isinstance(m, types))


class UniformCompressor(Compressor):
    """Uniform k-bit per-channel symmetric weight quantization (baseline)."""

    name = "uniform"
    description = "Uniform k-bit per-channel symmetric absmax weight fake-quant (baseline)."
    Config = UniformConfig
    config: UniformConfig

    def _choose_bits(self, model: nn.Module, targets: Sequence[tuple[str, nn.Module]]) -> int:
        if self.config.budget is None:
            return self.config.bits
        n_all = weight_params_total(model)
        n_q = sum(_weight(m).numel() for _, m in targets)
        n_rest = n_all - n_q

        def avg(k: int) -> float:
            return (k * n_q + 32 * n_rest) / n_all

        fitting = [k for k in range(1, 17) if avg(k) <= self.config.budget.avg_bits + 1e-9]
        if not fitting:
            raise ConfigError(
                f"avg_bits {self.config.budget.avg_bits:g} cannot be met: with these targets "
                f"uniform bits give averages from {avg(1):.3f} (1 bit) to {avg(16):.3f} (16 bits), "
                f"since {n_rest} weights outside the targets count as 32 bits. Raise the budget "
                f"or target more layers.",
                key="budget.avg_bits",
            )
        return max(fitting)

    def attach(
        self,
        model: nn.Module,
        targets: Sequence[tuple[str, nn.Module]],
        context: AttachContext | None = None,
    ) -> None:
        k = self._choose_bits(model, targets)
        self.chosen_bits = k
        per_channel = self.config.granularity == "channel"
        for name, mod in targets:
            if _quantizer(mod) is not None:
                raise ConfigError(
                    f"module {name!r} is already quantized by uniform; attach it once per module "
                    f"(check overlapping targets in the recipe)",
                    key="targets",
                )
            c = int(_weight(mod).shape[0]) if per_channel else 1
            parametrize.register_parametrization(
                mod, "weight", SymmetricWeightQuant(torch.full((c,), float(k)), per_channel)
            )
            self.attached.append((name, mod))

    def stats(self) -> CompressionStats:
        layers = {}
        for name, mod in self.attached:
            q = _quantizer(mod)
            if q is None:
                continue
            c = int(_weight(mod).shape[0])
            bits = q.bits if q.bits.numel() == c else q.bits.expand(c)
            layers[name] = LayerStats(bits=bits.detach().clone())
        return CompressionStats(
            method=self.name, layers=layers, extra={"bits": getattr(self, "chosen_bits", None)}
        )

    def finalize(self, model: nn.Module) -> nn.Module:
        bake_weight_parametrizations(self.attached)
        return model


@hookimpl
def fq_register_compressors(register: RegisterFn) -> None:
    register(UniformCompressor)
