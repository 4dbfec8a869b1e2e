"""MoMos: chunked nearest motif vs brute force, projection, k/capacity, errors, complexity."""

from __future__ import annotations

import gzip
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from fq_plugins.compressors.momos import (
    MoMosCompressor,
    MoMosConfig,
    complexity_report,
    nearest_motif,
    project_blocks,
)
from fq_plugins.errors import ConfigError
from fq_plugins.session import CompressionSession
from fq_plugins.testing import CompressorContract


class TestMoMosContract(CompressorContract):
    compressor_cls = MoMosCompressor
    config = {"block_size": 4, "capacity": 0.1}


class TestMoMosQuantContract(CompressorContract):
    compressor_cls = MoMosCompressor
    config = {"block_size": 3, "k": 5, "quant_bits": 4}


def test_chunked_nearest_motif_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randn(1000, 4, generator=gen, dtype=torch.float64)
    motifs = torch.randn(37, 4, generator=gen, dtype=torch.float64)
    want = torch.cdist(blocks, motifs).argmin(dim=1)
    got = nearest_motif(blocks, motifs, max_chunk_elements=37 * 7)  # chunks of 7 rows
    assert torch.equal(got, want)
    many = torch.randn(300, 4, generator=gen, dtype=torch.float64)  # k > 64: the k-d tree path
    want = torch.cdist(blocks, many).argmin(dim=1)
    assert torch.equal(nearest_motif(blocks, many, max_chunk_elements=4 * 100), want)


def test_projection_uses_only_motifs_with_zero_motif():
    flat = torch.randn(1001, generator=torch.Generator().manual_seed(1))
    proj, motifs, idx = project_blocks(flat, 4, 10, torch.Generator().manual_seed(2))
    assert motifs.shape == (10, 4) and torch.equal(motifs[0], torch.zeros(4))
    assert proj.numel() == 1001 and idx.numel() == math.ceil(1001 / 4)
    padded = torch.cat([proj, torch.zeros(3)]).reshape(-1, 4)
    assert torch.equal(padded[:-1], motifs[idx][:-1])
    # each sampled motif is an original block, and each block is nearest to its motif
    orig = torch.cat([flat, torch.zeros(3)]).reshape(-1, 4)
    assert all(any(torch.equal(m, b) for b in orig) for m in motifs[1:])
    d = torch.cdist(orig, motifs)
    assert torch.allclose(d.gather(1, idx[:, None]).squeeze(1), d.min(dim=1).values)


def test_k_from_capacity_and_compact_size():
    model = nn.Sequential(
        nn.Linear(10, 10, bias=False), nn.Linear(10, 2, bias=False)
    )  # 120 weights
    comp = MoMosCompressor(block_size=4, capacity=0.25)
    CompressionSession([comp]).attach(model)
    assert comp.n_blocks == 30 and comp.k == 7
    assert comp.compact_bytes() == 7 * 4 * 4 + math.ceil(30 * 3 / 8)
    w = torch.cat([m.weight.flatten() for m in model])
    blocks = w.reshape(-1, 4)
    assert len({tuple(b.tolist()) for b in blocks}) <= 7  # a mosaic of at most k motifs
    assert comp.last["motifs_used"] <= 7 and comp.last["distortion"] > 0


def test_epoch_end_reprojects_after_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    comp = MoMosCompressor(block_size=2, k=6)
    s = CompressionSession([comp])
    s.attach(model)
    opt = torch.optim.SGD(s.param_groups(model, lr=0.1))
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    weights = lambda: torch.cat([model[0].weight.flatten(), model[2].weight.flatten()])  # noqa: E731
    assert (
        len({tuple(b.tolist()) for b in weights().reshape(-1, 2)}) > 6
    )  # training left the mosaic
    s.on_epoch_end(0)
    assert len({tuple(b.tolist()) for b in weights().reshape(-1, 2)}) <= 6
    assert comp.last["projections"] == 2


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"block_size": 0}, "block_size must be > 0"),
        ({"capacity": 1.5}, r"capacity must lie in \(0, 1\]"),
        ({"capacity": 0.0}, r"capacity must lie in \(0, 1\]"),
        ({"k": 3, "capacity": 0.1}, "either k or capacity"),
    ],
)
def test_config_errors(cfg, match):
    with pytest.raises(ValidationError, match=match):
        MoMosConfig(method="momos", **cfg)


def test_k_larger_than_blocks_is_an_error():
    model = nn.Sequential(nn.Linear(4, 2, bias=False))  # 8 weights, 2 blocks of 4
    with pytest.raises(ConfigError, match=r"k = 3 is larger than the number of blocks N = 2"):
        CompressionSession.from_configs([{"method": "momos", "k": 3}]).attach(model)


def test_complexity_report_against_direct_compression():
    w = torch.zeros(4096)
    w[::7] = 1.5
    rep = complexity_report([w])
    raw = w.numpy().tobytes()
    assert rep["gzip_float32"] == pytest.approx(len(raw) / len(gzip.compress(raw, 9, mtime=0)))
    assert rep["sparsity"] == pytest.approx(1 - len(range(0, 4096, 7)) / 4096)
    assert rep["lzma_sign"] > 10 and rep["bz2_float32"] > 10


def test_compact_export_rebuilds_identical_weights_at_the_reported_size(tmp_path):
    from fq_plugins.compressors.momos import load_compact

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    comp = MoMosCompressor(block_size=4, capacity=0.05)
    CompressionSession([comp]).attach(model)
    size = comp.export_compact(tmp_path / "m.momos")
    import struct

    (n_header,) = struct.unpack("<I", (tmp_path / "m.momos").read_bytes()[:4])
    # k·s float32 motifs + ⌈N·⌈log2 k⌉/8⌉ index bytes, plus only the small header
    assert size == 4 + n_header + comp.compact_bytes() and n_header < 300
    assert comp.compact_bytes() == comp.k * 4 * 4 + -(
        -comp.n_blocks * math.ceil(math.log2(comp.k)) // 8
    )
    fresh = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    fresh.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k.endswith("bias")}, strict=False
    )
    load_compact(tmp_path / "m.momos", fresh)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        model[0].weight.add_(0.01)  # leave the mosaic: export must refuse
    with pytest.raises(ConfigError, match="not a mosaic"):
        comp.export_compact(tmp_path / "x.momos")


def test_reported_packed_size_is_the_compact_size():
    model = nn.Sequential(nn.Linear(40, 40, bias=False), nn.Linear(40, 4, bias=False))
    s = CompressionSession([MoMosCompressor(block_size=4, capacity=0.05)])
    s.attach(model)
    comp = s.methods[0]
    assert s.cost(model).packed_bytes == comp.compact_bytes()  # no other tensors here
    assert s.cost(model).fp32_bytes == (1600 + 160) * 4


def test_a_damaged_or_crafted_export_is_refused_before_anything_is_allocated(tmp_path):
    import json
    import struct

    from fq_plugins.compressors.momos import load_compact
    from fq_plugins.storage import CheckpointError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    comp = MoMosCompressor(block_size=4, capacity=0.05)
    CompressionSession([comp]).attach(model)
    good = tmp_path / "m.momos"
    comp.export_compact(good)
    data = good.read_bytes()
    (n,) = struct.unpack("<I", data[:4])
    head = json.loads(data[4 : 4 + n])

    def with_header(**change):
        h = json.dumps({**head, **change}).encode()
        return struct.pack("<I", len(h)) + h + data[4 + n :]

    cases = {
        "index_bits0": (with_header(index_bits=0), "inconsistent"),
        "huge_k": (with_header(k=10**9), "inconsistent"),  # would allocate 16 GB
        "huge_k_wide": (with_header(k=10**9, index_bits=30), "size does not match"),
        "huge_blocks": (with_header(n_blocks=10**10), "size does not match"),
        "truncated": (data[:-5], "size does not match"),
        "header_len": (struct.pack("<I", 2**31) + data[4:], "header length"),
        "not_json": (struct.pack("<I", 3) + b"{x}" + data[4 + n :], "not JSON"),
        "foreign": (b"\x00\x01", "too short"),
    }
    fresh = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    before = [p.detach().clone() for p in fresh.parameters()]
    for label, (blob, match) in cases.items():
        p = tmp_path / f"{label}.momos"
        p.write_bytes(blob)
        with pytest.raises(CheckpointError, match=match):
            load_compact(p, fresh)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))
    with pytest.raises(CheckpointError, match="weight shape"):
        load_compact(good, nn.Sequential(nn.Linear(30, 21), nn.ReLU(), nn.Linear(21, 5)))


def test_a_block_larger_than_the_weights_is_refused_at_attach():
    """block_size bounds what MoMos allocates (k × s motifs): 1e8 would write 400 MB for
    a model of a few thousand weights; refused at attach, before any training."""
    model = nn.Sequential(nn.Linear(4, 2, bias=False))  # 8 weights
    with pytest.raises(ConfigError, match=r"block_size = 9 is larger than the 8 weights"):
        CompressionSession.from_configs([{"method": "momos", "block_size": 9}]).attach(model)
    with pytest.raises(ValidationError, match="less than or equal to 65536"):
        MoMosConfig(method="momos", block_size=10**8)
