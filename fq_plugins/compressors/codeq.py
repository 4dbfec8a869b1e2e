"""CoDeQ: a learnable dead-zone quantizer per weight tensor (joint pruning + quantization).

Per targeted weight tensor, learnable scalars ``ℓ_d`` and ``ℓ_b`` (both initialised at 3.0)::

    a     = 0.99-quantile of |w|                    (no gradient)
    B     = round(2 + 6·|tanh ℓ_b|)                  (or a fixed bit-width)
    d     = 2a·(1 − |tanh ℓ_d|)                      (dead-zone width)
    Q     = 2^(B−1) − 1,  s = (a − d/2)/(Q − ½),  shift = d/2 − s/2
    w_c   = sign(w)·ReLU(|w| − shift)
    q     = clamp(round(w_c / s), −Q, Q)
    ŵ     = s·q + shift·sign(q)

Weights with ``|w| < d/2`` become exactly 0 and the top level equals ``a``. Round, clamp
and ReLU are identity straight-through estimators, so the task loss reaches ``ℓ_d`` and
``ℓ_b``. Sparsity pressure (decay on ``ℓ_d``: shrinking it widens the dead-zone) and
precision pressure (decay on ``ℓ_b``: pulls ``B`` toward 2) are offered as explicit
penalties ``λ_dz·Σℓ_d²``, ``λ_bit·Σℓ_b²`` or as AdamW param-group weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from pydantic import Field
from torch import nn

from ..engine.installers import install_input_transform
from ..errors import ConfigError
from ..protocols import AttachContext, CompressionStats, Compressor, LayerStats, MethodConfig
from ..targets import Target
from .ops import ActivationQuant, QuantCodes, clamp_ste, levels, relu_ste, round_ste

__all__ = ["CoDeQCompressor", "CoDeQConfig", "CoDeQQuant", "codeq_fake_quant"]


def _quantile_abs(w: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-quantile of ``|w|`` (lower order statistic; works past torch.quantile's size cap)."""
    flat = w.detach().abs().flatten()
    k = max(1, min(flat.numel(), math.ceil(q * flat.numel())))
    return flat.kthvalue(k).values


def codeq_bits(bit_logit: torch.Tensor | None, fixed_bits: float | None) -> torch.Tensor:
    """``B`` with a straight-through gradient to ``ℓ_b`` (or the fixed bit-width)."""
    if bit_logit is None:
        if fixed_bits is None:
            raise ValueError("codeq_bits needs a bit logit or a fixed bit-width")
        return torch.tensor(float(fixed_bits))
    return round_ste(2.0 + 6.0 * torch.tanh(bit_logit).abs())


def _codeq_terms(
    w: torch.Tensor,
    dz_logit: torch.Tensor,
    bit_logit: torch.Tensor | None,
    fixed_bits: float | None,
    quantile: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, s, shift, Q)``: codes (STE), step, shift and top code of one weight tensor."""
    a = _quantile_abs(w, quantile).clamp_min(1e-12).to(w.dtype)
    b = codeq_bits(bit_logit, fixed_bits).to(w.dtype)
    d = 2.0 * a * (1.0 - torch.tanh(dz_logit).abs())
    q_max = levels(b)
    s = (a - d / 2).clamp_min(1e-12) / (q_max - 0.5)
    shift = d / 2 - s / 2
    w_c = torch.sign(w) * relu_ste(w.abs() - shift)
    q = clamp_ste(round_ste(w_c / s), -q_max.detach(), q_max.detach())
    return q, s, shift, q_max


def codeq_fake_quant(
    w: torch.Tensor,
    dz_logit: torch.Tensor,
    bit_logit: torch.Tensor | None,
    *,
    fixed_bits: float | None = None,
    quantile: float = 0.99,
) -> torch.Tensor:
    """The CoDeQ quantizer of one weight tensor (see the module docstring)."""
    q, s, shift, _ = _codeq_terms(w, dz_logit, bit_logit, fixed_bits, quantile)
    return s * q + shift * torch.sign(q.detach())


class CoDeQQuant(nn.Module):
    """Parametrization with the tensor's ``dz_logit`` and (learnable mode) ``bit_logit``."""

    bit_logit: nn.Parameter | None
    fixed_bits: torch.Tensor

    def __init__(
        self, init_logit: float = 3.0, *, fixed_bits: int | None = None, quantile: float = 0.99
    ):
        super().__init__()
        self.quantile = quantile
        self.dz_logit = nn.Parameter(torch.tensor(float(init_logit)))
        if fixed_bits is None:
            self.bit_logit = nn.Parameter(torch.tensor(float(init_logit)))
        else:
            self.register_parameter("bit_logit", None)
        self.register_buffer("fixed_bits", torch.tensor(float(fixed_bits or 0)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        fixed = None if self.bit_logit is not None else float(self.fixed_bits)
        return codeq_fake_quant(
            w, self.dz_logit, self.bit_logit, fixed_bits=fixed, quantile=self.quantile
        )

    def bits(self) -> float:
        with torch.no_grad():
            fixed = None if self.bit_logit is not None else float(self.fixed_bits)
            return float(codeq_bits(self.bit_logit, fixed))

    @torch.no_grad()
    def quant_codes(self, w: torch.Tensor) -> QuantCodes:
        """The exact codes of ``forward(w)``: ``ŵ = sign(q)·(|q|·s + shift)``."""
        fixed = None if self.bit_logit is not None else float(self.fixed_bits)
        q, s, shift, q_max = _codeq_terms(w, self.dz_logit, self.bit_logit, fixed, self.quantile)
        return QuantCodes(
            codes=q.round().to(torch.int64),
            scale=s.reshape(1),
            shift=shift.reshape(1),
            max_code=q_max.reshape(1),
            bits=torch.tensor([self.bits()]),
        )


class CoDeQConfig(MethodConfig):
    """``method: codeq``. ``bits: null`` learns the bit-width per tensor (mixed precision)."""

    bits: int | None = Field(
        None, ge=2, le=16, description="Fixed bit-width; null = learnable (2–8)."
    )
    init_logit: float = Field(3.0, description="Initial ℓ_d and ℓ_b.")
    quantile: float = Field(
        0.99, gt=0.0, le=1.0, description="Quantile of |w| used as the range a."
    )
    sparsity_pressure: float = Field(
        0.0, ge=0.0, description="λ_dz: decay on ℓ_d (wider dead-zone)."
    )
    precision_pressure: float = Field(0.0, ge=0.0, description="λ_bit: decay on ℓ_b (fewer bits).")
    pressure_as: Literal["penalty", "decay"] = Field(
        "penalty", description="Explicit penalty λ·Σℓ² or AdamW param-group weight decay λ."
    )
    logit_lr: float | None = Field(
        None, gt=0.0, description="lr of the logits (default: the host's)."
    )
    act_bits: int | None = Field(
        None,
        ge=2,
        le=16,
        description="Fake-quantize each target's input (per tensor) at these bits.",
    )


class CoDeQCompressor(Compressor):
    """CoDeQ: learnable dead-zone (pruning) + learnable or fixed bits, per weight tensor."""

    name = "codeq"
    description = "CoDeQ: learnable dead-zone quantizer per tensor (joint pruning + quantization)."
    Config = CoDeQConfig
    config: CoDeQConfig

    def attach(
        self,
        model: nn.Module,
        targets: Sequence[Target],
        context: AttachContext | None = None,
    ) -> None:
        cfg = self.config
        for t in targets:
            name, mod = t
            if isinstance(mod, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
                raise ConfigError(
                    f"module {name!r} is a normalisation layer; CoDeQ excludes them", key="targets"
                )
        for t in targets:
            name, mod = t
            q = CoDeQQuant(cfg.init_logit, fixed_bits=cfg.bits, quantile=cfg.quantile)
            self.install_transform(name, mod, q, t.param)
            if cfg.act_bits is not None:
                install_input_transform(mod, ActivationQuant(cfg.act_bits))
            self.attached.append((name, mod))

    def _quants(self) -> list[tuple[str, nn.Module, CoDeQQuant]]:
        return [
            (t.name, t.module, cast(CoDeQQuant, t.transform))
            for t in self.transforms
            if isinstance(t.transform, CoDeQQuant)
        ]

    def act_bits(self) -> float | None:
        return None if self.config.act_bits is None else float(self.config.act_bits)

    def penalty(self) -> torch.Tensor:
        cfg = self.config
        if cfg.pressure_as != "penalty":
            return torch.zeros(())
        total = torch.zeros(())
        for _, _, q in self._quants():
            if cfg.sparsity_pressure:
                total = total + cfg.sparsity_pressure * q.dz_logit**2
            if cfg.precision_pressure and q.bit_logit is not None:
                total = total + cfg.precision_pressure * q.bit_logit**2
        return total

    def param_groups(self) -> list[dict[str, Any]]:
        cfg = self.config
        quants = self._quants()
        dz = [q.dz_logit for _, _, q in quants]
        bl = [q.bit_logit for _, _, q in quants if q.bit_logit is not None]
        decay = cfg.pressure_as == "decay"
        extra = {"lr": cfg.logit_lr} if cfg.logit_lr is not None else {}
        groups = [{"params": dz, "weight_decay": cfg.sparsity_pressure if decay else 0.0, **extra}]
        if bl:
            groups.append(
                {"params": bl, "weight_decay": cfg.precision_pressure if decay else 0.0, **extra}
            )
        return groups

    def stats(self) -> CompressionStats:
        layers = {}
        for t in self.transforms:
            q = cast(CoDeQQuant, t.transform)
            c = int(self.original(t.module, t.param).shape[0])
            layers[t.name] = LayerStats(bits=torch.full((c,), q.bits()))
        extra: dict[str, Any] = {"act_bits": self.config.act_bits}
        return CompressionStats(method=self.name, layers=layers, extra=extra)

    def finalize(self, model: nn.Module) -> nn.Module:
        # activation quantizers stay: they are part of the compressed model's function
        self.bake_transforms()
        return model
