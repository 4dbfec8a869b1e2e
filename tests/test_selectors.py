"""Coreset selectors (issue 17): quotas, EL2N, k-center greedy, the select_subset API.

Oracles: exact quotas from fractions.Fraction, EL2N by hand / numpy float64, k-center against
a brute-force O(n²) float64 greedy, the warm-up against a direct ``fit`` call, embeddings
against the layers applied by hand.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from fq_plugins.data.base import GroupDataset
from fq_plugins.data.coreset import (
    allocate,
    el2n_scores,
    hf_subset,
    k_center_greedy,
    penultimate_embeddings,
    select_from_tensors,
    select_subset,
    subset_of,
)
from fq_plugins.data.selectors import EL2NSelector, KCenterSelector, RandomStratifiedSelector
from fq_plugins.engine.fit import fit
from fq_plugins.errors import ConfigError, FQError, UnknownPluginError
from fq_plugins.manager import get_plugin_manager
from fq_plugins.protocols import DataSelector
from fq_plugins.testing import DataSelectorContract


def quiet(_msg: str) -> None:
    pass


def tiny_model(seed: int = 0, d: int = 4, c: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, c))


def toy(
    n: int = 300, seed: int = 0, d: int = 4, c: int = 3, minority: float = 0.25
) -> GroupDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = torch.randint(0, c, (n,), generator=gen)
    g = (torch.rand(n, generator=gen) < minority).long()
    return GroupDataset(x, y, g, [f"c{i}" for i in range(c)], ["major", "minor"])


# --- the protocol contract, for all three ----------------------------------------------


class TestRandomContract(DataSelectorContract):
    selector_cls = RandomStratifiedSelector


def _with_model(cls: type[EL2NSelector] | type[KCenterSelector]) -> type[DataSelector]:
    class WithModel(cls):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__(warmup_epochs=1, batch_size=64, log=quiet)

        def select(self, labels, fraction, *, model=None, groups=None, seed=0, inputs=None):
            y = torch.as_tensor(labels)
            inputs = torch.randn(y.numel(), 4, generator=torch.Generator().manual_seed(5))
            return super().select(
                labels, fraction, model=tiny_model(), groups=groups, seed=seed, inputs=inputs
            )

    return WithModel


class TestEL2NContract(DataSelectorContract):
    selector_cls = _with_model(EL2NSelector)


class TestKCenterContract(DataSelectorContract):
    selector_cls = _with_model(KCenterSelector)


def test_builtins_registered_and_model_based_flagged():
    pm = get_plugin_manager(autoload=False)
    assert pm.selectors.get("random") is RandomStratifiedSelector
    assert pm.selectors.get("el2n") is EL2NSelector and EL2NSelector.needs_model
    assert pm.selectors.get("kcenter") is KCenterSelector and KCenterSelector.needs_model
    with pytest.raises(UnknownPluginError, match="kcenter"):
        select_subset(toy(), selector="kcentre", fraction=0.5)


# --- quotas: share preservation, floors, empty strata ---------------------------------


def _exact_group_quota(n_g: list[int], k: int) -> list[Fraction]:
    n = sum(n_g)
    return [Fraction(m * k, n) for m in n_g]


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.1, 0.37])
def test_group_aware_keeps_each_group_share_to_rounding(fraction):
    ds = toy(n=997, seed=3)
    r = select_subset(ds, selector="random", fraction=fraction, group_aware=True, seed=1)
    k = round(fraction * 997)
    assert r.n_kept == k
    n_g = torch.bincount(ds.group).tolist()
    for row, q in zip(r.per_group, _exact_group_quota(n_g, k), strict=True):
        assert row["kept"] in (math.floor(q), math.ceil(q))
    # and each (class, group) cell: its share of its group's kept count, to rounding, ≥ 1
    kept = ds.subset(r.indices)
    for gi in range(2):
        col = torch.bincount(ds.y[ds.group == gi], minlength=3).tolist()
        sub = torch.bincount(kept.y[kept.group == gi], minlength=3).tolist()
        tot = sum(sub)
        for c_full, c_kept in zip(col, sub, strict=True):
            q = Fraction(c_full * tot, sum(col))
            assert c_kept in (math.floor(q), math.ceil(q), 1) and c_kept >= 1


def test_share_exact_when_divisible():
    # cells of 40/20/60/80 examples, fraction 0.25 → 10/5/15/20 exactly, for every selector
    y = torch.tensor([0] * 40 + [1] * 20 + [0] * 60 + [1] * 80)
    g = torch.tensor([0] * 60 + [1] * 140)
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    ds = GroupDataset(x, y, g, ["a", "b"], ["g0", "g1"])
    for sel in ("random", "el2n", "kcenter"):
        r = select_subset(
            ds,
            selector=sel,
            fraction=0.25,
            group_aware=True,
            seed=2,
            model_factory=lambda: tiny_model(c=2),
            warmup_epochs=None if sel == "random" else 0,
            log=quiet,
        )
        cells = torch.bincount((y * 2 + g)[r.indices], minlength=4).tolist()
        assert cells == [10, 15, 5, 20], sel
        assert [p["share_kept"] for p in r.per_group] == [0.3, 0.7]
        assert [p["share_full"] for p in r.per_group] == [0.3, 0.7]


def test_floor_water_fills_the_minority():
    # 800 / 200 examples, keep 400: shares 320 / 80; floor 0.3 lifts the minority to 120
    y = torch.zeros(1000, dtype=torch.long)
    y[::2] = 1
    g = torch.tensor([0] * 800 + [1] * 200)
    _, ids, quota = allocate(y, g, 400, floor=0.3)
    per_group = {0: 0, 1: 0}
    for s, q in zip(ids.tolist(), quota.tolist(), strict=True):
        per_group[s % 2] += q
    assert per_group == {0: 280, 1: 120}
    # a floor above the group's size keeps all of it, the rest goes to the others
    _, ids, quota = allocate(y, g, 800, floor=0.5)
    per_group = {0: 0, 1: 0}
    for s, q in zip(ids.tolist(), quota.tolist(), strict=True):
        per_group[s % 2] += q
    assert per_group == {0: 600, 1: 200}


def test_floor_through_select_subset_and_its_errors():
    ds = toy(n=400, seed=1, minority=0.1)
    r = select_subset(ds, selector="random", fraction=0.5, group_aware=True, floor=0.25)
    assert r.per_group[1]["kept"] == min(r.per_group[1]["full"], 50)
    with pytest.raises(ConfigError, match="needs group_aware"):
        select_subset(ds, fraction=0.5, floor=0.25)
    with pytest.raises(ConfigError, match=r"floor must lie in \(0, 1/2\]"):
        select_subset(ds, fraction=0.5, group_aware=True, floor=0.6)


def test_tiny_class_empty_warns_without_group_aware_and_is_kept_with_it():
    y = torch.tensor([0] * 50 + [1] * 49 + [2])
    g = torch.tensor([0, 1] * 50)
    ds = GroupDataset(torch.zeros(100, 1), y, g, ["a", "b", "rare"], ["g0", "g1"])
    lines: list[str] = []
    r = select_subset(ds, fraction=0.1, group_aware=False, log=lines.append)
    assert r.per_class[2]["kept"] == 0
    assert len(r.warnings) == 1 and "'rare'" in r.warnings[0] and "class" in r.warnings[0]
    assert lines and lines[0].startswith("warning:")
    r = select_subset(ds, fraction=0.1, group_aware=True)
    assert r.per_class[2]["kept"] == 1 and r.warnings == [] and r.n_kept == 10


def test_group_aware_infeasible_is_an_error_before_any_warm_up():
    ds = toy(n=300)
    built = []

    def factory() -> nn.Module:
        built.append(1)
        return tiny_model(c=3)

    with pytest.raises(ConfigError, match=r"fewer than the 6 non-empty \(class, group\) cells"):
        select_subset(ds, selector="el2n", fraction=0.01, group_aware=True, model_factory=factory)
    assert built == []


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), "0.5", True])
def test_bad_fraction(bad):
    with pytest.raises(ConfigError, match="fraction"):
        select_subset(toy(), fraction=bad)
    if isinstance(bad, float):
        with pytest.raises(ConfigError, match="fraction"):
            RandomStratifiedSelector().select(toy().y, bad)


def test_fraction_keeping_nothing():
    with pytest.raises(ConfigError, match="keeps none"):
        select_subset(toy(n=100), fraction=0.004)


@pytest.mark.parametrize("name", ["el2n", "kcenter"])
def test_model_selector_without_model(name):
    with pytest.raises(ConfigError, match=f"selector '{name}'.*model_factory"):
        select_subset(toy(), selector=name, fraction=0.5)
    cls = get_plugin_manager(autoload=False).selectors.get(name)
    with pytest.raises(ConfigError, match="pass model="):
        cls().select(toy().y, 0.5, inputs=toy().x)


def test_unknown_option_and_random_warmup():
    with pytest.raises(ConfigError, match=r"no option\(s\) \['warmup_epochs'\]"):
        select_subset(toy(), fraction=0.5, warmup_epochs=2)
    with pytest.raises(ConfigError, match=r"no option\(s\) \['nope'\]"):
        select_subset(
            toy(), selector="el2n", fraction=0.5, model_factory=tiny_model, options={"nope": 1}
        )
    with pytest.raises(ConfigError, match="warmup_epochs must be an integer"):
        EL2NSelector(warmup_epochs=-1)
    with pytest.raises(ConfigError, match="keep must be"):
        EL2NSelector(keep="medium")


def test_bad_indices_from_a_third_party_selector():
    class Dup(DataSelector):
        name = "dup"

        def select(self, labels, fraction, *, model=None, groups=None, seed=0, inputs=None):
            k = round(fraction * len(labels))
            return torch.zeros(k, dtype=torch.long)

    with pytest.raises(FQError, match="duplicate"):
        select_subset(toy(), selector=Dup(), fraction=0.5)


# --- EL2N ---------------------------------------------------------------------------


def test_el2n_hand_case_uniform_logits():
    model = nn.Linear(4, 3)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    ds = toy(n=20)
    # p = (1/3, 1/3, 1/3): ‖p − e_y‖ = sqrt(4/9 + 1/9 + 1/9) = sqrt(6)/3 for every example
    s = el2n_scores(model, ds)
    assert torch.allclose(s, torch.full((20,), math.sqrt(6) / 3, dtype=s.dtype), atol=1e-12)


def _el2n_numpy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    w1, b1 = (t.detach().double().numpy() for t in (model[0].weight, model[0].bias))
    w2, b2 = (t.detach().double().numpy() for t in (model[2].weight, model[2].bias))
    h = np.maximum(x.double().numpy() @ w1.T + b1, 0.0)
    z = h @ w2.T + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y.numpy()] -= 1.0
    return np.linalg.norm(p, axis=1)


def test_el2n_matches_numpy_and_picks_top_per_class():
    ds = toy(n=120, seed=4)
    model = tiny_model(seed=2, c=3)
    ref = _el2n_numpy(model, ds.x, ds.y)
    assert np.allclose(el2n_scores(model, ds).numpy(), ref, atol=1e-6)
    for keep in ("hard", "easy"):
        r = select_subset(
            ds,
            selector="el2n",
            fraction=0.25,
            model_factory=lambda: model,
            warmup_epochs=0,
            options={"keep": keep},
            log=quiet,
        )
        expect = []
        quota = {c: q for c, q in zip(*np.unique(ds.y.numpy(), return_counts=True), strict=True)}
        k = 30
        exact = {c: Fraction(int(m) * k, 120) for c, m in quota.items()}
        take = {c: math.floor(q) for c, q in exact.items()}
        for c in sorted(exact, key=lambda c: -(exact[c] - take[c]))[: k - sum(take.values())]:
            take[c] += 1
        for c, q in take.items():
            members = np.nonzero(ds.y.numpy() == c)[0]
            sign = -1.0 if keep == "hard" else 1.0
            order = np.lexsort((members, sign * ref[members]))
            expect.extend(members[order[:q]].tolist())
        assert r.indices.tolist() == sorted(expect), keep


def test_el2n_warm_up_is_the_engine_fit_on_a_copy():
    ds = toy(n=200, seed=6)
    model = tiny_model(seed=1, c=3)
    before = copy.deepcopy(model.state_dict())
    sel = EL2NSelector(warmup_epochs=2, lr=1e-2, batch_size=32, log=quiet)
    scores = sel.prepare(ds.x, ds.y, model=model, seed=9)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "the caller's model was changed"
    ref_model = copy.deepcopy(model)
    fit(ref_model, ds, epochs=2, lr=1e-2, batch_size=32, seed=9, log=quiet)
    assert np.allclose(scores.numpy(), _el2n_numpy(ref_model, ds.x, ds.y), atol=1e-6)
    assert sel.last_cost.warmup_epochs == 2 and sel.last_cost.warmup_seconds > 0
    assert not np.allclose(scores.numpy(), _el2n_numpy(model, ds.x, ds.y), atol=1e-3)


# --- k-center greedy ----------------------------------------------------------------


def _k_center_brute(emb: np.ndarray, k: int, first: int) -> list[int]:
    d = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)  # O(n²) float64
    chosen = [first]
    for _ in range(k - 1):
        mind = d[:, chosen].min(1)
        mind[chosen] = -1.0
        chosen.append(int(np.argmax(mind)))
    return chosen


@pytest.mark.parametrize("chunk", [7, 16384])
def test_k_center_matches_brute_force(chunk):
    emb = torch.randn(300, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = k_center_greedy(emb, 40, first=11, chunk_size=chunk)
    assert got.tolist() == _k_center_brute(emb.numpy(), 40, 11)
    # float32 embedding: same covering radius to float32 precision
    got32 = k_center_greedy(emb.float(), 40, first=11, chunk_size=chunk)
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    r64 = d[:, got].min(1).values.max()
    r32 = d[:, got32].min(1).values.max()
    assert float(abs(r64 - r32)) <= 1e-5 * float(r64)


def test_k_center_duplicates_and_bad_k():
    emb = torch.ones(10, 3)
    got = k_center_greedy(emb, 10, first=4)
    assert sorted(got.tolist()) == list(range(10))
    with pytest.raises(ConfigError, match=r"k must lie in \[1, 10\]"):
        k_center_greedy(emb, 11)
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        k_center_greedy(torch.ones(10), 2)


def test_k_center_50k_points_in_bounded_memory():
    """50,000 × 64 float32 (12.8 MB): a pairwise matrix would need 10 GB; the greedy's
    working space stays a few MB (peak RSS growth measured in a fresh process)."""
    code = textwrap.dedent(
        """
        import json, resource, time, torch
        from fq_plugins.data.coreset import k_center_greedy
        torch.set_num_threads(1)
        emb = torch.randn(50_000, 64, generator=torch.Generator().manual_seed(0))
        k_center_greedy(emb[:100], 5)  # warm the allocator and kernels
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        idx = k_center_greedy(emb, 150, first=0)
        dt = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        d = ((emb[idx[:-1]] - emb[idx[-1]]) ** 2).sum(1)
        print(json.dumps({"grow_kb": peak - base, "n": len(set(idx.tolist())), "s": dt,
                          "last_is_new": bool((d > 0).all())}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] == 150 and res["last_is_new"]
    assert res["grow_kb"] < 48 * 1024, res  # < 48 MB working space (N² would be 10 GB)


# --- embeddings -------------------------------------------------------------------


def test_penultimate_embedding_is_the_head_input():
    ds = toy(n=50, seed=2)
    model = tiny_model(seed=3, c=3)
    emb = penultimate_embeddings(model, ds, batch_size=16)
    ref = torch.relu(ds.x @ model[0].weight.T + model[0].bias)
    assert emb.shape == (50, 8) and torch.allclose(emb, ref, atol=1e-6)
    emb0 = penultimate_embeddings(model, ds, layer="1")  # the ReLU's input: pre-activation
    assert torch.allclose(emb0, ds.x @ model[0].weight.T + model[0].bias, atol=1e-6)
    with pytest.raises(ConfigError, match="embedding_layer 'fc'"):
        penultimate_embeddings(model, ds, layer="fc")
    with pytest.raises(ConfigError, match=r"no nn.Linear"):
        penultimate_embeddings(nn.Sequential(nn.Flatten()), ds)


def test_kcenter_selector_is_greedy_per_class_on_embeddings():
    ds = toy(n=90, seed=8)
    model = tiny_model(seed=4, c=3)
    r = select_subset(
        ds,
        selector="kcenter",
        fraction=0.2,
        model_factory=lambda: model,
        warmup_epochs=0,
        seed=5,
        log=quiet,
    )
    emb = penultimate_embeddings(model, ds).double().numpy()
    gen = torch.Generator().manual_seed(5)
    _, ids, quota = allocate(ds.y, None, 18)
    expect = []
    for c, q in zip(ids.tolist(), quota.tolist(), strict=True):
        members = np.nonzero(ds.y.numpy() == c)[0]
        first = int(torch.randint(len(members), (1,), generator=gen))
        expect.extend(members[_k_center_brute(emb[members], q, first)].tolist())
    assert r.indices.tolist() == sorted(expect)


# --- the API around it ----------------------------------------------------------------


def test_result_shares_cost_and_feature_reuse():
    ds = toy(n=240, seed=9)
    r = select_subset(
        ds,
        selector="el2n",
        fraction=0.5,
        group_aware=True,
        model_factory=lambda: tiny_model(c=3),
        warmup_epochs=1,
        seed=3,
        log=quiet,
    )
    kept_g = torch.bincount(ds.group[r.indices], minlength=2).tolist()
    full_g = torch.bincount(ds.group, minlength=2).tolist()
    assert [p["kept"] for p in r.per_group] == kept_g and [p["full"] for p in r.per_group] == full_g
    assert r.per_group[1]["kept_fraction"] == kept_g[1] / full_g[1]
    assert r.warmup_epochs == 1 and r.seconds >= r.warmup_seconds > 0
    d = r.to_dict()
    json.dumps(d)
    assert (
        d["n_kept"] == 120 and "indices" not in d and len(r.to_dict(indices=True)["indices"]) == 120
    )
    again = select_subset(
        ds, selector="el2n", fraction=0.5, group_aware=True, features=r.features, seed=3
    )
    assert torch.equal(again.indices, r.indices) and again.warmup_epochs == 0
    assert len(r.apply(ds)) == 120
    with pytest.raises(ConfigError, match="240 examples"):
        r.apply(toy(n=100))


def test_select_from_tensors_and_torch_subset():
    y = torch.arange(100) % 4
    g = (torch.arange(100) >= 80).long()
    r = select_from_tensors(y, groups=g, fraction=0.5, group_aware=True, seed=0)
    assert r.per_group[1]["kept"] == 10
    base = torch.utils.data.TensorDataset(torch.randn(100, 2), y)
    sub = subset_of(base, r)
    assert isinstance(sub, torch.utils.data.Subset) and len(sub) == 50
    assert torch.equal(sub[0][1], y[r.indices[0]])
    with pytest.raises(ConfigError, match="needs groups"):
        select_from_tensors(y, fraction=0.5, group_aware=True)
    with pytest.raises(ConfigError, match="inputs="):
        select_from_tensors(y, fraction=0.5, selector="el2n", model_factory=tiny_model)


class FakeHFDataset:
    """What hf_subset relies on from datasets.Dataset: column_names, columns, select, features."""

    class _Label:
        names = ["cat", "dog", "emu"]

    def __init__(self, rows: dict[str, list]) -> None:
        self.rows = rows
        self.column_names = list(rows)
        self.features = {"label": self._Label()}
        self.selected: list[int] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.rows.values())))

    def __getitem__(self, key: str) -> list:
        return self.rows[key]

    def select(self, indices: list[int]) -> FakeHFDataset:
        out = FakeHFDataset({k: [v[i] for i in indices] for k, v in self.rows.items()})
        out.selected = indices
        return out


def test_hf_subset_duck_typed():
    labels = [i % 3 for i in range(60)]
    ds = FakeHFDataset({"label": labels, "age_group": [int(i >= 48) for i in range(60)]})
    sub, r = hf_subset(ds, fraction=0.5, group_column="age_group", group_aware=True)
    assert isinstance(sub, FakeHFDataset) and sub.selected == r.indices.tolist()
    assert [c["name"] for c in r.per_class] == ["cat", "dog", "emu"]
    assert sum(sub["age_group"]) == r.per_group[1]["kept"] == 6  # 12 of 60, half kept
    with pytest.raises(ConfigError, match="no column 'labels'"):
        hf_subset(ds, fraction=0.5, label_column="labels")


def test_datasets_dataset_select_if_installed():
    datasets = pytest.importorskip("datasets", reason="datasets not installed (optional)")
    ds = datasets.Dataset.from_dict({"label": [i % 2 for i in range(40)], "x": list(range(40))})
    sub, r = hf_subset(ds, fraction=0.25)
    assert isinstance(sub, datasets.Dataset) and sub["x"] == r.indices.tolist()
