"""Uniform k-bit: per-output-channel symmetric absmax fake-quantization of weights.

``s = max|w_c| / Q``, ``ŵ = clamp(round(w/s), -Q, Q)·s`` with ``Q = 2^(b-1) − 1``; 1 bit is
binary (``sign(w)·mean|w_c|``). Weights of Conv/Linear only; activations stay float. The
state (bits per channel) lives in the model as a parametrization buffer, so ``state_dict``
round-trips it; ``finalize`` bakes the fake-quantized weights in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn

from .._config import StrictConfig
from ..accounting import UNQUANTIZED_BITS, average_bits, weight_params_total
from ..errors import ConfigError
from ..protocols import AttachContext, CompressionStats, Compressor, LayerStats, MethodConfig
from ..targets import Target
from .ops import QuantCodes, levels, symmetric_fake_quant, symmetric_quant_codes

__all__ = ["SymmetricWeightQuant", "UniformCompressor", "UniformConfig", "weight_params_total"]


class SymmetricWeightQuant(nn.Module):
    """Weight transform: symmetric absmax fake-quant with per-channel (buffer) bit-widths."""

    bits: torch.Tensor

    def __init__(self, bits: torch.Tensor, per_channel: bool = True) -> None:
        super().__init__()
        self.per_channel = per_channel
        self.register_buffer("bits", bits.detach().clone().float())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return symmetric_fake_quant(w, self.bits, per_channel=self.per_channel)

    @torch.no_grad()
    def quant_codes(self, w: torch.Tensor) -> QuantCodes:
        """The exact codes of ``forward(w)``: ``q·s`` with ``|q| ≤ Q`` (binary: ±1, 0)."""
        q, s = symmetric_quant_codes(w, self.bits, per_channel=self.per_channel)
        c = int(w.shape[0])
        bits = self.bits.expand(c) if self.bits.numel() == 1 else self.bits
        return QuantCodes(
            codes=q.round().to(torch.int64),
            scale=s.reshape(-1).expand(c) if s.numel() == 1 else s.reshape(-1),
            shift=torch.zeros(c),
            max_code=levels(bits).clamp_min(1.0),
            bits=bits,
        )


class AvgBitsBudget(StrictConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)
    avg_bits: float = Field(gt=0, description="Target parameter-weighted average bits.")


class UniformConfig(MethodConfig):
    """``method: uniform``. Either ``bits`` or ``budget.avg_bits`` (the widest k that fits)."""

    bits: int = Field(8, ge=1, le=16, description="Weight bit-width k (1–16).")
    granularity: Literal["channel", "tensor"] = "channel"
    budget: AvgBitsBudget | None = None


class UniformCompressor(Compressor):
    """Uniform k-bit per-channel symmetric weight quantization (baseline)."""

    name = "uniform"
    description = "Uniform k-bit per-channel symmetric absmax weight fake-quant (baseline)."
    Config = UniformConfig
    config: UniformConfig

    def _choose_bits(self, model: nn.Module, targets: Sequence[Target]) -> int:
        if self.config.budget is None:
            return self.config.bits
        n_all = weight_params_total(model)
        n_q = sum(self.original(t.module, t.param).numel() for t in targets)
        n_rest = n_all - n_q

        def avg(k: int) -> float:
            return float(average_bits(k * n_q, n_rest, n_all))

        fitting = [k for k in range(1, 17) if avg(k) <= self.config.budget.avg_bits + 1e-9]
        if not fitting:
            raise ConfigError(
                f"avg_bits {self.config.budget.avg_bits:g} cannot be met: with these targets "
                f"uniform bits give averages from {avg(1):.3f} (1 bit) to {avg(16):.3f} (16 bits), "
                f"since {n_rest} weights outside the targets count as {UNQUANTIZED_BITS:g} bits. Raise the budget "
                f"or target more layers.",
                key="budget.avg_bits",
            )
        return max(fitting)

    def attach(
        self,
        model: nn.Module,
        targets: Sequence[Target],
        context: AttachContext | None = None,
    ) -> None:
        k = self._choose_bits(model, targets)
        self.chosen_bits: int | None = k
        per_channel = self.config.granularity == "channel"
        for t in targets:
            name, mod = t
            if self.find_transform(mod, SymmetricWeightQuant, t.param) is not None:
                raise ConfigError(
                    f"module {name!r} is already quantized by uniform; attach it once per module "
                    f"(check overlapping targets in the recipe)",
                    key="targets",
                )
            c = int(self.original(mod, t.param).shape[0]) if per_channel else 1
            q = SymmetricWeightQuant(torch.full((c,), float(k)), per_channel)
            self.install_transform(name, mod, q, t.param)
            self.attached.append((name, mod))

    def stats(self) -> CompressionStats:
        layers = {}
        for t in self.transforms:
            q = t.transform
            assert isinstance(q, SymmetricWeightQuant)  # installed by attach above
            c = int(self.original(t.module, t.param).shape[0])
            bits = q.bits if q.bits.numel() == c else q.bits.expand(c)
            layers[t.name] = LayerStats(bits=bits.detach().clone())
        return CompressionStats(
            method=self.name, layers=layers, extra={"bits": getattr(self, "chosen_bits", None)}
        )

    def finalize(self, model: nn.Module) -> nn.Module:
        self.bake_transforms()
        return model
