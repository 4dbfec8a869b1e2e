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
import hashlib
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
from .errors import ConfigError, FQError
from .targets import WEIGHT_LAYER_TYPES

__all__ = [
    "CheckpointError",
    "SaveResult",
    "load_compressed",
    "pack_bits",
    "save_compressed",
    "unpack_bits",
]

FORMAT = "fq-packed/2"
MAGIC = b"FQPACK2\n"
"""File = MAGIC + sha256(payload) + payload (a ``torch.save`` blob, loaded weights-only)."""


class CheckpointError(FQError):
    """A compressed checkpoint that is corrupted, truncated, or does not fit the model."""


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
    payload = buf.getvalue()
    data = MAGIC + hashlib.sha256(payload).digest() + payload
    from .run_folder import atomic_write

    atomic_write(path, data)
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


def read_checkpoint_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; an unreadable file is a :class:`CheckpointError` naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None


def _read_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    name = os.fspath(path)
    data = read_checkpoint_bytes(path)
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{name!r} is not an fq-plugins compressed checkpoint ({FORMAT})")
    head = len(MAGIC) + 32
    digest, payload = data[len(MAGIC) : head], data[head:]
    if len(digest) < 32 or hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(
            f"{name!r} is corrupted or truncated (its sha256 does not match the content); "
            "restore it from a copy or write it again"
        )
    try:
        blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # an intact digest but an unreadable payload: say which file
        raise CheckpointError(f"{name!r} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{name!r} is not an fq-plugins compressed checkpoint ({FORMAT})")
    return blob


def _decode_layer(name: str, rec: Any, file: str) -> torch.Tensor:
    """The float32 weight of one packed layer, every field checked."""
    try:
        shape = [int(d) for d in rec["shape"]]
        c, per = shape[0], math.prod(shape[1:])
        widths = [int(w) for w in rec["widths"]]
        offsets = [int(o) for o in rec["offsets"]]
        data = rec["codes"].numpy().tobytes()
        scale, shift, offset = rec["scale"], rec["shift"], int(rec["offset"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{file!r}: layer {name!r} is malformed ({exc})") from None
    if c < 1 or per < 1 or len(widths) != c or len(offsets) != c + 1 or offset not in (0, 1):
        raise CheckpointError(f"{file!r}: layer {name!r} has inconsistent sizes")
    for i, w in enumerate(widths):
        if not 1 <= w <= 32 or offsets[i + 1] - offsets[i] != math.ceil(per * w / 8):
            raise CheckpointError(f"{file!r}: layer {name!r} channel {i} has a bad code width")
    if offsets[0] != 0 or offsets[-1] != len(data):
        raise CheckpointError(f"{file!r}: layer {name!r} code bytes do not match its offsets")
    for what, t in (("scale", scale), ("shift", shift)):
        if not isinstance(t, torch.Tensor) or t.numel() != c or not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{file!r}: layer {name!r} has a missing, misshapen or non-finite {what}"
            )
    k = torch.empty(c, per, dtype=torch.int64)
    for i in range(c):
        width = widths[i]
        raw = unpack_bits(data[offsets[i] : offsets[i + 1]], width, per).astype(np.int64)
        k[i] = torch.from_numpy(2 * raw - 1 if width == 1 else raw - ((1 << (width - 1)) - 1))
    qc = QuantCodes(
        codes=k.reshape(shape),
        scale=scale,
        shift=shift,
        max_code=torch.zeros(c),
        bits=torch.zeros(c),
        offset=offset,
    )
    return qc.dequantize()


def load_compressed(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load a :func:`save_compressed` file into ``model``; returns it.

    ``model`` is the architecture the checkpoint was made from; when channels were removed
    (BMRS), its conv/linear/norm layers are resized to the stored shapes first, so
    ``load_compressed(path, build_model(...))`` restores the pruned model. The file's
    digest, every packed field and every shape are checked first: a corrupted, truncated
    or foreign file, or one that does not fit ``model`` (another number of classes), raises
    :class:`CheckpointError` and leaves ``model`` untouched.
    """
    file = os.fspath(path)
    blob = _read_payload(path)
    rest, layers = blob.get("rest"), blob.get("layers")
    if not isinstance(rest, dict) or not isinstance(layers, dict):
        raise CheckpointError(f"{file!r} is malformed (no state)")
    state = dict(rest)
    for name, rec in layers.items():
        state[f"{name}.weight" if name else "weight"] = _decode_layer(str(name), rec, file)
    _check_fits(model, state, file)
    modules = dict(model.named_modules())
    for mname, rec in blob.get("inputs", {}).items():
        mod = modules.get(mname)
        if mod is None:
            raise CheckpointError(
                f"{file!r} quantizes the input of {mname!r}, which this model lacks"
            )
        if INPUT_TRANSFORM_ATTR not in mod._modules:
            install_input_transform(mod, ActivationQuant(int(rec["bits"])))
    _resize_to(model, state)
    model.load_state_dict(state)
    return model


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], file: str) -> None:
    """Every key known and no tensor larger than the model's: pruning only removes channels,
    and the outputs of the last Conv/Linear (the head) never change."""
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own and INPUT_TRANSFORM_ATTR not in k)
    missing = sorted(k for k in own if k not in state and INPUT_TRANSFORM_ATTR not in k)
    if unknown or missing:
        raise CheckpointError(
            f"{file!r} does not fit this model: "
            + (f"unknown keys {unknown[:4]}" if unknown else "")
            + (" " if unknown and missing else "")
            + (f"missing keys {missing[:4]}" if missing else "")
            + "; build the architecture the checkpoint was made from"
        )
    heads = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYER_TYPES)]
    head = f"{heads[-1]}.weight" if heads else None
    for k, t in state.items():
        if k not in own:
            continue
        mine = own[k].shape
        if t.shape == mine:
            continue
        grows = len(t.shape) != len(mine) or any(a > b for a, b in zip(t.shape, mine, strict=True))
        head_outputs = (k == head and t.shape[0] != mine[0]) or (
            head is not None and k == head.removesuffix("weight") + "bias"
        )
        if grows or head_outputs:
            raise CheckpointError(
                f"{file!r} does not fit this model: {k} is {list(t.shape)} in the file and "
                f"{list(mine)} here (e.g. another number of classes); build the architecture "
                "the checkpoint was made from"
            )
