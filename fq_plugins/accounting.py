"""Bits, sparsity, packed size, MACs and BOPs: one place, every method uses it.

Conventions (stated in every report):

* **Weights counted**: the ``weight`` of every Conv/Linear module. A weight no method
  quantizes counts as 32 bits.
* **Average bits**: parameter-weighted ``Σ_c n_c·b_c / Σ_c n_c`` and channel-weighted
  ``mean_c b_c`` over all output channels ``c`` of those weights.
* **Sparsity**: fraction of exact zeros in those (effective, i.e. fake-quantized) weights.
* **Packed size** (bytes): quantized weights as dense ``b``-bit codes (``⌈Σ n_c·b_c / 8⌉`` per
  layer) plus one float32 scale per output channel; every other parameter and buffer at
  its dtype's size. **FP32 size**: every parameter and buffer at 4 bytes (int buffers at
  their size).
* **MACs**: multiply-accumulates of Conv/Linear layers for one example, from a forward pass.
* **BOPs** = ``Σ_l MACs_l · b_w,l · b_a,l · density_l`` with ``b_a = 32`` (weights-only
  convention: activations stay float) unless activation bits are given; relative BOPs
  divide by the FP32 model's ``Σ MACs · 32 · 32``.
* **Effective GOPs** (FairQuant's): ``Σ 2 · MACs · b_w / 32 / 1e9``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import torch
from torch.nn.utils import parametrize

from .targets import WEIGHT_LAYER_TYPES

__all__ = [
    "BITS_CONVENTION",
    "UNQUANTIZED_BITS",
    "LayerCost",
    "ModelCost",
    "average_bits",
    "count_macs",
    "layer_packed_bytes",
    "model_cost",
    "weight_params_total",
]

UNQUANTIZED_BITS = 32.0
"""Bits a Conv/Linear weight no method quantizes counts as."""

BITS_CONVENTION = (
    "avg bits over Conv/Linear weights (unquantized = 32); packed size = b-bit codes + "
    "fp32 per-channel scales + other tensors at their dtype; BOPs = MACs·b_w·b_a·density"
)

_WEIGHT_TYPES = WEIGHT_LAYER_TYPES


def weight_params_total(model: torch.nn.Module) -> int:
    """Number of Conv/Linear weight parameters (the average-bits denominator)."""
    return sum(
        cast(torch.Tensor, m.weight).numel() for m in model.modules() if isinstance(m, _WEIGHT_TYPES)
    )


def average_bits(quantized_bit_params: Any, untargeted_params: int, total_params: int) -> Any:
    """Parameter-weighted average bits: ``(Σ n·b over quantized + 32·untargeted) / total``.

    ``quantized_bit_params`` may be a float or a tensor (then the result is one, and keeps
    its gradient).
    """
    return (quantized_bit_params + UNQUANTIZED_BITS * untargeted_params) / max(total_params, 1)


def layer_packed_bytes(params: int, total_bits: float, channels: int, quantized: bool) -> int:
    """Stored bytes of one layer's weight: ``⌈Σ n_c·b_c / 8⌉`` codes + a float32 scale per
    channel when quantized, else ``4·n``."""
    if not quantized:
        return 4 * params
    return math.ceil(total_bits / 8) + 4 * channels


@dataclasses.dataclass
class LayerCost:
    name: str
    params: int
    channels: int
    bits_param: float
    bits_channel_min: float
    bits_channel_max: float
    sparsity: float
    macs: int
    quantized: bool
    packed_bytes: int = 0
    """This layer's weight as stored (see :func:`layer_packed_bytes`)."""


@dataclasses.dataclass
class ModelCost:
    """Model-level cost figures; see the module docstring for the conventions."""

    avg_bits_param: float
    avg_bits_channel: float
    sparsity: float
    packed_bytes: int
    fp32_bytes: int
    weight_params: int
    macs: int
    bops: float
    bops_fp32: float
    effective_gops: float
    act_bits: float
    layers: list[LayerCost]
    convention: str = BITS_CONVENTION

    @property
    def bops_rel(self) -> float:
        return self.bops / self.bops_fp32 if self.bops_fp32 else math.nan

    @property
    def compression_ratio(self) -> float:
        return self.fp32_bytes / self.packed_bytes if self.packed_bytes else math.nan

    def to_dict(self, *, layers: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bops_rel"] = self.bops_rel
        d["compression_ratio"] = self.compression_ratio
        if not layers:
            d.pop("layers")
        return d


def count_macs(model: torch.nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per Conv/Linear module for ONE example of ``example_input``.

    Runs one forward pass in eval mode under ``no_grad`` (the model's mode is restored).
    """
    macs: dict[str, int] = {}
    handles = []
    batch = int(example_input.shape[0]) if example_input.dim() > 0 else 1

    def hook(name: str):
        def fn(mod: torch.nn.Module, _inp: Any, out: torch.Tensor) -> None:
            per_out = out.numel() // max(batch, 1)
            if isinstance(mod, torch.nn.Linear):
                k = mod.in_features
            else:
                w = cast(torch.Tensor, mod.weight)
                k = int(w.shape[1]) * math.prod(w.shape[2:])  # in_ch/groups × kernel
            macs[name] = macs.get(name, 0) + per_out * k

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, _WEIGHT_TYPES):
            handles.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return macs


def _direct_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The module's own parameters and buffers, not its children's nor parametrization internals."""
    out: list[tuple[str, torch.Tensor]] = [
        (n, p) for n, p in module._parameters.items() if p is not None
    ]
    out += [(n, b) for n, b in module._buffers.items() if b is not None]
    return out


def model_cost(
    model: torch.nn.Module,
    bits: dict[str, torch.Tensor] | None = None,
    *,
    example_input: torch.Tensor | None = None,
    act_bits: float = 32.0,
    macs: dict[str, int] | None = None,
) -> ModelCost:
    """Cost figures of ``model`` given per-channel weight ``bits`` by module name.

    :param bits: ``{module_name: tensor of bits per output channel (or a scalar)}`` for the
        quantized Conv/Linear layers; other layers count as 32-bit floats.
    :param example_input: a batch used for one forward pass to count MACs (skipped, MACs
        = 0, if neither it nor ``macs`` is given).
    :param act_bits: activation bit-width for BOPs (32: weights-only convention).
    """
    bits = bits or {}
    if macs is None:
        macs = count_macs(model, example_input) if example_input is not None else {}
    layers: list[LayerCost] = []
    packed_layer = 0
    packed_extra_bytes = 0
    fp32_bytes = 0
    weighted_bits = 0.0
    n_weights = 0
    channel_bits_sum = 0.0
    n_channels = 0
    zeros = 0
    bops = 0.0
    bops_fp32 = 0.0
    eff_ops = 0.0
    internal: set[int] = set()
    from .protocols import MethodState

    for _name, mod in model.named_modules():
        # transform internals and methods' schedules are not part of the stored model
        if isinstance(mod, parametrize.ParametrizationList | MethodState):
            internal.update(id(m) for m in mod.modules())
    for name, mod in model.named_modules():
        if id(mod) in internal:
            continue
        is_weight_layer = isinstance(mod, _WEIGHT_TYPES)
        for tname, t in _direct_tensors(mod):
            if is_weight_layer and tname == "weight":
                continue
            packed_extra_bytes += t.numel() * t.element_size()
            fp32_bytes += t.numel() * (4 if t.is_floating_point() else t.element_size())
        if parametrize.is_parametrized(mod):
            # parametrized tensors other than weight (rare) are stored as originals
            for pname in cast(Any, mod).parametrizations:
                if pname != "weight" or not is_weight_layer:
                    t = getattr(mod, pname)
                    packed_extra_bytes += t.numel() * t.element_size()
                    fp32_bytes += t.numel() * 4
        if not is_weight_layer:
            continue
        with torch.no_grad():
            w = cast(torch.Tensor, mod.weight).detach()
        c = int(w.shape[0])
        n = int(w.numel())
        per_ch = n // c
        b = bits.get(name)
        quantized = b is not None
        if b is None:
            bc = torch.full((c,), UNQUANTIZED_BITS, dtype=torch.float64)
        else:
            bc = torch.as_tensor(b, dtype=torch.float64).flatten()
            if bc.numel() == 1:
                bc = bc.expand(c).clone()
            if bc.numel() != c:
                raise ValueError(
                    f"bits for {name!r} have {bc.numel()} entries; the weight has {c} output channels"
                )
        layer_bits = float(bc.sum()) * per_ch
        nz = int((w == 0).sum())
        zeros += nz
        weighted_bits += layer_bits
        n_weights += n
        channel_bits_sum += float(bc.sum())
        n_channels += c
        fp32_bytes += n * 4
        layer_bytes = layer_packed_bytes(n, layer_bits, c, quantized)
        packed_layer += layer_bytes
        m = int(macs.get(name, 0))
        density = 1.0 - nz / n
        bw = layer_bits / n
        bops += m * bw * act_bits * density
        bops_fp32 += m * UNQUANTIZED_BITS * UNQUANTIZED_BITS
        eff_ops += 2.0 * m * bw / UNQUANTIZED_BITS
        layers.append(
            LayerCost(
                name=name,
                params=n,
                channels=c,
                bits_param=bw,
                bits_channel_min=float(bc.min()),
                bits_channel_max=float(bc.max()),
                sparsity=nz / n,
                macs=m,
                quantized=quantized,
                packed_bytes=layer_bytes,
            )
        )
    return ModelCost(
        avg_bits_param=weighted_bits / n_weights if n_weights else math.nan,
        avg_bits_channel=channel_bits_sum / n_channels if n_channels else math.nan,
        sparsity=zeros / n_weights if n_weights else 0.0,
        packed_bytes=packed_layer + packed_extra_bytes,
        fp32_bytes=fp32_bytes,
        weight_params=n_weights,
        macs=sum(int(v) for v in macs.values()),
        bops=bops,
        bops_fp32=bops_fp32,
        effective_gops=eff_ops / 1e9,
        act_bits=act_bits,
        layers=layers,
    )
