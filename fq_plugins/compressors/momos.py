"""MoMos (Mosaic-of-Motifs): weights as a mosaic of k motifs.

The targeted weights are flattened, zero-padded to a multiple of the block size ``s`` and
pooled into ``N`` blocks. A projection replaces every block by its nearest motif
(Euclidean) from ``{zero block} ∪ {k − 1 blocks sampled uniformly without replacement from
the current blocks}`` — resampled at each projection, not k-means. Training steps are
ordinary (no STE); one hard projection runs at attach and at the end of every epoch, so the
model is always post-projection when it is evaluated or finalized. Nearest motifs are found
in chunks so memory stays bounded (``max_chunk_elements``) for models of tens of millions
of parameters. Optional per-tensor symmetric fake-quantization at ``quant_bits``.

``k`` is given directly or as ``capacity``: ``k = max(1, min(int(capacity·N), N))``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import os
import struct
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from ..errors import ConfigError
from ..protocols import (
    AttachContext,
    CompressionStats,
    Compressor,
    LayerStats,
    MethodConfig,
    StorageSize,
)
from ..targets import Target
from .uniform import SymmetricWeightQuant

__all__ = [
    "MoMosCompressor",
    "MoMosConfig",
    "complexity_report",
    "load_compact",
    "nearest_motif",
    "project_blocks",
]


def nearest_motif(
    blocks: torch.Tensor, motifs: torch.Tensor, *, max_chunk_elements: int = 1 << 24
) -> torch.Tensor:
    """Index of the nearest motif (squared Euclidean) for each row of ``blocks``.

    ``blocks`` (N, s), ``motifs`` (k, s). Distances are computed for chunks of rows so the
    (chunk × k) distance matrix never exceeds ``max_chunk_elements`` entries. Ties go to
    the lowest motif index (the zero motif is index 0).
    """
    k = motifs.shape[0]
    if motifs.shape[1] <= 16 and k > 64:
        # Low-dimensional blocks: an exact k-d tree query is orders of magnitude faster
        # than brute force (ResNet18 at s = 4, capacity 0.01: 2.8 M blocks × 28 k motifs).
        # Ties between equal distances may pick another index of an identical value.
        from scipy.spatial import cKDTree

        tree = cKDTree(motifs.detach().double().numpy())
        out_np = np.empty(blocks.shape[0], dtype=np.int64)
        chunk = max(1, max_chunk_elements // max(motifs.shape[1], 1))
        for i in range(0, blocks.shape[0], chunk):
            _, out_np[i : i + chunk] = tree.query(
                blocks[i : i + chunk].detach().double().numpy(), k=1
            )
        return torch.from_numpy(out_np)
    chunk = max(1, max_chunk_elements // max(k, 1))
    m_sq = (motifs * motifs).sum(dim=1)
    out = torch.empty(blocks.shape[0], dtype=torch.long)
    for i in range(0, blocks.shape[0], chunk):
        b = blocks[i : i + chunk]
        # |b − m|² = |b|² − 2 b·m + |m|²; |b|² is constant per row, so argmin ignores it
        d = m_sq.unsqueeze(0) - 2.0 * (b @ motifs.T)
        out[i : i + chunk] = d.argmin(dim=1)
    return out


def project_blocks(
    flat: torch.Tensor,
    s: int,
    k: int,
    gen: torch.Generator,
    *,
    zero_motif: bool = True,
    max_chunk_elements: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project a flat weight vector onto ``k`` motifs of size ``s``.

    Returns ``(projected flat vector (same length), motifs (k, s), index per block (N,))``.
    """
    n = flat.numel()
    n_blocks = math.ceil(n / s)
    padded = torch.zeros(n_blocks * s, dtype=flat.dtype)
    padded[:n] = flat
    blocks = padded.reshape(n_blocks, s)
    n_sampled = k - 1 if zero_motif else k
    pick = torch.randperm(n_blocks, generator=gen)[:n_sampled]
    motifs = blocks[pick].clone()
    if zero_motif:
        motifs = torch.cat([torch.zeros(1, s, dtype=flat.dtype), motifs])
    idx = nearest_motif(blocks, motifs, max_chunk_elements=max_chunk_elements)
    return motifs[idx].reshape(-1)[:n], motifs, idx


def _ratio(raw: bytes, codec: str) -> float:
    if codec == "gzip":
        packed = gzip.compress(raw, compresslevel=9, mtime=0)
    elif codec == "bz2":
        packed = bz2.compress(raw, 9)
    else:
        packed = lzma.compress(raw, preset=9)
    return len(raw) / len(packed)


def complexity_report(weights: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Compression ratios (raw/compressed) of the weights' float32 bytes and of their
    sign-binarized form under gzip (9, mtime 0), bz2 (9) and lzma (preset 9); sparsity."""
    flat = torch.cat([w.detach().float().flatten() for w in weights])
    raw = flat.numpy().tobytes()
    signs = torch.sign(flat).to(torch.int8).numpy().tobytes()
    out: dict[str, Any] = {"sparsity": float((flat == 0).float().mean())}
    for codec in ("gzip", "bz2", "lzma"):
        out[f"{codec}_float32"] = _ratio(raw, codec)
        out[f"{codec}_sign"] = _ratio(signs, codec)
    return out


class MoMosConfig(MethodConfig):
    """``method: momos``: block size ``s`` and ``k`` motifs (or ``capacity``)."""

    block_size: int = Field(4, le=65536, description="Block size s (> 0, ≤ the targeted weights).")
    k: int | None = Field(None, description="Number of motifs; or give capacity.")
    capacity: float | None = Field(
        None, description="k = max(1, min(int(capacity·N), N)); in (0, 1]."
    )
    zero_motif: bool = True
    quant_bits: int | None = Field(None, ge=1, le=16, description="Optional per-tensor fake-quant.")
    seed: int = 0
    max_chunk_elements: int = Field(1 << 24, ge=1024)

    @model_validator(mode="before")
    @classmethod
    def _default_capacity(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("k") is None and data.get("capacity") is None:
            return {**data, "capacity": 0.01}
        return data

    @model_validator(mode="after")
    def _check(self) -> MoMosConfig:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be > 0; got {self.block_size}")
        if self.k is not None and self.capacity is not None:
            raise ValueError("give either k or capacity, not both")
        if self.capacity is not None and not 0.0 < self.capacity <= 1.0:
            raise ValueError(f"capacity must lie in (0, 1]; got {self.capacity}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be ≥ 1; got {self.k}")
        return self


class MoMosCompressor(Compressor):
    """MoMos: the targeted weights become a mosaic of k motifs of s weights."""

    name = "momos"
    description = "MoMos: weights as a mosaic of k motifs (block size s), projected every epoch."
    Config = MoMosConfig
    config: MoMosConfig

    def __init__(self, config: MethodConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._params: list[str] = []

    @property
    def last(self) -> dict[str, Any]:
        """Figures of the latest projection (distortion, changed weights, motif usage)."""
        return dict(self.state.record.get("last", {})) if self._state is not None else {}

    @property
    def motifs(self) -> torch.Tensor:
        """The current motif set, ``(k, s)`` (in the model's state)."""
        return self.state.get("motifs")

    def attach(
        self,
        model: nn.Module,
        targets: Sequence[Target],
        context: AttachContext | None = None,
    ) -> None:
        self.attached = [(t[0], t[1]) for t in targets]
        self._params = [getattr(t, "param", "weight") for t in targets]
        n = sum(
            self._raw(m, p).numel() for (_, m), p in zip(self.attached, self._params, strict=True)
        )
        if self.config.block_size > n:
            raise ConfigError(
                f"block_size = {self.config.block_size} is larger than the {n} weights it "
                f"would share; use a block size ≤ {n} (motifs of 2–16 weights are typical)",
                key="block_size",
            )
        n_blocks = math.ceil(n / self.config.block_size)
        if self.config.k is not None:
            if self.config.k > n_blocks:
                raise ConfigError(
                    f"k = {self.config.k} is larger than the number of blocks N = {n_blocks} "
                    f"({n} weights / block size {self.config.block_size}); use k ≤ {n_blocks}",
                    key="k",
                )
            self.k = self.config.k
        else:
            capacity = self.config.capacity if self.config.capacity is not None else 0.01
            self.k = max(1, min(int(capacity * n_blocks), n_blocks))
        self.n_blocks = n_blocks
        # schedule and motifs live in the model, so a resumed run projects exactly as an
        # uninterrupted one (the projection's sample is seeded by the counter)
        state = self.add_state(self.attached[0][1])
        state.put("projections", torch.zeros((), dtype=torch.int64))
        state.put("motifs", torch.zeros(self.k, self.config.block_size))
        if self.config.quant_bits is not None:
            for t in targets:
                q = SymmetricWeightQuant(
                    torch.tensor([float(self.config.quant_bits)]), per_channel=False
                )
                self.install_transform(t[0], t[1], q, getattr(t, "param", "weight"))
        self.project()

    def _raw(self, mod: nn.Module, param: str = "weight") -> torch.Tensor:
        """The trainable weight (the transform's input when fake-quantized)."""
        return self.original(mod, param)

    def _raws(self) -> list[torch.Tensor]:
        return [self._raw(m, p) for (_, m), p in zip(self.attached, self._params, strict=True)]

    @torch.no_grad()
    def project(self) -> dict[str, Any]:
        """One hard projection of all targeted weights; returns distortion and usage."""
        raws = self._raws()
        flat = torch.cat([r.detach().float().flatten().cpu() for r in raws])
        done = int(self.state.get("projections"))
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + done)
        proj, motifs, idx = project_blocks(
            flat,
            self.config.block_size,
            self.k,
            gen,
            zero_motif=self.config.zero_motif,
            max_chunk_elements=self.config.max_chunk_elements,
        )
        offset = 0
        for r in raws:
            n = r.numel()
            r.copy_(proj[offset : offset + n].reshape(r.shape).to(r.dtype))
            offset += n
        usage = torch.bincount(idx, minlength=motifs.shape[0])
        last = {
            "distortion": float(((flat - proj) ** 2).sum()),
            "changed_weights": int((flat != proj).sum()),
            "motifs_used": int((usage > 0).sum()),
            "zero_motif_share": float(usage[0]) / max(1, idx.numel())
            if self.config.zero_motif
            else 0.0,
            "projections": done + 1,
        }
        self.state.put("projections", torch.tensor(done + 1, dtype=torch.int64))
        self.state.put("motifs", motifs.to(torch.float32))
        self.state.record = {"last": last}
        return dict(last)

    def on_epoch_end(self, epoch: int) -> None:
        self.project()

    def compact_bytes(self) -> int:
        """Bytes of the compact form: k float32 motifs + ⌈log₂ k⌉ bits per block."""
        bits = max(1, math.ceil(math.log2(self.k))) if self.k > 1 else 0
        return self.k * self.config.block_size * 4 + math.ceil(self.n_blocks * bits / 8)

    def stats(self) -> CompressionStats:
        layers: dict[str, LayerStats] = {}
        if self.config.quant_bits is not None:
            for (name, mod), p in zip(self.attached, self._params, strict=True):
                c = int(self._raw(mod, p).shape[0])
                layers[name] = LayerStats(bits=torch.full((c,), float(self.config.quant_bits)))
        extra: dict[str, Any] = {
            "k": self.k,
            "n_blocks": self.n_blocks,
            "block_size": self.config.block_size,
            "compact_bytes": self.compact_bytes(),
            **self.last,
        }
        if self.n_blocks * self.config.block_size <= 1_000_000:  # lzma-9 on more is slow
            extra["complexity"] = self.complexity()
        return CompressionStats(method=self.name, layers=layers, extra=extra)

    def storage_size(self) -> StorageSize | None:
        """Without fake-quant the mosaic's own form (motifs + indices) is the stored size."""
        if self.config.quant_bits is not None:
            return None
        return StorageSize(tuple(n for n, _ in self.attached), self.compact_bytes())

    def summary(self) -> str | None:
        last = self.last
        if not last:
            return None
        return (
            f"momos: k = {self.k} motifs of {self.config.block_size} weights over "
            f"{self.n_blocks} blocks, {last['motifs_used']} used, zero-motif share "
            f"{last['zero_motif_share']:.1%}"
        )

    @torch.no_grad()
    def export_compact(self, path: str | os.PathLike[str]) -> int:
        """Write the compact form — k float32 motifs + one ⌈log₂ k⌉-bit index per block —
        after a small JSON header (module names and shapes). Returns the file size in bytes.

        The weights must be post-projection (they are after attach and every epoch end).
        """
        from ..storage import pack_bits

        raws = self._raws()
        flat = torch.cat([r.detach().float().flatten().cpu() for r in raws])
        s = self.config.block_size
        padded = torch.zeros(self.n_blocks * s)
        padded[: flat.numel()] = flat
        blocks = padded.reshape(self.n_blocks, s)
        idx = nearest_motif(blocks, self.motifs, max_chunk_elements=self.config.max_chunk_elements)
        if not torch.equal(self.motifs[idx], blocks):
            raise ConfigError(
                "the weights are not a mosaic of the current motifs (trained since the last "
                "projection); call project() (it runs at every epoch end) before exporting"
            )
        width = max(1, math.ceil(math.log2(self.k))) if self.k > 1 else 1
        header = json.dumps(
            {
                "format": "fq-momos/1",
                "block_size": s,
                "k": self.k,
                "n_blocks": self.n_blocks,
                "index_bits": width,
                "quant_bits": self.config.quant_bits,
                "modules": [
                    [n, list(r.shape)] for (n, _), r in zip(self.attached, raws, strict=True)
                ],
            }
        ).encode()
        from ..run_folder import atomic_write

        return atomic_write(
            path,
            struct.pack("<I", len(header))
            + header
            + self.motifs.to(torch.float32).numpy().tobytes()
            + pack_bits(idx.numpy().astype("uint32"), width),
        )

    def complexity(self) -> dict[str, Any]:
        """:func:`complexity_report` of the targeted (effective) weights."""
        return complexity_report(
            [
                cast(torch.Tensor, getattr(m, p))
                for (_, m), p in zip(self.attached, self._params, strict=True)
            ]
        )

    def finalize(self, model: nn.Module) -> nn.Module:
        self.bake_transforms()
        self.remove_state()
        return model


@torch.no_grad()
def load_compact(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Set the targeted weights of ``model`` from :meth:`MoMosCompressor.export_compact`.

    Rebuilds the exact weights (the mosaic); with ``quant_bits`` the model's own
    fake-quantization, if attached, applies on top as before. Returns ``model``. Every
    header field is checked against the file's size and the model before anything is
    allocated or written: a malformed, truncated or foreign file raises
    :class:`~fq_plugins.storage.CheckpointError` and leaves ``model`` untouched.
    """
    from ..engine.installers import default_installer
    from ..storage import CheckpointError, read_checkpoint_bytes, unpack_bits

    name_ = os.fspath(path)
    data = read_checkpoint_bytes(path)

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{name_!r} is not a valid fq-plugins MoMos export: {why}")

    if len(data) < 4:
        raise bad("too short")
    (n,) = struct.unpack("<I", data[:4])
    if n > min(len(data) - 4, 1 << 20):
        raise bad("its header length exceeds the file")
    try:
        head = json.loads(data[4 : 4 + n])
    except (ValueError, UnicodeDecodeError):
        raise bad("its header is not JSON") from None
    if not isinstance(head, dict) or head.get("format") != "fq-momos/1":
        raise bad("no fq-momos/1 header")
    try:
        s, k, nb, width = (int(head[key]) for key in ("block_size", "k", "n_blocks", "index_bits"))
        entries = [(str(m), [int(d) for d in shape]) for m, shape in head["modules"]]
    except (KeyError, TypeError, ValueError):
        raise bad("a header field is missing or not a number") from None
    if s < 1 or k < 1 or nb < 1 or not 1 <= width <= 32 or (k > 1 and (1 << width) < k):
        raise bad(f"block_size {s}, k {k}, n_blocks {nb}, index_bits {width} are inconsistent")
    body = data[4 + n :]
    motif_bytes = 4 * k * s
    if len(body) != motif_bytes + math.ceil(nb * width / 8):
        raise bad("its size does not match its header (truncated or padded)")
    modules = dict(model.named_modules())
    raws = []
    total = 0
    for mname, shape in entries:
        if mname not in modules:
            raise CheckpointError(f"{name_!r} names module {mname!r}, which this model lacks")
        raw = default_installer().original(modules[mname], "weight")
        if list(raw.shape) != shape:
            raise CheckpointError(
                f"{name_!r}: module {mname!r} has weight shape {list(raw.shape)}; the export has {shape}"
            )
        raws.append(raw)
        total += raw.numel()
    if math.ceil(total / s) != nb:
        raise bad(f"{nb} blocks of {s} do not cover the {total} weights of its modules")
    motifs = torch.frombuffer(bytearray(body[:motif_bytes]), dtype=torch.float32).reshape(k, s)
    if not bool(torch.isfinite(motifs).all()):
        raise bad("a motif holds NaN or inf")
    idx = unpack_bits(body[motif_bytes:], width, nb).astype("int64")
    if int(idx.max()) >= k:
        raise bad("an index points past the last motif")
    flat = motifs[torch.from_numpy(idx)].reshape(-1)
    offset = 0
    with torch.no_grad():
        for raw in raws:
            cnt = raw.numel()
            raw.copy_(flat[offset : offset + cnt].reshape(raw.shape))
            offset += cnt
    return model
