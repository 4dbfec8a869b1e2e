"""Run by tests/adapters/hf_ddp_test.py as ``torchrun --standalone --nproc_per_node 2``.

Each rank trains a tiny BERT with the HF adapter (``use_cpu=True``: gloo DDP) for FairQuant
BAQ and then BMRS, evaluates, and writes its state dict and metrics to ``<out>``. Energy is
metered with RAPL on a fake powercap tree (``$FQ_POWERCAP_ROOT``) that local rank 0
advances by a fixed amount after every optimizer step, so the right total is known.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

PACKAGE_UJ, DRAM_UJ = 1_000_000, 250_000  # added to the fake counters per optimizer step
STEPS = 6  # 48 examples, 8 per rank and step, 2 ranks: 3 steps an epoch, 2 epochs
N_TRAIN, N_EVAL = 48, 61  # an odd eval set: the last batch is padded on one rank

METHODS: dict[str, dict[str, Any]] = {
    "baq": {
        "method": "fairquant",
        "learnable_bits": True,
        "budget": {"avg_bits": 4.0},
        "importance": {"calib_batches": 2},
        "bit_lr": 3e-2,
    },
    "bmrs": {"method": "bmrs", "gate_lr": 0.5, "prior": "uniform"},
}


def fq_recipe(method: dict[str, Any]) -> dict[str, Any]:
    return {
        "compress": [method],
        "fairness": {
            "regularizer": {"kind": "gap", "weight": 0.5},
            "metrics": ["worst_group_accuracy", "accuracy_gap", "eodd"],
        },
        "energy": {"meters": [{"name": "rapl", "poll_seconds": None}]},
    }


def main(out_dir: str) -> None:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from fq_plugins.adapters.hf import FQCallback
    from tests.adapters.test_hf import TextDS, bert

    root = Path(os.environ["FQ_POWERCAP_ROOT"])
    rank = int(os.environ["RANK"])

    class Advance(TrainerCallback):  # the node's counters move once per step, not per rank
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if int(os.environ["LOCAL_RANK"]) == 0:
                for zone, add in (("intel-rapl:0", PACKAGE_UJ), ("intel-rapl:0:0", DRAM_UJ)):
                    f = root / zone / "energy_uj"
                    f.write_text(str(int(f.read_text()) + add))
            return control

    result: dict[str, Any] = {}
    for name, method in METHODS.items():
        fq = FQCallback.from_recipe(fq_recipe(method))
        args = TrainingArguments(
            output_dir=str(Path(out_dir) / f"run-{name}"),
            max_steps=STEPS,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=16,
            learning_rate=1e-2,
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
            save_strategy="no",
            label_names=["labels", "group"],
            seed=0,
            data_seed=0,
        )
        trainer = fq.trainer(
            Trainer,
            model=bert(0),
            args=args,
            train_dataset=TextDS(N_TRAIN, 1),
            eval_dataset=TextDS(N_EVAL, 2),
            callbacks=[Advance()],
        )
        trainer.train()
        metrics = trainer.evaluate()
        sd = {k: v.detach().cpu().clone() for k, v in fq.model.state_dict().items()}
        torch.save(sd, Path(out_dir) / f"{name}_rank{rank}.pt")
        result[name] = {
            "world_size": trainer.args.world_size,
            "metrics": metrics,
            "energy_details": {k: r.to_dict() for k, r in fq.energy.items()},
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
