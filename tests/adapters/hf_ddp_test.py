"""The HF adapter under ``torchrun --nproc_per_node 2`` (gloo, CPU, ``use_cpu=True``).

Oracles: rank 1's tensors against rank 0's (``torch.equal``), the evaluation recomputed
here in one process from rank 0's weights (hand-computed metrics of test_hf), and the
energy the worker's fake RAPL counters were advanced by.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("torch_pruning")  # BMRS's finalize needs it; attach checks for it

from transformers import Trainer

from fq_plugins.adapters.hf import FQCallback

from ..conftest import ROOT, fake_rapl, torchrun
from .hf_ddp_worker import (
    DRAM_UJ,
    METHODS,
    N_EVAL,
    N_TRAIN,
    PACKAGE_UJ,
    STEPS,
    fq_recipe,
)
from .test_hf import TextDS, _oracle_metrics, bert, targs


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("hf_ddp")
    out = tmp / "out"
    out.mkdir()
    root = fake_rapl(tmp)
    torchrun(
        [str(ROOT / "tests" / "adapters" / "hf_ddp_worker.py"), str(out)],
        env={"FQ_POWERCAP_ROOT": str(root), "TOKENIZERS_PARALLELISM": "false"},
    )
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_ranks_hold_identical_method_state(ddp: Any, name: str) -> None:
    out, results = ddp
    assert [r[name]["world_size"] for r in results] == [2, 2]  # really one DDP run
    s0 = torch.load(out / f"{name}_rank0.pt")
    s1 = torch.load(out / f"{name}_rank1.pt")
    assert s0.keys() == s1.keys()
    plain = bert().state_dict()
    own = [k for k in s0 if k not in plain and not k.endswith(".original")]
    assert own, "the methods' parameters and buffers are in the state dict"
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    # and they were trained (not equal because nothing moved)
    start = bert(0).state_dict()
    moved = [k for k in s0 if k in start and not torch.equal(s0[k], start[k])]
    moved += [
        k.replace(".parametrizations.weight.original", ".weight")
        for k in s0
        if k.endswith(".original")
        and not torch.equal(s0[k], start[k.replace(".parametrizations.weight.original", ".weight")])
    ]
    assert moved


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_eval_metrics_equal_a_single_process_evaluation(ddp: Any, name: str, tmp_path: Any) -> None:
    out, results = ddp
    m0, m1 = (r[name]["metrics"] for r in results)
    figures = [k for k in m0 if not any(t in k for t in ("runtime", "per_second", "energy"))]
    assert {k: m0[k] for k in figures} == {k: m1[k] for k in figures}
    # one process: the same methods attached, rank 0's weights, every eval example once
    fq = FQCallback.from_recipe(fq_recipe(METHODS[name]))
    fq.trainer(Trainer, model=bert(0), args=targs(tmp_path), train_dataset=TextDS(N_TRAIN, 1))
    model = fq.model
    assert model is not None
    model.load_state_dict(torch.load(out / f"{name}_rank0.pt"))
    ev = TextDS(N_EVAL, 2)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ev.x).logits
    oracle = _oracle_metrics(logits, ev.y, ev.g)
    assert m0["eval_accuracy"] == pytest.approx(oracle["accuracy"], abs=1e-12)
    assert m0["eval_worst_group_accuracy"] == pytest.approx(oracle["worst"], abs=1e-12)
    assert m0["eval_accuracy_gap"] == pytest.approx(oracle["gap"], abs=1e-12)
    assert m0["eval_eodd"] == pytest.approx(oracle["eodd"], abs=1e-12)
    for k in (0, 1):
        assert m0[f"eval_group_accuracy_{k}"] == pytest.approx(oracle[f"group_{k}"], abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_energy_is_counted_once_per_device(ddp: Any, name: str) -> None:
    _, results = ddp
    # the node's counters moved STEPS times; each rank meters them, the combined reading
    # counts the node once (local rank 1 defers to local rank 0), identical on both ranks
    want = STEPS * (PACKAGE_UJ + DRAM_UJ) / 1e6
    for r in results:
        got = r[name]["metrics"]["eval_energy_train_rapl_joules_measured"]
        assert got == pytest.approx(want, rel=1e-9)
        details = r[name]["energy_details"]["train:rapl"]["details"]
        assert details["deferred_ranks"] == [1]
