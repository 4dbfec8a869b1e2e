"""Compressed checkpoints whose file size reflects the bits.

``save_compressed(model, codes, path)`` stores every quantized Conv/Linear weight as packed
integer codes (sub-byte, LSB-first bit packing) plus float32 per-channel ``scale`` and
``shift``, and every other tensor of the state dict as is. The codes are the quantizers'
own (:class:`~fq_plugins.compressors.ops.QuantCodes`, taken by ``session.finalize`` before
baking: ``session.storage_codes()``), never guessed back from floats. Each layer is checked
to reconstruct the finalized weight bit for bit; a layer that does not is stored as float32
and listed in the result, never silently approximated. Input transforms (activation
quantizers) are recorded and re-installed by :func:`load_compressed`, so the loaded model
computes what the finalized one does. ``load_compressed(path, model)`` rebuilds the weights
into a model of the same architecture.
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

from .compressors.ops import ActivationQuant, QuantCodes
from .engine.installers import INPUT_TRANSFORM_ATTR, input_transform, install_input_transform
from .errors import ConfigError
from .targets import WEIGHT_LAYER_TYPES

__all__ = ["SaveResult", "load_compressed", "pack_bits", "save_compressed", "unpack_bits"]

FORMAT = "fq-packed/2"


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


def _code_width(max_code: int, row: np.ndarray) -> tuple[int, np.ndarray]:
    """``(width, unsigned codes)`` of one channel.

    Width 1 holds binary ±1 (no zeros); width ``w ≥ 2`` holds ``k + 2^(w−1) − 1`` for
    ``|k| ≤ max_code`` with ``w = ⌈log₂(2·max_code + 1)⌉``, so the offset follows from the
    width and nothing else per channel is stored.
    """
    if max_code == 1 and not (row == 0).any():
        return 1, ((row + 1) // 2).astype(np.uint32)
    width = max(2, math.ceil(math.log2(2 * max_code + 1)))
    return width, (row + ((1 << (width - 1)) - 1)).astype(np.uint32)


@dataclasses.dataclass
class SaveResult:
    path: str
    file_bytes: int
    packed_layers: list[str]
    float_layers: list[str]


def save_compressed(
    model: nn.Module, codes: Mapping[str, QuantCodes], path: str | os.PathLike[str]
) -> SaveResult:
    """Write ``model`` (finalized) with its quantized weights as packed codes.

    :param codes: the quantizers' exact codes by module name (``session.storage_codes()``).
    """
    modules = dict(model.named_modules())
    layers: dict[str, Any] = {}
    float_layers: list[str] = []
    skip: set[str] = set()
    for name, qc in codes.items():
        if not isinstance(qc, QuantCodes):
            raise TypeError(
                f"save_compressed takes the quantizers' codes (session.storage_codes()); got "
                f"{type(qc).__name__} for {name!r}"
            )
        mod = modules.get(name)
        if mod is None or not isinstance(mod, WEIGHT_LAYER_TYPES):
            raise ConfigError(
                f"codes given for {name!r}, which is not a Conv/Linear module of the model"
            )
        w = cast(torch.Tensor, mod.weight).detach()
        if tuple(qc.codes.shape) != tuple(w.shape) or not torch.equal(
            qc.dequantize(), w.to("cpu", torch.float32)
        ):
            float_layers.append(name)  # the codes do not give this exact weight: keep floats
            continue
        c = int(w.shape[0])
        rows = qc.codes.reshape(c, -1).numpy()
        streams, widths = [], []
        for i in range(c):
            width, unsigned = _code_width(int(qc.max_code[i]), rows[i])
            streams.append(pack_bits(unsigned, width))
            widths.append(width)
        layers[name] = {
            "shape": list(w.shape),
            "widths": torch.tensor(widths, dtype=torch.uint8),
            "offset": int(qc.offset),
            "offsets": torch.tensor(np.cumsum([0] + [len(s) for s in streams]), dtype=torch.int64),
            "codes": torch.frombuffer(bytearray(b"".join(streams)), dtype=torch.uint8),
            "scale": qc.scale.clone(),
            "shift": qc.shift.clone(),
        }
        skip.add(f"{name}.weight" if name else "weight")
    inputs: dict[str, dict[str, Any]] = {}
    for mname, mod in modules.items():
        t = input_transform(mod)
        if t is None:
            continue
        if not isinstance(t, ActivationQuant):
            raise ConfigError(
                f"module {mname!r} has an input transform of type {type(t).__name__}, which "
                "the compressed format cannot store; save it with torch.save instead"
            )
        inputs[mname] = {"kind": "activation_quant", "bits": int(t.bits)}
    rest = {k: v for k, v in model.state_dict().items() if k not in skip}
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "layers": layers, "inputs": inputs, "rest": rest}, buf)
    data = buf.getvalue()
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
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
        data = rec["codes"].numpy().tobytes()
        offsets = rec["offsets"].tolist()
        k = torch.empty(c, per, dtype=torch.int64)
        for i in range(c):
            width = int(rec["widths"][i])
            raw = unpack_bits(data[offsets[i] : offsets[i + 1]], width, per).astype(np.int64)
            k[i] = torch.from_numpy(2 * raw - 1 if width == 1 else raw - ((1 << (width - 1)) - 1))
        qc = QuantCodes(
            codes=k.reshape(shape),
            scale=rec["scale"],
            shift=rec["shift"],
            max_code=torch.zeros(c),
            bits=torch.zeros(c),
            offset=int(rec["offset"]),
        )
        state[f"{name}.weight" if name else "weight"] = qc.dequantize()
    modules = dict(model.named_modules())
    for mname, rec in blob.get("inputs", {}).items():
        mod = modules.get(mname)
        if mod is None:
            raise ConfigError(f"the checkpoint quantizes the input of {mname!r}, which this model lacks")
        if INPUT_TRANSFORM_ATTR not in mod._modules:
            install_input_transform(mod, ActivationQuant(int(rec["bits"])))
    _resize_to(model, state)
    model.load_state_dict(state)
    return model
