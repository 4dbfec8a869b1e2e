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
    delta_f_normal,
    delta_f_uniform,
    gate_mean,
    gate_sample,
    gate_snr,
    kl_to_log_uniform,
)
from .trace import GateSite, find_gate_sites

__all__ = ["BMRSCompressor", "BMRSConfig", "BMRSGate"]

_GATE_ATTR = "bmrs_gate"


class BMRSGate(nn.Module):
    """Per-unit gates of one layer: ``mu``, ``log_sigma`` (parameters) and ``mask`` (buffer)."""

    mask: torch.Tensor

    def __init__(
        self, units: int, dim: int, a: float, b: float, init_mu: float, init_log_sigma: float
    ) -> None:
        super().__init__()
        self.dim, self.a, self.b = dim, a, b
        self.mu = nn.Parameter(torch.full((units,), float(init_mu)))
        self.log_sigma = nn.Parameter(torch.full((units,), float(init_log_sigma)))
        self.register_buffer("mask", torch.ones(units))

    def theta(self, batch: int | None) -> torch.Tensor:
        """Sampled gates, shape ``(batch, units)`` (training), or ``E[θ]`` (``batch=None``)."""
        if batch is None:
            return gate_mean(self.mu, self.log_sigma, self.a, self.b) * self.mask
        u = torch.rand(batch, self.mu.numel(), device=self.mu.device, dtype=self.mu.dtype)
        log_t = gate_sample(self.mu, self.log_sigma, self.a, self.b, u)
        return log_t.exp() * self.mask

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        dim = self.dim % y.dim()
        if self.training:
            t = self.theta(y.shape[0]) if dim != 0 else self.theta(1)[0]
            shape = [1] * y.dim()
            shape[dim] = -1
            if dim != 0:
                shape[0] = y.shape[0]
            t = t.reshape(shape)
        else:
            shape = [1] * y.dim()
            shape[dim] = -1
            t = self.theta(None).reshape(shape)
        return y * t.to(y.dtype)

    def kl(self) -> torch.Tensor:
        return kl_to_log_uniform(self.mu, self.log_sigma, self.a, self.b)


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
    kl_weight: float = Field(
        1.0, ge=0, description="Weight of the KL (mean per layer, then over layers)."
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
        for s in sites:
            p = next(s.producer.parameters())
            gate = BMRSGate(s.units, s.dim, cfg.a, cfg.b, cfg.init_mu, cfg.init_log_sigma)
            s.host.add_module(_GATE_ATTR, gate.to(device=p.device))
            s.host.register_forward_hook(_apply_gate)
            self.attached.append((s.name, s.producer))
        self.sites = sites
        state = self.add_state(sites[0].host)
        state.put("epochs_seen", torch.zeros((), dtype=torch.int64, device=p.device))
        state.record = {"mask_history": []}

    # --- training -------------------------------------------------------------------

    def _gates(self) -> list[BMRSGate]:
        return [getattr(s.host, _GATE_ATTR) for s in self.sites if hasattr(s.host, _GATE_ATTR)]

    def penalty(self) -> torch.Tensor:
        gates = self._gates()
        if not gates or self.config.kl_weight == 0:
            return torch.zeros(())
        kl = torch.stack([g.kl().mean() for g in gates]).mean()
        return self.config.kl_weight * kl

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
                    g.mu, g.log_sigma, cfg.a, cfg.b, reduced_sigma=cfg.reduced_sigma
                )
            else:
                df = delta_f_uniform(g.mu, g.log_sigma, cfg.a, cfg.b, precision=cfg.precision)
            return df, 0.0
        if cfg.criterion == "snr":
            return -gate_snr(g.mu, g.log_sigma, cfg.a, cfg.b), -cfg.snr_threshold
        w = module_weight(site.producer).detach().double()
        return -w.reshape(w.shape[0], -1).norm(dim=1), -cfg.l2_threshold

    def prune_decision(self, site: GateSite) -> torch.Tensor:
        """True where the criterion prunes the unit."""
        score, threshold = self.prune_score(site)
        if self.config.criterion == "bmrs":
            return score >= threshold
        return score > threshold  # the baselines prune strictly below their threshold

    @torch.no_grad()
    def update_masks(self) -> dict[str, float]:
        """Recompute every mask from the criterion; at least one unit per layer stays."""
        total = pruned = 0
        for s in self.sites:
            g: BMRSGate = getattr(s.host, _GATE_ATTR)
            score, _ = self.prune_score(s)
            drop = self.prune_decision(s).to(g.mask.device)
            if bool(drop.all()):
                # a layer of width 0 would cut the network: keep the unit the criterion
                # ranks furthest from pruning
                drop[int(score.argmin())] = False
            g.mask.copy_((~drop).to(g.mask.dtype))
            total += drop.numel()
            pruned += int(drop.sum())
        rec = {"epoch": float(self.epochs_seen), "masked_fraction": pruned / max(total, 1)}
        self.history.append(rec)
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
        }
        if self.final_report is not None:
            extra.update(self.final_report["summary"])
        return CompressionStats(method=self.name, layers=layers, extra=extra)

    def summary(self) -> str | None:
        st = self.stats().extra
        line = f"{st['criterion']}: {st['masked_fraction']:.1%} of {st['units']} gated channels masked"
        if "removed_fraction" in st:
            line += f", {st['removed_fraction']:.1%} removed"
        return line

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
        masks: dict[nn.Module, torch.Tensor] = {}
        masked: dict[str, int] = {}
        for s in self.sites:
            gate: BMRSGate = getattr(s.host, _GATE_ATTR)
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
        self.final_report = {
            "masked": masked,
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
