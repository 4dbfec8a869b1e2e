"""BMRS: Bayesian Model Reduction for Structured pruning (BMRS_N, BMRS_U) + SNR / L2 baselines.

Each gated unit (a conv channel after its BatchNorm, an MLP hidden neuron) is multiplied by
a gate ``θ`` with a truncated log-normal posterior on ``log θ`` (:mod:`.evidence`). Training
adds the mean KL to the log-uniform prior; at each epoch end (for ``mask_epochs`` epochs)
the masks are recomputed from the criterion — units may come back — and then frozen.
``finalize`` folds ``E[θ]·mask`` into the host layer and removes masked channels physically
with torch-pruning (:mod:`.prune`), so the model gets smaller and faster, not just sparser.

BMRS changes the model's shape, so it is a *structural* method: ``fq-plugins run`` trains
and finalizes it before attaching the methods listed after it (prune, then quantize).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import Field, model_validator
from torch import nn

from ...errors import ConfigError
from ...protocols import AttachContext, CompressionStats, Compressor, LayerStats, MethodConfig
from ...targets import Target
from ..ops import module_weight
from .evidence import (
    REFERENCE_LOG_SIGMA,
    Clamp,
    delta_f_normal,
    delta_f_uniform,
    gate_mean,
    gate_sample,
    gate_snr,
    kl_to_log_uniform,
    sample_from_stats,
    sample_stats,
)
from .trace import GateSite, find_gate_sites

__all__ = ["BMRSCompressor", "BMRSConfig", "BMRSGate"]

_GATE_ATTR = "bmrs_gate"


class BMRSGate(nn.Module):
    """Per-unit gates of one layer: ``mu``, ``log_sigma`` (parameters) and ``mask`` (buffer).

    Attached by :class:`BMRSCompressor`, every gate of a model shares one :class:`_GateBank`
    that computes all layers' gate values in one batched pass per forward; a gate on its
    own (no bank) computes its values itself — the same numbers, one layer at a time.
    """

    mask: torch.Tensor

    def __init__(
        self,
        units: int,
        dim: int,
        a: float,
        b: float,
        init_mu: float,
        init_log_sigma: float,
        clamp: Clamp = None,
        noise: str = "example",
    ) -> None:
        super().__init__()
        self.dim, self.a, self.b, self.clamp, self.noise = dim, a, b, clamp, noise
        self.mu = nn.Parameter(torch.full((units,), float(init_mu)))
        self.log_sigma = nn.Parameter(torch.full((units,), float(init_log_sigma)))
        self.register_buffer("mask", torch.ones(units))
        self.bank: _GateBank | None = None

    def theta(self, batch: int | None) -> torch.Tensor:
        """Sampled gates, shape ``(batch, units)`` (training), or ``E[θ]`` (``batch=None``)."""
        if batch is None:
            return gate_mean(self.mu, self.log_sigma, self.a, self.b, self.clamp) * self.mask
        u = torch.rand(batch, self.mu.numel(), device=self.mu.device, dtype=self.mu.dtype)
        log_t = gate_sample(self.mu, self.log_sigma, self.a, self.b, u, self.clamp)
        return log_t.exp() * self.mask

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        dim = self.dim % y.dim()
        shape = [1] * y.dim()
        shape[dim] = -1
        if self.training and self.noise == "element":
            t = self._element_theta(y, dim)
        elif self.training:
            per_example = dim != 0
            batch = y.shape[0] if per_example else 1
            t = self.bank.take(self, batch) if self.bank is not None else self.theta(batch)
            if not per_example:
                t = t[0]
            else:
                shape[0] = y.shape[0]
            t = t.reshape(shape)
        else:
            t = self.bank.take(self, None) if self.bank is not None else self.theta(None)
            t = t.reshape(shape)
        return y * t.to(y.dtype)

    def _element_theta(self, y: torch.Tensor, dim: int) -> torch.Tensor:
        """The reference code's noise: a fresh sample per element of ``y`` (per example,
        unit and position), from this gate's per-unit statistics."""
        st = self.bank.take_stats(self) if self.bank is not None else None
        if st is None:
            st = sample_stats(self.mu, self.log_sigma, self.a, self.b, self.clamp)
        shape = [1] * y.dim()
        shape[dim] = -1
        st = cast(Any, tuple(v.reshape(shape) for v in st))
        u = torch.rand(y.shape, device=y.device, dtype=torch.float64)
        log_t = sample_from_stats(st, u, self.a, self.b)
        return log_t.exp() * self.mask.double().reshape(shape)

    def kl(self) -> torch.Tensor:
        return kl_to_log_uniform(self.mu, self.log_sigma, self.a, self.b, self.clamp)


class _GateBank:
    """All gates of one model, computed together: one ``cat`` of every layer's ``μ``,
    ``log σ`` and mask, one sampling pass (training) or one ``E[θ]`` pass (evaluation) over
    all units, split per layer. Each gate takes its slice once per forward (the trace
    guarantees one call per gate); the first gate that finds none refills every slice, and
    the root module's forward pre-hook drops what an interrupted forward left behind."""

    def __init__(self, gates: list[BMRSGate]) -> None:
        self.gates = gates
        self.sizes = [g.mu.numel() for g in gates]
        self.cache: dict[int, tuple[Any, torch.Tensor]] = {}
        self.stats_cache: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # deepcopy/pickle: no cached graph tensors
        state = dict(self.__dict__)
        state["cache"], state["stats_cache"] = {}, {}
        return state

    def clear(self) -> None:
        self.cache.clear()
        self.stats_cache.clear()

    def _params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gs = self.gates
        if len(gs) == 1:
            return gs[0].mu, gs[0].log_sigma, gs[0].mask
        return (
            torch.cat([g.mu for g in gs]),
            torch.cat([g.log_sigma for g in gs]),
            torch.cat([g.mask for g in gs]),
        )

    def take(self, gate: BMRSGate, batch: int | None) -> torch.Tensor:
        key = (batch, torch.is_grad_enabled())
        hit = self.cache.pop(id(gate), None)
        if hit is None or hit[0] != key:
            self._fill(key)
            hit = self.cache.pop(id(gate))
        return hit[1]

    def _fill(self, key: tuple[int | None, bool]) -> None:
        g0 = self.gates[0]
        mu, ls, mask = self._params()
        batch = key[0]
        if batch is None:
            theta = gate_mean(mu, ls, g0.a, g0.b, g0.clamp) * mask
            parts = theta.split(self.sizes, dim=0)
        else:
            u = torch.rand(batch, mu.numel(), device=mu.device, dtype=torch.float64)
            log_t = gate_sample(mu, ls, g0.a, g0.b, u, g0.clamp)
            theta = log_t.exp() * mask
            parts = theta.split(self.sizes, dim=1)
        self.cache = {id(g): (key, p) for g, p in zip(self.gates, parts, strict=True)}

    def take_stats(self, gate: BMRSGate) -> Any:
        hit = self.stats_cache.pop(id(gate), None)
        if hit is None:
            g0 = self.gates[0]
            mu, ls, _ = self._params()
            st = sample_stats(mu, ls, g0.a, g0.b, g0.clamp)
            per = [v.split(self.sizes) for v in st]
            self.stats_cache = {id(g): tuple(p[i] for p in per) for i, g in enumerate(self.gates)}
            hit = self.stats_cache.pop(id(gate))
        return hit

    def kl_units(self) -> torch.Tensor:
        """Per-unit KL of every gate, concatenated in gate order."""
        g0 = self.gates[0]
        mu, ls, _ = self._params()
        return kl_to_log_uniform(mu, ls, g0.a, g0.b, g0.clamp)


def _apply_gate(module: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    gate: BMRSGate = getattr(module, _GATE_ATTR)
    return gate(out)


class BMRSConfig(MethodConfig):
    """``method: bmrs``. ``criterion: bmrs`` with ``prior: normal`` is BMRS_N, with
    ``prior: uniform`` BMRS_U (precision ``p``); ``snr`` and ``l2`` are the baselines."""

    criterion: Literal["bmrs", "snr", "l2"] = Field(
        "bmrs", description="Pruning rule: bmrs (ΔF ≥ 0), snr (E/sd < t), l2 (‖w_in‖ < t)."
    )
    prior: Literal["normal", "uniform"] = Field(
        "normal", description="Reduced prior of BMRS: normal (BMRS_N) or uniform (BMRS_U)."
    )
    precision: float = Field(
        8.0, description="BMRS_U precision p: reduced prior on [ln 2^-23, ln 2^-p], 0 < p < 23."
    )
    a: float = Field(-20.0, description="Lower bound of log θ (prior and posterior).")
    b: float = Field(0.0, description="Upper bound of log θ.")
    reduced_sigma: float = Field(1e-6, gt=0, description="BMRS_N: σ̃_p of the reduced prior.")
    init_mu: float = Field(0.0, description="Initial μ of every gate.")
    init_log_sigma: float = Field(-5.0, description="Initial log σ of every gate.")
    kl_weight: float = Field(1.0, ge=0, description="Weight of the KL term (see kl_reduction).")
    kl_reduction: Literal["layer_mean", "elbo"] = Field(
        "layer_mean",
        description="layer_mean: mean KL per unit within each layer, then mean over layers "
        "(the reference code's `--kl_averaging mean`); elbo: the sum over all units / n_train "
        "(the per-example ELBO next to a mean cross-entropy).",
    )
    n_train: int | None = Field(
        None,
        gt=0,
        description="Training-set size for kl_reduction: elbo (default: the host's, e.g. "
        "`fq-plugins run`'s training split).",
    )
    delta_f: Literal["reference", "exact"] = Field(
        "reference",
        description="BMRS_N's ΔF: reference (the published code's deltaF, without the "
        "Gaussian normaliser's −½·log 2π) or exact (the log evidence ratio).",
    )
    log_sigma_clamp: Literal["reference", "effective"] = Field(
        "reference",
        description="reference: clamp log σ to [−20, 5] (torch.clamp, as the published code) "
        "in sampling, KL, E[θ], SNR and ΔF; effective: identity-gradient clamp to "
        "[log 1e−8, log 10(b−a)].",
    )
    noise: Literal["example", "element"] = Field(
        "example",
        description="Training noise: one sample per example and unit (METHODS.md), or per "
        "element of the gated activation (the published code; slower for convs).",
    )
    gate_lr: float | None = Field(None, gt=0, description="lr of μ, log σ (default: the host's).")
    mask_epochs: int | None = Field(
        None,
        ge=0,
        description="Recompute masks at the end of this many epochs, then freeze them "
        "(null: every epoch). Fine-tuning epochs = finetune.epochs − mask_epochs.",
    )
    snr_threshold: float = Field(1.0, gt=0, description="snr: prune where E[θ]/sd[θ] < this.")
    l2_threshold: float = Field(
        0.5, gt=0, description="l2: prune where the incoming weights' L2 norm < this."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> BMRSConfig:
        if not self.a < self.b:
            raise ValueError(
                f"prior bounds need a < b, got a={self.a}, b={self.b}; the defaults are a=-20, b=0"
            )
        if not 0.0 < self.precision < 23.0:
            raise ValueError(
                f"precision p={self.precision} is outside (0, 23): the reduced prior is "
                "[ln 2^-23, ln 2^-p]; use e.g. 8 (default) or 4 (prunes more)"
            )
        lo, hi = -23 * math.log(2.0), -self.precision * math.log(2.0)
        if self.prior == "uniform" and not (self.a <= lo and hi <= self.b):
            raise ValueError(
                f"BMRS_U's reduced prior [{lo:.3f}, {hi:.3f}] must lie inside [a, b] = "
                f"[{self.a}, {self.b}]; widen a/b or change precision"
            )
        return self

    @property
    def clamp(self) -> Clamp:
        return REFERENCE_LOG_SIGMA if self.log_sigma_clamp == "reference" else None


class BMRSCompressor(Compressor):
    """Bayesian structured pruning with gates; finalize removes channels physically."""

    name = "bmrs"
    description = "BMRS: Bayesian structured pruning (BMRS_N / BMRS_U, SNR and L2 baselines)."
    Config = BMRSConfig
    config: BMRSConfig
    structural: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.sites: list[GateSite] = []
        self.skipped: dict[str, str] = {}
        self.example_input: torch.Tensor | None = None
        self.final_report: dict[str, Any] | None = None
        self.bank: _GateBank | None = None
        self.n_train: int | None = None  # kl_reduction: elbo (config, else the host's)
        self._root_hook: Any = None

    @property
    def epochs_seen(self) -> int:
        """Epoch ends seen so far (in the model's state: a resumed run continues the schedule)."""
        return int(self.state.get("epochs_seen")) if self._state is not None else 0

    @property
    def history(self) -> list[dict[str, float]]:
        """Masked fraction after each mask update (in the model's state)."""
        if self._state is None:
            return []
        return cast(list[dict[str, float]], self.state.record.setdefault("mask_history", []))

    # --- attach ---------------------------------------------------------------------

    def attach(
        self,
        model: nn.Module,
        targets: Sequence[Target],
        context: AttachContext | None = None,
    ) -> None:
        from .prune import require_torch_pruning

        require_torch_pruning()  # finalize needs it: say so before any training is spent
        cfg = self.config
        self.n_train = cfg.n_train or (context.n_train if context is not None else None)
        if cfg.kl_reduction == "elbo" and self.n_train is None:
            raise ConfigError(
                "kl_reduction: elbo divides the summed KL by the training-set size, and this "
                "host does not know it; set n_train (e.g. n_train: 8000) or use "
                "kl_reduction: layer_mean",
                key="n_train",
            )
        x = _example_input(context)
        self.example_input = x
        sites, skipped = find_gate_sites(model, targets, x)
        self.skipped = skipped
        if not sites:
            why = "; ".join(f"{n}: {r}" for n, r in list(skipped.items())[:6]) or "no targets"
            raise ConfigError(
                f"BMRS found no layer it can gate in this model ({why}). It gates conv channels "
                "(after their BatchNorm) and hidden units of MLPs; check `targets`.",
                key="targets",
            )
        for s in sites:  # check every site before touching the model
            if isinstance(s.host, nn.modules.batchnorm._BatchNorm) and not s.host.affine:
                raise ConfigError(
                    f"{s.host_name!r} is a BatchNorm without affine parameters; BMRS folds its "
                    "gates into the norm's weight and bias. Use affine=True or ignore "
                    f"{s.name!r} in targets.",
                    key="targets",
                )
        gates: list[BMRSGate] = []
        for s in sites:
            p = next(s.producer.parameters())
            gate = BMRSGate(
                s.units,
                s.dim,
                cfg.a,
                cfg.b,
                cfg.init_mu,
                cfg.init_log_sigma,
                clamp=cfg.clamp,
                noise=cfg.noise,
            )
            s.host.add_module(_GATE_ATTR, gate.to(device=p.device))
            s.host.register_forward_hook(_apply_gate)
            self.attached.append((s.name, s.producer))
            gates.append(gate)
        self.sites = sites
        self.bank = _GateBank(gates)
        for g in gates:
            g.bank = self.bank
        bank = self.bank
        self._root_hook = model.register_forward_pre_hook(lambda _m, _a: bank.clear())
        state = self.add_state(sites[0].host)
        state.put("epochs_seen", torch.zeros((), dtype=torch.int64, device=p.device))
        state.record = {"mask_history": []}

    # --- training -------------------------------------------------------------------

    def _gates(self) -> list[BMRSGate]:
        return [getattr(s.host, _GATE_ATTR) for s in self.sites if hasattr(s.host, _GATE_ATTR)]

    def penalty(self) -> torch.Tensor:
        """``kl_weight`` × the KL, reduced by ``kl_reduction``; one batched pass over all gates."""
        gates = self._gates()
        cfg = self.config
        if not gates or cfg.kl_weight == 0:
            return torch.zeros(())
        bank = self.bank if self.bank is not None and len(gates) == len(self.bank.gates) else None
        kl_units = bank.kl_units() if bank is not None else torch.cat([g.kl() for g in gates])
        if cfg.kl_reduction == "elbo":
            assert self.n_train is not None
            kl = kl_units.sum() / self.n_train
        else:  # mean per layer, then over layers: unit i weighs 1 / (layers · its layer's units)
            w = self._layer_weights(gates, kl_units)
            kl = (kl_units * w).sum()
        return (cfg.kl_weight * kl).float()

    def _layer_weights(self, gates: list[BMRSGate], like: torch.Tensor) -> torch.Tensor:
        key = (len(gates), like.device, like.dtype)
        cached = getattr(self, "_w_cache", None)
        if cached is None or cached[0] != key:
            w = torch.cat(
                [torch.full((g.mu.numel(),), 1.0 / (len(gates) * g.mu.numel())) for g in gates]
            ).to(device=like.device, dtype=like.dtype)
            cached = (key, w)
            self._w_cache = cached
        return cached[1]

    def param_groups(self) -> list[dict[str, Any]]:
        params = [p for g in self._gates() for p in (g.mu, g.log_sigma)]
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0}
        if self.config.gate_lr is not None:
            group["lr"] = self.config.gate_lr
        return [group]

    def on_epoch_end(self, epoch: int) -> None:
        self.state.get("epochs_seen").add_(1)
        me = self.config.mask_epochs
        if me is not None and self.epochs_seen > me:
            return
        self.update_masks()

    @torch.no_grad()
    def prune_score(self, site: GateSite) -> tuple[torch.Tensor, float]:
        """Per-unit score and threshold (float64): the criterion prunes where score ≥ it.

        bmrs: ΔF ≥ 0; snr: −SNR ≥ −t (SNR < t … up to ties); l2: −‖w_in‖ ≥ −t likewise.
        """
        cfg = self.config
        g: BMRSGate = getattr(site.host, _GATE_ATTR)
        if cfg.criterion == "bmrs":
            if cfg.prior == "normal":
                df = delta_f_normal(
                    g.mu,
                    g.log_sigma,
                    cfg.a,
                    cfg.b,
                    reduced_sigma=cfg.reduced_sigma,
                    reference=cfg.delta_f == "reference",
                    clamp=cfg.clamp,
                )
            else:
                df = delta_f_uniform(
                    g.mu,
                    g.log_sigma,
                    cfg.a,
                    cfg.b,
                    precision=cfg.precision,
                    reference=cfg.log_sigma_clamp == "reference",
                )
            return df, 0.0
        if cfg.criterion == "snr":
            return -gate_snr(g.mu, g.log_sigma, cfg.a, cfg.b, cfg.clamp), -cfg.snr_threshold
        w = module_weight(site.producer).detach().double()
        return -w.reshape(w.shape[0], -1).norm(dim=1), -cfg.l2_threshold

    def prune_decision(self, site: GateSite) -> torch.Tensor:
        """True where the criterion prunes the unit."""
        score, threshold = self.prune_score(site)
        if self.config.criterion == "bmrs":
            return score >= threshold
        return score > threshold  # the baselines prune strictly below their threshold

    @torch.no_grad()
    def survivor_score(self, site: GateSite) -> torch.Tensor:
        """``E[θ]·‖w‖`` per unit (float64): the norm of the unit's incoming weights as
        ``finalize`` leaves them — the producer's row, through its BatchNorm's
        ``|γ|/√(running_var + ε)`` when the gate sits after one, times the folded ``E[θ]``."""
        cfg = self.config
        g: BMRSGate = getattr(site.host, _GATE_ATTR)
        w = module_weight(site.producer).detach().double()
        norm = w.reshape(w.shape[0], -1).norm(dim=1)
        host = site.host
        if isinstance(host, nn.modules.batchnorm._BatchNorm):
            scale = torch.ones_like(norm)
            if host.weight is not None:
                scale = host.weight.detach().double().abs()
            if host.running_var is not None:
                scale = scale / (host.running_var.detach().double() + host.eps).sqrt()
            norm = norm * scale
        mean = gate_mean(g.mu.detach(), g.log_sigma.detach(), cfg.a, cfg.b, cfg.clamp)
        return mean.to(norm.device) * norm

    @torch.no_grad()
    def update_masks(self) -> dict[str, Any]:
        """Recompute every mask from the criterion; at least one unit per layer stays.

        A layer whose every unit the criterion prunes keeps the unit with the largest
        :meth:`survivor_score`; each such layer gets a ``RuntimeWarning`` and is listed in
        ``stats().extra["all_pruned_layers"]`` and in :meth:`summary`.
        """
        total = pruned = 0
        all_pruned: dict[str, int] = {}
        for s in self.sites:
            g: BMRSGate = getattr(s.host, _GATE_ATTR)
            drop = self.prune_decision(s).to(g.mask.device)
            if bool(drop.all()):
                # a layer of width 0 would cut the network: keep the unit whose folded
                # incoming weights are the largest (principled, criterion-independent)
                keep = int(self.survivor_score(s).argmax())
                drop[keep] = False
                all_pruned[s.name] = keep
            g.mask.copy_((~drop).to(g.mask.dtype))
            total += drop.numel()
            pruned += int(drop.sum())
        rec: dict[str, Any] = {
            "epoch": float(self.epochs_seen),
            "masked_fraction": pruned / max(total, 1),
        }
        if all_pruned:
            rec["all_pruned_layers"] = len(all_pruned)
            names = ", ".join(list(all_pruned)[:6]) + (" …" if len(all_pruned) > 6 else "")
            warnings.warn(
                f"bmrs: {self._label()} pruned every unit of {len(all_pruned)} layer(s) "
                f"({names}) at epoch {self.epochs_seen}; each keeps one unit, the one with "
                "the largest E[θ]·‖w‖. The KL outweighs the data term: lower kl_weight, use "
                "kl_reduction: elbo, or train longer before masking",
                RuntimeWarning,
                stacklevel=2,
            )
        self.history.append(rec)
        self.state.record["all_pruned_layers"] = all_pruned
        return rec

    # --- reporting ------------------------------------------------------------------

    def stats(self) -> CompressionStats:
        layers: dict[str, LayerStats] = {}
        total = masked = 0
        for s in self.sites:
            gate = getattr(s.host, _GATE_ATTR, None)
            if gate is not None:
                n, k = s.units, int((gate.mask == 0).sum())
            else:
                assert self.final_report is not None
                n = s.units
                k = self.final_report["masked"][s.name]
            layers[s.name] = LayerStats(bits=None, extra={"units": n, "masked": k})
            total += n
            masked += k
        extra: dict[str, Any] = {
            "criterion": self._label(),
            "units": total,
            "masked": masked,
            "masked_fraction": masked / max(total, 1),
            "not_gated": dict(self.skipped),
            "mask_history": list(self.history),
            "all_pruned_layers": dict(self._all_pruned()),
            "delta_f": self.config.delta_f,
            "log_sigma_clamp": self.config.log_sigma_clamp,
            "kl_reduction": self.config.kl_reduction,
        }
        if self.final_report is not None:
            extra.update(self.final_report["summary"])
        return CompressionStats(method=self.name, layers=layers, extra=extra)

    def summary(self) -> str | None:
        st = self.stats().extra
        line = (
            f"{st['criterion']}: {st['masked_fraction']:.1%} of {st['units']} gated channels masked"
        )
        if "removed_fraction" in st:
            line += f", {st['removed_fraction']:.1%} removed"
        if st["all_pruned_layers"]:
            names = ", ".join(st["all_pruned_layers"])
            line += (
                f"; WARNING: the criterion pruned every unit of {len(st['all_pruned_layers'])} "
                f"layer(s) ({names}); one unit kept in each (largest E[θ]·‖w‖)"
            )
        return line

    def _all_pruned(self) -> dict[str, int]:
        if self.final_report is not None:
            return cast(dict[str, int], self.final_report.get("all_pruned_layers", {}))
        if self._state is None:
            return {}
        return cast(dict[str, int], self.state.record.get("all_pruned_layers", {}))

    def _label(self) -> str:
        cfg = self.config
        if cfg.criterion == "bmrs":
            return "BMRS_N" if cfg.prior == "normal" else f"BMRS_U(p={cfg.precision:g})"
        return cfg.criterion.upper()

    # --- finalize -------------------------------------------------------------------

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        """Fold ``E[θ]·mask`` into each host, drop the gates, remove zero channels."""
        from .prune import remove_zero_channels

        if not self.history and all(bool((g.mask == 1).all()) for g in self._gates()):
            # no epoch ended and no mask was set (gates trained in a loop of the user's, or
            # 0 epochs): this is the final compress, so the output differs from the unmasked one
            self.update_masks()
            self.history[-1]["at_finalize"] = 1.0
        all_pruned = dict(self._all_pruned())
        history = list(self.history)
        if self._root_hook is not None:
            self._root_hook.remove()
            self._root_hook = None
        masks: dict[nn.Module, torch.Tensor] = {}
        masked: dict[str, int] = {}
        for s in self.sites:
            gate: BMRSGate = getattr(s.host, _GATE_ATTR)
            gate.bank = None
            theta = gate.theta(None).detach()
            _fold(s.host, theta, s.dim)
            masks[s.producer] = gate.mask == 0
            masked[s.name] = int((gate.mask == 0).sum())
            del s.host._modules[_GATE_ATTR]
            self.remove_state()
            hooks = s.host._forward_hooks
            for hid in [k for k, fn in hooks.items() if fn is _apply_gate]:
                del hooks[hid]
        assert self.example_input is not None
        x = self.example_input.to(next(model.parameters()).device)
        was_training = model.training
        model.eval()
        before = model(x)
        masked_model = copy.deepcopy(model)
        result = remove_zero_channels(
            model, [s.producer for s in self.sites], masks, x, hosts=[s.host for s in self.sites]
        )
        after = model(x)
        diff = float((before - after).abs().max()) if before.numel() else 0.0
        removed = sum(result["removed"].values())
        if diff > 1e-5 * max(1.0, float(before.abs().max())):
            # a layer between a gate and the next layer does not keep zeros at zero (e.g. a
            # functional sigmoid): keep the masked model, which is exact, and say so
            warnings.warn(
                f"bmrs: removing the masked channels would change the outputs by {diff:.3g} "
                "(a layer after a gate maps 0 to a non-zero value); the masked channels are "
                "kept as zeros instead of being removed",
                RuntimeWarning,
                stacklevel=3,
            )
            model = masked_model
            result = {"removed": dict.fromkeys(result["removed"], 0), "kept_masked": masked}
            removed, diff = 0, 0.0
        model.train(was_training)
        units = sum(s.units for s in self.sites)
        self.bank = None
        self.final_report = {
            "masked": masked,
            "all_pruned_layers": all_pruned,
            "mask_history": history,
            "summary": {
                "removed": removed,
                "removed_fraction": removed / max(units, 1),
                "removed_per_layer": result["removed"],
                "masked_kept_per_layer": result["kept_masked"],
                "removal_max_abs_diff": diff,
            },
        }
        return model


def _fold(host: nn.Module, theta: torch.Tensor, dim: int) -> None:
    """Multiply ``host``'s output units by ``theta`` through its weight and bias."""
    weight = getattr(host, "weight", None)
    bias = getattr(host, "bias", None)
    if isinstance(host, nn.modules.batchnorm._BatchNorm):
        assert weight is not None
        weight.mul_(theta.to(weight.dtype))
        if bias is not None:
            bias.mul_(theta.to(bias.dtype))
        return
    assert isinstance(weight, torch.Tensor)
    shape = [-1] + [1] * (weight.dim() - 1)  # conv/linear: output units on dim 0
    if isinstance(host, nn.modules.conv._ConvTransposeNd):
        raise ConfigError("bmrs does not gate transposed convolutions")
    weight.mul_(theta.to(weight.dtype).reshape(shape))
    if bias is not None:
        bias.mul_(theta.to(bias.dtype))


def _example_input(context: AttachContext | None) -> torch.Tensor:
    if context is not None and context.example_input is not None:
        return context.example_input[:2].detach()
    if context is not None and context.calib_batches is not None:
        x, _, _ = next(context.iter_calib())
        return x[:2].detach().clone()
    raise ConfigError(
        "bmrs traces one forward pass to find where gates go; pass "
        "AttachContext(example_input=x) (or calib_batches), or run it through `fq-plugins run`"
    )
