"""Compressed checkpoints: bit packing, exact round trip, file size that reflects the bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fq_plugins.compressors.ops import QuantCodes
from fq_plugins.models import SmallCNN
from fq_plugins.protocols import AttachContext
from fq_plugins.session import CompressionSession
from fq_plugins.storage import load_compressed, pack_bits, save_compressed, unpack_bits


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13])
def test_pack_unpack_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 2**bits, 1001)
    data = pack_bits(v, bits)
    assert len(data) == -(-1001 * bits // 8)
    assert np.array_equal(unpack_bits(data, bits, 1001), v)


def test_pack_rejects_overflow():
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        pack_bits(np.array([8]), 3)


def _ctx():
    gen = torch.Generator().manual_seed(0)
    b = [(torch.randn(16, 3, 16, 16, generator=gen), torch.randint(0, 5, (16,), generator=gen), torch.arange(16) % 2)]
    return AttachContext(calib_batches=lambda: iter(b), n_groups=2)


@pytest.mark.parametrize("methods", [
    [{"method": "uniform", "bits": 4}],
    [{"method": "uniform", "bits": 1}],
    [{"method": "fairquant", "mode": "static", "importance": {"calib_batches": 1}}],
    [{"method": "codeq", "bits": 3}],
    [{"method": "codeq", "init_logit": 0.8}],
    [{"method": "codeq", "bits": 4, "init_logit": 0.05}],  # 95 % dead-zone: low levels empty
    [{"method": "codeq", "bits": 4, "act_bits": 4}],  # activation quantizers are stored too
    [{"method": "fairquant", "mode": "baq", "importance": {"calib_batches": 1}}],
    [{"method": "fairquant", "mode": "baq", "deadzone": True, "importance": {"calib_batches": 1}}],
    [{"method": "momos", "block_size": 4, "capacity": 0.2, "quant_bits": 4}],
])
def test_round_trip_is_bit_identical_and_small(tmp_path, methods):
    torch.manual_seed(0)
    model = SmallCNN(3, 5)
    session = CompressionSession.from_configs(methods)
    session.attach(model, _ctx())
    if methods[0].get("deadzone"):  # open the dead-zones so the offset-1 codes are exercised
        with torch.no_grad():
            for t in session.methods[0].transforms:
                t.transform.dz_logit.fill_(0.4)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        fake = model.eval()(x)
    model = session.finalize(model).eval()
    res = save_compressed(model, session.storage_codes(), tmp_path / "m.fqz")
    assert res.float_layers == [] and len(res.packed_layers) == 4
    torch.manual_seed(123)  # a differently initialised model of the same architecture
    fresh = SmallCNN(3, 5).eval()
    load_compressed(tmp_path / "m.fqz", fresh)
    got = fresh.state_dict()
    assert set(got) == set(model.state_dict())
    for k, a in model.state_dict().items():
        assert torch.equal(a, got[k]), k
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(model(x), fake)  # finalized = fake-quantized, bit for bit
    cost = session.cost(model)
    fp32 = tmp_path / "fp32.pt"
    torch.save(model.state_dict(), fp32)
    # the file holds the packed codes (+ pickle overhead): far below FP32, near the packed size
    assert res.file_bytes < 0.5 * fp32.stat().st_size
    # a dead-zone BAQ channel at b bits has 2^b + 1 levels (0, ±d/2, …): its codes need
    # b + 1 bits, one more than the accounting counts (see docs/methods.md)
    slack = 1.3 if methods[0].get("deadzone") else 1.0
    assert res.file_bytes < slack * cost.packed_bytes + 14_000


def test_codes_that_do_not_give_the_weight_are_stored_as_float_and_reported(tmp_path):
    model = SmallCNN(3, 5).eval()  # not quantized: claim 4-bit codes anyway
    w = model.head.weight.detach()
    wrong = QuantCodes(
        codes=torch.round(w / 0.01).clamp(-7, 7).long(), scale=torch.full((5,), 0.01),
        shift=torch.zeros(5), max_code=torch.full((5,), 7), bits=torch.full((5,), 4.0),
    )
    res = save_compressed(model, {"head": wrong}, tmp_path / "m.fqz")
    assert res.float_layers == ["head"] and res.packed_layers == []
    fresh = SmallCNN(3, 5)
    load_compressed(tmp_path / "m.fqz", fresh)
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_save_refuses_bits_in_place_of_codes(tmp_path):
    model = SmallCNN(3, 5).eval()
    with pytest.raises(TypeError, match="storage_codes"):
        save_compressed(model, {"head": torch.tensor(4.0)}, tmp_path / "m.fqz")


def test_quant_codes_dequantize_by_hand():
    """The storage formula on a hand-computed case: sign(k)·((|k| − o)·s + shift)."""
    qc = QuantCodes(
        codes=torch.tensor([[0, 1, -2, 3]]), scale=torch.tensor([0.5]), shift=torch.tensor([0.25]),
        max_code=torch.tensor([3]), bits=torch.tensor([3.0]), offset=1,
    )
    assert qc.dequantize().tolist() == [[0.0, 0.25, -0.75, 1.25]]


# --- integrity: a damaged or foreign file is refused, the model left untouched -----------


def _saved(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(3, 5)
    session = CompressionSession.from_configs([{"method": "uniform", "bits": 4}])
    session.attach(model)
    model = session.finalize(model).eval()
    path = tmp_path / "m.fqz"
    save_compressed(model, session.storage_codes(), path)
    return model, path


def test_any_flipped_byte_is_detected(tmp_path):
    from fq_plugins.storage import CheckpointError

    _, path = _saved(tmp_path)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for trial in range(40):
        bad = bytearray(data)
        for i in rng.choice(len(bad), size=16, replace=False):
            bad[i] ^= 0xFF
        p = tmp_path / f"bad{trial}.fqz"
        p.write_bytes(bytes(bad))
        fresh = SmallCNN(3, 5)
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(CheckpointError):
            load_compressed(p, fresh)
        assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    (tmp_path / "short.fqz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_compressed(tmp_path / "short.fqz", SmallCNN(3, 5))
    (tmp_path / "foreign.fqz").write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(CheckpointError, match="not an fq-plugins compressed checkpoint"):
        load_compressed(tmp_path / "foreign.fqz", SmallCNN(3, 5))


def test_a_checkpoint_for_another_number_of_classes_is_refused(tmp_path):
    from fq_plugins.storage import CheckpointError

    _, path = _saved(tmp_path)  # 5 classes
    for n in (3, 8):
        with pytest.raises(CheckpointError, match="another number of classes"):
            load_compressed(path, SmallCNN(3, n))
