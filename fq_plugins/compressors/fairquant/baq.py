"""FQ-BAQ: learnable per-channel bit-widths (and optional dead-zone) with per-op STEs.

Quantizer (METHODS.md, FairQuant §6), per output channel ``c`` with ``a_c = max|w_c|``
(detached)::

    b   = round(b_min + (b_max − b_min)·|tanh ℓ_b|)        round: STE
    M   = 2^(b−1) − 1
    d/2 = a·(1 − |tanh ℓ_d|)                                 (0 without a dead-zone)
    Δ   = (a − d/2) / max(M, 1)
    q   = round(clamp((|w| − d/2)/Δ, 0, M))                  round, clamp: STE
    ŵ   = sign(w)·(q·Δ + d/2), and 0 where |w| < d/2

Only the rounding and clamping are bypassed, so the task and fairness losses reach
``ℓ_b`` through ``Δ`` and ``M`` (the reference code detaches them; ours learns). Without a
dead-zone, ``ŵ`` equals the symmetric absmax quantizer with the same bits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import QuantCodes, channel_absmax, clamp_ste, levels, round_ste

__all__ = ["LearnableBitQuant", "baq_fake_quant", "baq_fake_quant_reference", "bits_to_logit"]


def bits_to_logit(bits: torch.Tensor, b_min: float, b_max: float) -> torch.Tensor:
    """``ℓ_b = atanh(clamp((b − b_min)/(b_max − b_min), 1e-3, 0.95))``.

    METHODS.md clamps at −0.95; we clamp at 1e-3 instead because ``|tanh|`` has zero
    gradient at 0, which would freeze every channel initialised at ``b_min``.
    """
    r = (bits.double() - b_min) / (b_max - b_min)
    return torch.atanh(r.clamp(1e-3, 0.95)).float()


def logit_to_bits(logit: torch.Tensor, b_min: float, b_max: float) -> torch.Tensor:
    """Continuous bits ``b_min + (b_max − b_min)·|tanh ℓ_b|`` (differentiable)."""
    return b_min + (b_max - b_min) * torch.tanh(logit).abs()


class _BAQElementwise(torch.autograd.Function):
    """The elementwise part of BAQ, fused: few passes over the weights.

    Forward ``ŵ = sign(w)·(round(clamp((|w| − h)/Δ, 0, M))·Δ + h)·[|w| ≥ h]`` with per-channel
    ``h = d/2``, ``Δ`` and ``M``. Backward, with identity STEs for round and clamp:
    ``∂ŵ/∂w = [|w| ≥ h]``, ``∂ŵ/∂Δ = sign(w)·[|w| ≥ h]·(q − u)`` with
    ``u = (|w| − h)/Δ``, and ``∂ŵ/∂h = 0`` at fixed Δ (the ``+h`` and ``−h/Δ·Δ`` terms cancel).
    ``h``, ``Δ`` and ``M`` come from the logits through ordinary autograd (tiny tensors).
    """

    @staticmethod
    def forward(
        ctx,
        w: torch.Tensor,
        half_d: torch.Tensor,
        delta: torch.Tensor,
        m: torch.Tensor,
        deadzone: bool,
    ) -> torch.Tensor:
        aw = w.abs()
        u = (aw - half_d).div_(delta)
        q = torch.minimum(u.clamp(min=0.0), m).round_()
        out = torch.copysign(q.mul_(delta).add_(half_d), w)
        mask = torch.empty(0)
        if deadzone:
            mask = aw >= half_d
            out = out.mul_(mask)
        ctx.save_for_backward(w, u, m, mask)
        ctx.deadzone = deadzone
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, u, m, mask = ctx.saved_tensors
        g = grad * mask if ctx.deadzone else grad
        grad_delta = None
        if ctx.needs_input_grad[2]:
            resid = torch.minimum(u.clamp(min=0.0), m).round_().sub_(u)  # q − u
            dims = tuple(range(1, w.dim()))
            grad_delta = resid.mul_(torch.sign(w)).mul_(g).sum(dim=dims, keepdim=True)
        return g, None, grad_delta, None, None  # ∂ŵ/∂w: identity STE, 0 in the dead-zone


def _channel_terms(
    w: torch.Tensor,
    bit_logit: torch.Tensor,
    dz_logit: torch.Tensor | None,
    b_min: float,
    b_max: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel ``(d/2, Δ, M)``, broadcastable against ``w``; differentiable in the logits."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    a = channel_absmax(w)  # detached
    b = round_ste(logit_to_bits(bit_logit, b_min, b_max)).reshape(shape)
    m = levels(b)
    if dz_logit is not None:
        half_d = a * (1.0 - torch.tanh(dz_logit).abs().reshape(shape))
    else:
        half_d = torch.zeros_like(a)
    delta = (a - half_d).clamp_min(1e-12) / m.clamp_min(1.0)
    return half_d, delta, m


def baq_fake_quant(
    w: torch.Tensor,
    bit_logit: torch.Tensor,
    dz_logit: torch.Tensor | None,
    b_min: float,
    b_max: float,
) -> torch.Tensor:
    """The BAQ quantizer above; ``bit_logit`` and ``dz_logit`` have one entry per channel."""
    half_d, delta, m = _channel_terms(w, bit_logit, dz_logit, b_min, b_max)
    return _BAQElementwise.apply(w, half_d, delta, m.detach(), dz_logit is not None)


def baq_fake_quant_reference(
    w: torch.Tensor,
    bit_logit: torch.Tensor,
    dz_logit: torch.Tensor | None,
    b_min: float,
    b_max: float,
) -> torch.Tensor:
    """The same quantizer composed from per-op STEs (slow; the tests' oracle)."""
    half_d, delta, m = _channel_terms(w, bit_logit, dz_logit, b_min, b_max)
    mag = w.abs()
    q = round_ste(clamp_ste((mag - half_d) / delta, 0.0, m.detach()))
    out = torch.sign(w) * (q * delta + half_d)
    if dz_logit is not None:
        out = out * (mag >= half_d).to(w.dtype)
    return out


class LearnableBitQuant(nn.Module):
    """Parametrization holding ``bit_logit`` (and ``dz_logit``) per output channel."""

    bit_logit: nn.Parameter
    dz_logit: nn.Parameter | None

    def __init__(
        self,
        init_bits: torch.Tensor,
        *,
        b_min: float = 2.0,
        b_max: float = 8.0,
        deadzone: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= b_min < b_max <= 16:
            raise ValueError(f"need 1 ≤ b_min < b_max ≤ 16; got {b_min}, {b_max}")
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.bit_logit = nn.Parameter(
            bits_to_logit(init_bits.clamp(b_min, b_max), self.b_min, self.b_max)
        )
        if deadzone:
            self.dz_logit = nn.Parameter(torch.full_like(self.bit_logit, -6.0))
        else:
            self.register_parameter("dz_logit", None)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return baq_fake_quant(w, self.bit_logit, self.dz_logit, self.b_min, self.b_max)

    @torch.no_grad()
    def quant_codes(self, w: torch.Tensor) -> QuantCodes:
        """The exact codes of ``forward(w)``.

        Without a dead-zone ``ŵ = Δ·k`` with ``k = sign(w)·q``. With one, the smallest
        non-zero level is ``d/2``: ``k = sign(w)·(q + 1)`` where ``|w| ≥ d/2`` (else 0), and
        ``ŵ = sign(k)·((|k| − 1)·Δ + d/2)`` (offset 1, shift ``d/2``).
        """
        half_d, delta, m = _channel_terms(w, self.bit_logit, self.dz_logit, self.b_min, self.b_max)
        u = (w.abs() - half_d) / delta
        q = torch.minimum(u.clamp(min=0.0), m).round()
        c = int(w.shape[0])
        if self.dz_logit is None:
            codes = (torch.sign(w) * q).to(torch.int64)
            shift, offset, top = torch.zeros(c), 0, m.reshape(-1)
        else:
            alive = w.abs() >= half_d
            codes = (torch.sign(w) * (q + 1) * alive).to(torch.int64)
            shift, offset, top = half_d.reshape(-1), 1, m.reshape(-1) + 1
        return QuantCodes(
            codes=codes,
            scale=delta.reshape(-1),
            shift=shift,
            max_code=top.clamp_min(1.0),
            bits=self.bits(),
            offset=offset,
        )

    def bits(self) -> torch.Tensor:
        """Current integer bits per channel (what the forward pass uses), float tensor."""
        with torch.no_grad():
            return torch.round(logit_to_bits(self.bit_logit, self.b_min, self.b_max))

    def bits_ste(self) -> torch.Tensor:
        """Integer bits with a straight-through gradient to ``bit_logit`` (for penalties)."""
        return round_ste(logit_to_bits(self.bit_logit, self.b_min, self.b_max))

    @torch.no_grad()
    def set_bits(self, bits: torch.Tensor) -> None:
        """Set the logits so that :meth:`bits` returns ``bits`` (integers in [b_min, b_max])."""
        self.bit_logit.copy_(bits_to_logit(bits.to(self.bit_logit), self.b_min, self.b_max))
        got = self.bits()
        # atanh/tanh round trip can land a hair under x.5 boundaries only for b_max with the
        # 0.95 clamp; fix up any channel that did not round to its target.
        bad = got != bits.to(got)
        if bool(bad.any()):
            r = (bits.double()[bad] - self.b_min) / (self.b_max - self.b_min)
            self.bit_logit[bad] = torch.atanh(r.clamp(1e-3, 1 - 1e-6)).float()

    def extra_repr(self) -> str:
        return f"channels={self.bit_logit.numel()}, bits=[{self.b_min:g}, {self.b_max:g}], deadzone={self.dz_logit is not None}"
