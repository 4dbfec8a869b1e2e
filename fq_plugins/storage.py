"""Compressed checkpoints whose file size reflects the bits.

``save_compressed(model, bits, path)`` stores every quantized Conv/Linear weight as packed
integer codes (sub-byte, LSB-first bit packing) plus float32 per-channel ``scale`` and
``shift``, and every other tensor of the state dict as is. ``load_compressed(path, model)``
rebuilds the weights into a model of the same architecture — bit-identical to the saved
(finalized) model.

Codes are recovered from the finalized weights, which are all of the form
``ŵ = scale·q + shift·sign(q)`` with integer ``|q| ≤ Q = 2^(b−1) − 1``: ``shift = 0`` for
the symmetric quantizers (Uniform, FairQuant), a per-tensor ``shift`` for CoDeQ. Each layer
is checked to reconstruct exactly; a layer that does not (or has no bits) is stored as
float32 and listed in the result, never silently approximated. One-bit channels store
``sign(w)`` in one bit (two bits if the channel also holds zeros).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .targets import MODULE_TYPES

__all__ = ["SaveResult", "load_compressed", "pack_bits", "save_compressed", "unpack_bits"]

FORMAT = "fq-packed/1"
_WEIGHT_TYPES = MODULE_TYPES["conv"] + MODULE_TYPES["linear"]


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``< 2**bits`` into ``⌈len·bits/8⌉`` bytes, LSB first."""
    v = np.asarray(values, dtype=np.uint32).ravel()
    if bits < 1 or bits > 32:
        raise ValueError(f"bits must lie in 1–32; got {bits}")
    if v.size and int(v.max()) >= (1 << bits):
        raise ValueError(f"value {int(v.max())} does not fit in {bits} bits")
    bit_matrix = ((v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` integers of ``bits`` bits (uint32)."""
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * bits]
    m = flat.reshape(count, bits).astype(np.uint32)
    return (m << np.arange(bits, dtype=np.uint32)).sum(axis=1).astype(np.uint32)


def _recover(w: torch.Tensor, b: float) -> tuple[np.ndarray, float, float] | None:
    """Integer codes, scale and shift with ``scale·q + shift·sign(q) == w`` exactly, or None."""
    w = w.detach().to(torch.float32).flatten()
    q_max = 2 ** (int(b) - 1) - 1
    mags = torch.unique(w.abs())
    nz = mags[mags > 0]
    if nz.numel() == 0:
        return np.zeros(w.numel(), dtype=np.int64), 0.0, 0.0
    if q_max == 0:  # binary: ±s
        if nz.numel() != 1:
            return None
        return torch.sign(w).to(torch.int64).numpy(), float(nz[0]), 0.0
    top, low = nz.max(), nz.min()
    candidates = [(top / q_max, torch.zeros((), dtype=torch.float32), 3)]
    if nz.numel() >= 2 and q_max > 1:  # CoDeQ: ŵ = s·q + shift·sign(q)
        # low levels may be empty (a wide dead-zone): count the steps between the smallest
        # and the largest magnitude with the smallest gap, then refine s over all of them
        gap = (nz[1:] - nz[:-1]).min()
        steps = max(1, int(torch.round((top - low) / gap)))
        s_c = (top - low) / steps
        candidates.append((s_c, top - s_c * q_max, 64))
    for scale0, shift0, window in candidates:
        found = _search(nz.numpy(), q_max, scale0, shift0, window)
        if found is None:
            continue
        scale, shift = torch.tensor(found[0]), torch.tensor(found[1])
        q = torch.sign(w) * torch.round((w.abs() - shift) / scale).clamp_min(0)
        if int(q.abs().max()) <= q_max and torch.equal(scale * q + shift * torch.sign(q), w):
            return q.to(torch.int64).numpy(), float(scale), float(shift)
    return None


def _search(
    nz: np.ndarray, q_max: int, scale0: torch.Tensor, shift0: torch.Tensor, window: int
) -> tuple[np.float32, np.float32] | None:
    """Float32 ``(scale, shift)`` within ``window`` ulps of the estimates that reproduce
    every distinct non-zero magnitude exactly as ``fl(fl(scale·q) + shift)``."""
    scales = _ulp_grid(float(scale0), window)
    shifts = _ulp_grid(float(shift0), window) if float(shift0) != 0.0 else np.zeros(1, np.float32)
    for shift in shifts:
        q = np.round((nz[None, :] - shift) / scales[:, None])
        ok = (q >= 1).all(axis=1) & (q <= q_max).all(axis=1)
        back = (scales[:, None] * q.astype(np.float32)).astype(np.float32) + shift
        ok &= (back == nz[None, :]).all(axis=1)
        hit = np.flatnonzero(ok)
        if hit.size:
            return scales[hit[0]], np.float32(shift)
    return None


def _ulp_grid(x: float, n: int) -> np.ndarray:
    """``x`` (as float32) and its ``n`` float32 neighbours on each side, nearest first."""
    c = np.float32(x)
    up = [c]
    down = []
    u = d = c
    for _ in range(n):
        u = np.nextafter(u, np.float32(np.inf))
        d = np.nextafter(d, np.float32(-np.inf))
        up.append(u)
        down.append(d)
    order = [up[0]]
    for a, b in zip(up[1:], down, strict=True):
        order += [a, b]
    return np.array(order, dtype=np.float32)


@dataclasses.dataclass
class SaveResult:
    path: str
    file_bytes: int
    packed_layers: list[str]
    float_layers: list[str]


def save_compressed(
    model: nn.Module, bits: Mapping[str, torch.Tensor], path: str | os.PathLike[str]
) -> SaveResult:
    """Write ``model`` (finalized) with its quantized weights as packed codes.

    :param bits: per-channel bits by module name (``session.bit_widths()``).
    """
    modules = dict(model.named_modules())
    layers: dict[str, Any] = {}
    float_layers: list[str] = []
    skip: set[str] = set()
    for name, b in bits.items():
        mod = modules.get(name)
        if mod is None or not isinstance(mod, _WEIGHT_TYPES):
            raise ConfigError(
                f"bits given for {name!r}, which is not a Conv/Linear module of the model"
            )
        w = cast(torch.Tensor, mod.weight).detach()
        c = w.shape[0]
        bc = (
            torch.as_tensor(b).flatten().expand(c)
            if torch.as_tensor(b).numel() == 1
            else torch.as_tensor(b)
        )
        per_channel = w.reshape(c, -1)
        whole = _recover(w, float(bc[0])) if bool((bc == bc[0]).all()) else None
        if whole is not None:  # one scale for the tensor (CoDeQ, per-tensor uniform)
            q_all, sc, sh = whole
            q_rows = q_all.reshape(c, -1)
            recs: list[tuple[np.ndarray, float, float] | None] = [
                (q_rows[i], sc, sh) for i in range(c)
            ]
        else:
            recs = [_recover(per_channel[i], float(bc[i])) for i in range(c)]
        if any(r is None for r in recs):
            float_layers.append(name)
            continue
        streams, scales, shifts, widths = [], [], [], []
        for i, r in enumerate(recs):
            assert r is not None
            q, scale, shift = r
            if int(bc[i]) == 1 and not (q == 0).any():
                width, codes = 1, ((q + 1) // 2).astype(np.uint32)  # ±1 → 0/1: one bit
            else:
                q_max = max(1, 2 ** (int(bc[i]) - 1) - 1)
                width = max(1, math.ceil(math.log2(2 * q_max + 1)))
                codes = (q + q_max).astype(np.uint32)
            streams.append(pack_bits(codes, width))
            scales.append(scale)
            shifts.append(shift)
            widths.append(width)
        layers[name] = {
            "shape": list(w.shape),
            "widths": torch.tensor(widths, dtype=torch.uint8),
            "offsets": torch.tensor(np.cumsum([0] + [len(s) for s in streams]), dtype=torch.int64),
            "codes": torch.frombuffer(bytearray(b"".join(streams)), dtype=torch.uint8),
            "scale": torch.tensor(scales, dtype=torch.float32),
            "shift": torch.tensor(shifts, dtype=torch.float32),
        }
        skip.add(f"{name}.weight" if name else "weight")
    rest = {k: v for k, v in model.state_dict().items() if k not in skip}
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "layers": layers, "rest": rest}, buf)
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return SaveResult(os.fspath(path), len(data), sorted(layers), float_layers)


def _resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give ``model``'s layers the shapes stored in ``state`` (a model whose channels were
    removed, e.g. by BMRS): conv, linear and norm layers get new, empty tensors of the
    stored shapes and matching attributes; anything else that differs is an error."""
    for mname, mod in model.named_modules():
        prefix = f"{mname}." if mname else ""
        own = {
            k: v
            for k, v in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]
            if v is not None
        }
        changed = {
            k: state[prefix + k].shape
            for k, v in own.items()
            if prefix + k in state and state[prefix + k].shape != v.shape
        }
        if not changed:
            continue
        if isinstance(mod, nn.modules.conv._ConvNd) and "weight" in changed:
            shape = changed["weight"]
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            if mod.groups > 1 and not depthwise:
                raise ConfigError(f"cannot resize grouped conv {mname!r} to {list(shape)}")
            mod.out_channels = shape[0]
            mod.in_channels = shape[0] if depthwise else shape[1]
            if depthwise:
                mod.groups = shape[0]
        elif isinstance(mod, nn.Linear) and "weight" in changed:
            mod.out_features, mod.in_features = changed["weight"]
        elif isinstance(mod, nn.modules.batchnorm._NormBase):
            mod.num_features = next(iter(changed.values()))[0]
        else:
            raise ConfigError(
                f"checkpoint shapes differ from module {mname!r} ({type(mod).__name__}): "
                f"{ {k: list(v) for k, v in changed.items()} }; build the same architecture"
            )
        for k, shape in changed.items():
            old = own[k]
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(mod, k, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                setattr(mod, k, new)


def load_compressed(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load a :func:`save_compressed` file into ``model``; returns it.

    ``model`` is the architecture the checkpoint was made from; when channels were removed
    (BMRS), its conv/linear/norm layers are resized to the stored shapes first, so
    ``load_compressed(path, build_model(...))`` restores the pruned model.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ConfigError(
            f"{os.fspath(path)!r} is not an fq-plugins compressed checkpoint ({FORMAT})"
        )
    state = dict(blob["rest"])
    for name, rec in blob["layers"].items():
        shape = rec["shape"]
        c = shape[0]
        per = math.prod(shape[1:])
        codes = rec["codes"].numpy().tobytes()
        offsets = rec["offsets"].tolist()
        w = torch.empty(c, per, dtype=torch.float32)
        for i in range(c):
            width = int(rec["widths"][i])
            raw = unpack_bits(codes[offsets[i] : offsets[i + 1]], width, per).astype(np.int64)
            # width 1: binary ±1; else codes are offset by Q = 2^(width−1) − 1 (width = bits)
            q_np = 2 * raw - 1 if width == 1 else raw - ((1 << (width - 1)) - 1)
            q = torch.from_numpy(q_np).to(torch.float32)
            w[i] = rec["scale"][i] * q + rec["shift"][i] * torch.sign(q)
        state[f"{name}.weight" if name else "weight"] = w.reshape(shape)
    _resize_to(model, state)
    model.load_state_dict(state)
    return model
