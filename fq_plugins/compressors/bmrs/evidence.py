"""BMRS math: truncated log-normal gates, their KL to the log-uniform prior, and ΔF.

A gate ``θ > 0`` has ``x = log θ ~ N(μ, σ²)`` truncated to ``[a, b]`` (the posterior); the
prior on ``x`` is uniform on ``[a, b]`` (log-uniform on ``θ``). Every function here works
elementwise on tensors of ``μ`` and ``log σ`` and in the tensors' dtype: training uses
float32, pruning decisions (:func:`delta_f_normal`, :func:`delta_f_uniform`) use float64.

Stability: every function computes in float64 (gate tensors are small) and returns
float64; ``log(Φ(hi) − Φ(lo))`` comes from ``log Φ`` of whichever tail has no
cancellation (:func:`log_ndtr_diff`). The formulas see an *effective* posterior:
``1e−8 ≤ σ ≤ 10·(b − a)`` (wider is uniform on ``[a, b]`` to float precision) and
``μ ∈ [a − 10σ, b + 10σ]`` (further out, the truncated density is a spike at the bound),
clamped with an identity gradient so the KL still pulls an outlying μ back in.

``clamp=REFERENCE_LOG_SIGMA`` follows the public reference code instead
(saintslab/bmrs-structured-pruning, ``modules/layers.py``): ``log σ`` is clamped to
``[−20, 5]`` with ``torch.clamp`` (zero gradient outside) before sampling, the KL, ``E[θ]``,
the SNR and BMRS_N's ΔF; BMRS_U's ΔF clamps ``log σ ≥ −20`` only and ``μ`` to ``[a, b]``
(its ``LogUniformCDFBMRPruningLayer.bmr``). The μ guard ``[a − 10σ, b + 10σ]`` stays in
both modes: beyond it ``Φ(β) − Φ(α)`` is 0 in float64 and every formula would be NaN.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "LOG_SQRT_2PI",
    "REFERENCE_LOG_SIGMA",
    "delta_f_normal",
    "delta_f_uniform",
    "effective",
    "gate_mean",
    "gate_sample",
    "gate_snr",
    "kl_to_log_uniform",
    "log_ndtr_diff",
    "sample_from_stats",
    "sample_stats",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
LOG_SQRT_2PI = _LOG_SQRT_2PI
"""``½·log 2π`` ≈ 0.9189: the reference code's ΔF_N minus the exact log evidence ratio."""
_LOG_SIGMA_MIN = math.log(1e-8)
REFERENCE_LOG_SIGMA = (-20.0, 5.0)
"""The reference code's ``logsigmin``/``logsigmax`` ("hand-coded values from the paper")."""

Clamp = tuple[float, float] | None


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0`` without cancellation (Mächler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_ndtr_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``log(Φ(hi) − Φ(lo))`` for ``hi > lo``, stable in both tails and differentiable.

    For ``lo > 0`` both values sit in the upper tail, so the symmetric form
    ``Φ(−lo) − Φ(−hi)`` is used. Each branch gets inputs that are valid for it (the other
    branch's are replaced by harmless constants), so no NaN leaks into the gradient.
    """
    upper = lo > 0
    one = torch.ones_like(lo)
    lo_u, hi_u = torch.where(upper, lo, one), torch.where(upper, hi, 2 * one)
    lo_d, hi_d = torch.where(upper, -2 * one, lo), torch.where(upper, -one, hi)
    up = torch.special.log_ndtr(-lo_u) + _log1mexp(
        torch.special.log_ndtr(-hi_u) - torch.special.log_ndtr(-lo_u)
    )
    down = torch.special.log_ndtr(hi_d) + _log1mexp(
        torch.special.log_ndtr(lo_d) - torch.special.log_ndtr(hi_d)
    )
    return torch.where(upper, up, down)


class _ClampSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(x, lo), hi)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def effective(
    mu: torch.Tensor, log_sigma: torch.Tensor, a: float, b: float, clamp: Clamp = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(μ, log σ)`` within the numerically meaningful range (module docstring).

    ``clamp=(lo, hi)``: ``log σ`` is clamped to it with ``torch.clamp`` (the reference
    code's rule, zero gradient outside) instead of the identity-gradient effective range.
    """
    ls = log_sigma.double()
    if clamp is not None:
        ls = torch.clamp(ls, min=clamp[0], max=clamp[1])
    else:
        ls = _ClampSTE.apply(
            ls, *(torch.full_like(ls, v) for v in (_LOG_SIGMA_MIN, math.log(10 * (b - a))))
        )
    sigma = ls.detach().exp()
    mu_eff = _ClampSTE.apply(mu.double(), a - 10.0 * sigma, b + 10.0 * sigma)
    return mu_eff, ls


def _alpha_beta(
    mu: torch.Tensor, log_sigma: torch.Tensor, a: float, b: float, clamp: Clamp = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    mu, log_sigma = effective(mu, log_sigma, a, b, clamp)
    sigma = log_sigma.exp()
    # beyond ±1e6 standard deviations a tail probability is 0 at float64 (log Φ's gradient is
    # NaN past ~1e8): clamping there changes no value
    alpha = ((a - mu) / sigma).clamp(-1e6, 1e6)
    beta = ((b - mu) / sigma).clamp(-1e6, 1e6)
    return alpha, beta, sigma, mu


def gate_sample(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    a: float,
    b: float,
    u: torch.Tensor,
    clamp: Clamp = None,
) -> torch.Tensor:
    """Reparameterised ``log θ`` for uniform noise ``u`` (any shape broadcasting with μ).

    ``γ = clamp(Φ(α) + u·Z, 1e−5, 1 − 1e−5)``, ``log θ = clamp(μ + σ·Φ⁻¹(γ), a, b)``.
    """
    return sample_from_stats(sample_stats(mu, log_sigma, a, b, clamp), u, a, b)


SampleStats = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sample_stats(
    mu: torch.Tensor, log_sigma: torch.Tensor, a: float, b: float, clamp: Clamp = None
) -> SampleStats:
    """The per-unit part of :func:`gate_sample`: ``(μ, σ, Φ(α), Z)`` in float64."""
    alpha, beta, sigma, mu = _alpha_beta(mu, log_sigma, a, b, clamp)
    cdf_a = torch.special.ndtr(alpha)
    return mu, sigma, cdf_a, torch.special.ndtr(beta) - cdf_a


def sample_from_stats(st: SampleStats, u: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """The per-sample part of :func:`gate_sample` (``u`` broadcasts with the stats)."""
    mu, sigma, cdf_a, z = st
    gamma = (cdf_a + u.double() * z).clamp(1e-5, 1 - 1e-5)
    return (mu + sigma * torch.special.ndtri(gamma)).clamp(a, b)


def gate_mean(
    mu: torch.Tensor, log_sigma: torch.Tensor, a: float, b: float, clamp: Clamp = None
) -> torch.Tensor:
    """``E[θ]`` of the truncated log-normal, in closed form and in log space.

    ``E[e^x] = exp(μ + σ²/2) · (Φ(β − σ) − Φ(α − σ)) / (Φ(β) − Φ(α))``.
    """
    alpha, beta, sigma, mu = _alpha_beta(mu, log_sigma, a, b, clamp)
    log_z = log_ndtr_diff(alpha, beta)
    return torch.exp(mu + 0.5 * sigma**2 + log_ndtr_diff(alpha - sigma, beta - sigma) - log_z)


def gate_snr(
    mu: torch.Tensor, log_sigma: torch.Tensor, a: float, b: float, clamp: Clamp = None
) -> torch.Tensor:
    """``E[θ] / sd[θ]`` (the SNR baseline's criterion), from the first two moments in log space."""
    alpha, beta, sigma, mu = _alpha_beta(mu, log_sigma, a, b, clamp)
    log_z = log_ndtr_diff(alpha, beta)
    log_m1 = mu + 0.5 * sigma**2 + log_ndtr_diff(alpha - sigma, beta - sigma) - log_z
    log_m2 = 2 * mu + 2 * sigma**2 + log_ndtr_diff(alpha - 2 * sigma, beta - 2 * sigma) - log_z
    # var / mean² = E[θ²]/E[θ]² − 1, computed without subtracting two large numbers
    rel_var = torch.expm1((log_m2 - 2 * log_m1).clamp_min(0.0))
    return torch.rsqrt(rel_var)


def kl_to_log_uniform(
    mu: torch.Tensor, log_sigma: torch.Tensor, a: float, b: float, clamp: Clamp = None
) -> torch.Tensor:
    """KL(truncated N(μ, σ²) on [a, b] ‖ uniform on [a, b]) per unit.

    ``KL = −log σ − log Z − ½log(2πe) + log(b − a) − (αφ(α) − βφ(β)) / (2Z)``.
    """
    alpha, beta, sigma, _ = _alpha_beta(mu, log_sigma, a, b, clamp)
    log_z = log_ndtr_diff(alpha, beta)

    def phi_over_z(t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * t**2 - _LOG_SQRT_2PI - log_z)

    boundary = (alpha * phi_over_z(alpha) - beta * phi_over_z(beta)) / 2
    return -sigma.log() - log_z - _LOG_SQRT_2PI - 0.5 + math.log(b - a) - boundary


def _log_z(m: torch.Tensor | float, s: torch.Tensor | float, a: float, b: float) -> torch.Tensor:
    m_t = torch.as_tensor(m, dtype=torch.float64)
    s_t = torch.as_tensor(s, dtype=torch.float64)
    return log_ndtr_diff((a - m_t) / s_t, (b - m_t) / s_t)


def delta_f_normal(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    a: float,
    b: float,
    *,
    reduced_mu: float | None = None,
    reduced_sigma: float = 1e-6,
    reference: bool = False,
    clamp: Clamp = None,
) -> torch.Tensor:
    """ΔF of BMRS_N in float64: reduced prior N(μ̃_p, σ̃_p²) on log θ truncated to [a, b].

    Equal to ``log[Z_q̃(b−a)/(Z_q Z_p̃)] + ½log[σ̃_q²/(σ²σ̃_p²)] − ½[μ²/σ² + μ̃_p²/σ̃_p² −
    μ̃_q²/σ̃_q²]``; the last two terms are rewritten with the Gaussian product identities
    ``σ̃_q²/(σ²σ̃_p²) = 1/(σ² + σ̃_p²)`` and ``μ²/σ² + μ̃_p²/σ̃_p² − μ̃_q²/σ̃_q² =
    (μ − μ̃_p)²/(σ² + σ̃_p²)``, which avoid subtracting two numbers of order 10¹⁴ at the
    default σ̃_p = 1e−6. ``reduced_mu`` defaults to ``a``. Prune where ΔF ≥ 0.

    ``reference=False`` is the exact log evidence ratio ``log ∫ q p̃/p``; ``reference=True``
    the public reference code's ``deltaF`` (``modules/layers.py``), which omits the
    Gaussian product's ``−½·log 2π`` and so is larger by ``½·log 2π`` ≈ 0.919 everywhere.
    """
    mu, ls = effective(mu.detach(), log_sigma.detach(), a, b, clamp)
    sigma = ls.exp()
    m = float(a if reduced_mu is None else reduced_mu)
    s2 = float(reduced_sigma) ** 2
    var_q = 1.0 / (1.0 / sigma**2 + 1.0 / s2)
    mu_q = var_q * (mu / sigma**2 + m / s2)
    total_var = sigma**2 + s2
    return (
        _log_z(mu_q, var_q.sqrt(), a, b)
        + math.log(b - a)
        - _log_z(mu, sigma, a, b)
        - _log_z(m, float(reduced_sigma), a, b)
        - 0.5 * torch.log(total_var)
        - 0.5 * (mu - m) ** 2 / total_var
        - (0.0 if reference else _LOG_SQRT_2PI)
    )


def delta_f_uniform(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    a: float,
    b: float,
    *,
    precision: float = 8.0,
    low_precision: float = 23.0,
    reference: bool = False,
) -> torch.Tensor:
    """ΔF of BMRS_U in float64: reduced prior uniform on ``[ln 2^−23, ln 2^−p]``.

    ``ΔF = log q([a′, b′]) − log[(b′ − a′)/(b − a)]``, ``q([a′,b′]) = (Φ((b′−μ)/σ) −
    Φ((a′−μ)/σ)) / Z_q``. Smaller ``p`` gives a wider reduced interval, so more units prune.

    ``reference=True`` applies the reference code's clamps first (its
    ``LogUniformCDFBMRPruningLayer.bmr``): ``μ`` to ``[a, b]`` and ``log σ ≥ −20``.
    """
    if reference:
        mu = mu.detach().double().clamp(a, b)
        log_sigma = log_sigma.detach().double().clamp_min(REFERENCE_LOG_SIGMA[0])
        mu, ls = effective(mu, log_sigma, a, b, (REFERENCE_LOG_SIGMA[0], math.inf))
    else:
        mu, ls = effective(mu.detach(), log_sigma.detach(), a, b)
    sigma = ls.exp()
    lo, hi = -low_precision * math.log(2.0), -precision * math.log(2.0)
    return (
        log_ndtr_diff((lo - mu) / sigma, (hi - mu) / sigma)
        - _log_z(mu, sigma, a, b)
        - math.log((hi - lo) / (b - a))
    )
