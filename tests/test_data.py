"""Embedded synthetic dataset, the general .npz reader, stratified splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fq_plugins.data import load_npz, make_synthetic, stratified_split
from fq_plugins.data.selectors import RandomStratifiedSelector
from fq_plugins.errors import ConfigError
from fq_plugins.testing import DataSelectorContract

from .conftest import data_dir


def test_synthetic_is_deterministic_and_has_a_minority():
    a, b = make_synthetic(2000, seed=3), make_synthetic(2000, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.group, b.group)
    assert not torch.equal(make_synthetic(2000, seed=4).x, a.x)
    share = a.group.float().mean().item()
    assert 0.15 < share < 0.25 and a.n_groups == 2 and a.x.shape == (2000, 3, 16, 16)


def test_minority_is_harder_for_a_nearest_prototype_classifier():
    """Class-mean classifier fitted on the majority: the minority scores clearly lower."""
    ds = make_synthetic(6000, seed=0)
    tr, te = stratified_split(ds, 0.3, 0)
    maj = tr.group == 0
    means = torch.stack([tr.x[maj & (tr.y == c)].mean(0) for c in range(ds.n_classes)])
    pred = torch.cdist(te.x.flatten(1), means.flatten(1)).argmin(1)
    acc = [(pred[te.group == g] == te.y[te.group == g]).float().mean().item() for g in (0, 1)]
    assert acc[0] > acc[1] + 0.1


def test_stratified_split_keeps_cells():
    ds = make_synthetic(3000, seed=1)
    tr, te = stratified_split(ds, 0.25, 0)
    assert len(tr) + len(te) == 3000
    assert not set(tr.x[:, 0, 0, 0].tolist()) & set(te.x[:, 0, 0, 0].tolist())
    for g in (0, 1):
        for c in range(ds.n_classes):
            n = int(((ds.group == g) & (ds.y == c)).sum())
            assert int(((te.group == g) & (te.y == c)).sum()) == round(n * 0.25)


def _write_npz(path, n=40, age_nan=3):
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 90, n).astype(np.float32)
    age[:age_nan] = np.nan
    np.savez(
        path,
        x=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        y=rng.integers(0, 3, n).astype(np.int8),
        classes=np.array(["a", "b", "c"]),
        sex=np.array(["female", "male", "unknown", "male"] * (n // 4)),
        age=age,
    )
    return age


def test_npz_threshold_group(tmp_path):
    p = tmp_path / "d.npz"
    age = _write_npz(p)
    ds = load_npz(p, {"column": "age", "threshold": 60})
    keep = ~np.isnan(age)
    assert len(ds) == keep.sum() and ds.dropped == 3
    assert ds.group.tolist() == (age[keep] >= 60).astype(int).tolist()
    assert ds.x.shape == (37, 3, 8, 8) and float(ds.x.max()) <= 1.0
    assert ds.group_names == ["age<60", "age>=60"] and ds.class_names == ["a", "b", "c"]


def test_npz_missing_values(tmp_path):
    p = tmp_path / "d.npz"
    age = _write_npz(p)
    age_known = age[~np.isnan(age)]
    first = float(age_known[0])
    ds = load_npz(p, {"column": "age", "threshold": 60, "missing_values": [first]})
    assert ds.dropped == 4 and len(ds) == 36
    ds = load_npz(p, {"column": "sex", "missing_values": ["unknown"]})
    assert ds.group_names == ["sex=female", "sex=male"] and ds.dropped == 10


def test_npz_categorical_group(tmp_path):
    p = tmp_path / "d.npz"
    _write_npz(p)
    ds = load_npz(p, {"column": "sex", "values": ["female", "male"]})
    assert len(ds) == 30 and ds.dropped == 10 and ds.group_names == ["sex=female", "sex=male"]


def test_npz_errors(tmp_path):
    p = tmp_path / "d.npz"
    _write_npz(p)
    with pytest.raises(ConfigError, match=r"no array 'agee'.*x, y, classes, sex, age"):
        load_npz(p, {"column": "agee", "threshold": 60})
    with pytest.raises(ConfigError, match="does not exist"):
        load_npz(tmp_path / "missing.npz", {"column": "age"})
    with pytest.raises(ConfigError, match="threshold needs numbers"):
        load_npz(p, {"column": "sex", "threshold": 1})
    with pytest.raises(ConfigError, match="do not occur"):
        load_npz(p, {"column": "sex", "values": ["femal"]})
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ConfigError, match="cannot read"):
        load_npz(bad, {"column": "age"})


@pytest.mark.skipif(data_dir() is None, reason="shared data folder not found (set FQ_DATA_DIR)")
def test_ham10000_subset_reads_with_age_groups():
    # unknown ages are stored as -1 in this file (its README says NaN): 36 rows
    ds = load_npz(
        data_dir() / "ham10000_sub_32.npz",
        {"column": "age", "threshold": 60, "missing_values": [-1]},
    )
    counts = ds.counts()
    assert counts["per_group"] == [3941, 2007] and ds.n_classes == 7 and ds.dropped == 36
    assert ds.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert ds.x.shape[1:] == (3, 32, 32)


class TestRandomSelectorContract(DataSelectorContract):
    selector_cls = RandomStratifiedSelector


def test_random_selector_stratifies():
    y = torch.tensor([0] * 60 + [1] * 40)
    g = torch.tensor(([0] * 30 + [1] * 30) + ([0] * 10 + [1] * 30))
    idx = RandomStratifiedSelector().select(y, 0.5, groups=g, seed=0)
    cells = torch.bincount((y * 2 + g)[idx], minlength=4).tolist()
    assert cells == [15, 15, 5, 15]
