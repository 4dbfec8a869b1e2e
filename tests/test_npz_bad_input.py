"""Malformed .npz files and contradictory group specs: the library's own error, naming
the problem — never a traceback from numpy/zipfile, never a silently coerced dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fq_plugins.data.npz import GroupSpec, load_npz
from fq_plugins.errors import ConfigError

AGE = {"column": "age", "threshold": 60}


def _save(path, **arrays):
    base = {
        "x": np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8),
        "y": np.arange(20) % 2,
        "age": np.linspace(20, 80, 20),
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def _err(path, match, **kw):
    with pytest.raises(ConfigError, match=match):
        load_npz(path, kw.pop("group", AGE), **kw)


def test_truncated_corrupted_empty_and_renamed_files(tmp_path):
    good = _save(tmp_path / "good.npz")
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    _err(tmp_path / "trunc.npz", "cannot read")
    flipped = bytearray(data)
    mid = len(data) // 3  # inside the first array's bytes: a CRC mismatch on read
    flipped[mid : mid + 16] = bytes(b ^ 0xFF for b in flipped[mid : mid + 16])
    (tmp_path / "crc.npz").write_bytes(bytes(flipped))
    _err(tmp_path / "crc.npz", "cannot read")
    (tmp_path / "empty.npz").write_bytes(b"")
    _err(tmp_path / "empty.npz", "cannot read")
    np.save(tmp_path / "single.npy", np.zeros((4, 3)))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    _err(tmp_path / "single.npz", "single array, not an .npz archive")


def test_arrays_of_the_wrong_kind(tmp_path):
    _err(
        _save(tmp_path / "s.npz", x=np.array([["a"] * 8] * 20).reshape(20, 8, 1, 1).repeat(8, 2)),
        "must be numbers",
    )
    _err(_save(tmp_path / "o.npz", y=np.array(["a", "b"] * 10)), "integer class indices")
    _err(
        _save(tmp_path / "e.npz", x=np.zeros((0, 8, 8, 3)), y=np.zeros(0, int), age=np.zeros(0)),
        "holds no examples",
    )
    _err(_save(tmp_path / "f.npz", y=np.arange(20) % 2 + 0.5), r"non-integer values \(e.g. \[0.5")
    _err(
        _save(tmp_path / "big.npz", y=np.r_[np.zeros(19, int), 1_000_000]),
        r"range over \[0, 1000000\] for 20 examples",
    )
    _err(_save(tmp_path / "m.npz", age=np.full(20, np.nan)), "every row .* lacks a group value")


def test_integral_float_labels_are_class_indices(tmp_path):
    ds = load_npz(_save(tmp_path / "f.npz", y=(np.arange(20) % 2).astype(np.float32)), AGE)
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == (np.arange(20) % 2).tolist()


def test_threshold_and_values_together_are_refused():
    with pytest.raises(ValueError, match=r"either threshold .* or values"):
        GroupSpec(column="age", threshold=60, values=["a"])


def test_channel_layout_is_read_from_the_square_axes(tmp_path):
    rng = np.random.default_rng(1)
    nhwc = rng.random((20, 32, 32, 2)).astype(np.float32)  # 2-channel channels-last
    ds = load_npz(_save(tmp_path / "a.npz", x=nhwc), AGE)
    assert tuple(ds.x.shape[1:]) == (2, 32, 32)
    assert torch.equal(ds.x[3, 1], torch.from_numpy(nhwc[3, :, :, 1]))
    nchw = rng.random((20, 2, 32, 32)).astype(np.float32)
    ds = load_npz(_save(tmp_path / "b.npz", x=nchw), AGE)
    assert torch.equal(ds.x, torch.from_numpy(nchw))
    cube = rng.random((20, 3, 3, 3)).astype(np.float32)  # cannot tell: ask
    _err(_save(tmp_path / "c.npz", x=cube), "set data.layout")
    ds = load_npz(tmp_path / "c.npz", AGE, layout="nhwc")
    assert torch.equal(ds.x, torch.from_numpy(cube.transpose(0, 3, 1, 2)))
