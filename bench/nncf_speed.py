"""NNCF adapter: training-step time vs NNCF QAT, OpenVINO inference latency and size, accuracy.

All in one process, CPU, timm resnet18 (pretrained=False), 32 px, HAM10000 32 px subset:

* **train** — one training step (forward, loss, backward, AdamW) at batch 64: NNCF's own QAT
  (``nncf.quantize`` model, cross-entropy) vs BAQ through the adapter on the same NNCF
  model (``fq_nncf.objective``: task + fairness gap + bitrate penalty). Interleaved,
  median of ``--steps`` after 2 warm-up steps; ratio = ours / NNCF.
* **infer** — latency (median of ``--calls`` after warm-up, round-robin) at batch 1 and 64 of
  torch FP32 eager, OpenVINO FP32 (``ov.convert_model`` of the float model), and the
  OpenVINO models :func:`fq_plugins.adapters.nncf.to_openvino` exports from a finalized
  FairQuant BAQ (mixed 2/4/8), a CoDeQ model (learned bits) and a CoDeQ model at 4 bits,
  each compiled with OpenVINO's CPU defaults (bf16 where the CPU has AVX512-BF16/AMX,
  dynamic activation quantization) and in float32 (``_f32``: ``EXECUTION_MODE_HINT:
  ACCURACY``); serialized size (xml + bin,
  ``compress_to_fp16=False``) over the FP32 torch ``state_dict`` size.
* **accuracy** — accuracy and worst-group accuracy (group = age ≥ 60) of each finalized
  torch model and of its OpenVINO export on the test split.

    OMP_NUM_THREADS=1 python bench/nncf_speed.py [--epochs 3] [--ft-steps 60] [--threads 1]

Writes bench/results/nncf_speed.json. Latency/step times need a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ham import DEFAULT_DATA, ham_split, train_dense

RESULTS = Path(__file__).resolve().parent / "results" / "nncf_speed.json"

BAQ = {
    "compress": [
        {
            "method": "fairquant",
            "mode": "baq",
            "budget": {"levels": {2: 0.2, 4: 0.4, 8: 0.4}},
            "importance": {"calib_batches": 4},
            "targets": {"ignore": ["conv1", "fc"]},
        }
    ],
    "fairness": {"regularizer": {"kind": "gap", "weight": 0.5}},
}
CODEQ = {"compress": [{"method": "codeq", "targets": {"ignore": ["conv1", "fc"]}}]}
CODEQ4 = {"compress": [{"method": "codeq", "bits": 4, "targets": {"ignore": ["conv1", "fc"]}}]}
F32 = {"EXECUTION_MODE_HINT": "ACCURACY"}  # OpenVINO CPU in float32 (default may be bf16)


def batches(ds: Any, bs: int, n: int, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        i = torch.randint(0, ds.x.shape[0], (bs,), generator=g)
        out.append((ds.x[i], ds.y[i], ds.group[i]))
    return out


def group_acc(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    acc = float((pred == y).mean())
    worst = min(float((pred[g == k] == y[g == k]).mean()) for k in np.unique(g))
    return 100 * acc, 100 * worst


def torch_pred(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()


def ov_pred(compiled: Any, x: torch.Tensor) -> np.ndarray:
    return np.concatenate(
        [compiled(x[i : i + 256].numpy())[0].argmax(1) for i in range(0, len(x), 256)]
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(DEFAULT_DATA / "ham10000_sub_32.npz"))
    ap.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    ap.add_argument("--ft-steps", type=int, default=60, help="fine-tuning steps per variant")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per variant")
    ap.add_argument("--calls", type=int, default=20, help="timed inference calls per variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    import nncf
    import openvino as ov

    from fq_plugins.adapters import nncf as fq_nncf

    torch.set_num_threads(args.threads)
    train, test = ham_split(args.data, 0)
    dense = train_dense(train, 0, args.epochs, print).eval()
    calib_x = [b[0] for b in batches(train, 64, 4, seed=1)]
    adv = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE)
    qnncf = nncf.quantize(copy.deepcopy(dense), nncf.Dataset(calib_x), advanced_parameters=adv)
    calib = batches(train, 64, 4, seed=2)
    result: dict[str, Any] = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "nncf": nncf.__version__,
        "openvino": ov.__version__,
        "args": vars(args),
    }

    # --- training step -------------------------------------------------------------------
    qat = copy.deepcopy(qnncf).train()
    ours = fq_nncf.apply(copy.deepcopy(qnncf), BAQ, calib=calib).train()
    opt_qat = torch.optim.AdamW(qat.parameters(), lr=1e-4)
    opt_ours = torch.optim.AdamW(fq_nncf.session_of(ours).param_groups(ours, lr=1e-4))
    obj = fq_nncf.objective(ours, n_groups=2)
    step_b = batches(train, 64, args.steps + 2, seed=3)

    def step_qat(b: tuple[torch.Tensor, ...]) -> None:
        loss = F.cross_entropy(qat(b[0]), b[1])
        opt_qat.zero_grad()
        loss.backward()
        opt_qat.step()

    def step_ours(b: tuple[torch.Tensor, ...]) -> None:
        loss = obj(ours(b[0]), b[1], b[2]).total
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()
        fq_nncf.session_of(ours).on_step(0)

    times: dict[str, list[float]] = {"nncf_qat": [], "ours_baq": []}
    for i, b in enumerate(step_b):
        for name, fn in (("nncf_qat", step_qat), ("ours_baq", step_ours)):
            t = time.perf_counter()
            fn(b)
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    result["train_step_s"] = med
    result["train_ratio_ours_over_nncf"] = med["ours_baq"] / med["nncf_qat"]
    print(
        f"train step: NNCF QAT {med['nncf_qat']:.3f} s, ours BAQ {med['ours_baq']:.3f} s, "
        f"ratio {result['train_ratio_ours_over_nncf']:.2f}"
    )

    # --- fine-tune, finalize, export ------------------------------------------------------
    x1 = test.x[:1]
    x64 = test.x[:64]
    variants: dict[str, Any] = {}
    acc: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp())
    for name, rec in (("fairquant_baq", BAQ), ("codeq", CODEQ), ("codeq_4bit", CODEQ4)):
        q = fq_nncf.apply(copy.deepcopy(qnncf), rec, calib=calib).train()
        opt = torch.optim.AdamW(fq_nncf.session_of(q).param_groups(q, lr=1e-4))
        o = fq_nncf.objective(q, n_groups=2)
        for b in batches(train, 64, args.ft_steps, seed=4):
            loss = o(q(b[0]), b[1], b[2]).total
            opt.zero_grad()
            loss.backward()
            opt.step()
            fq_nncf.session_of(q).on_step(0)
        f = fq_nncf.finalize(q, probe=lambda m: m(x64))
        om, rep = fq_nncf.to_openvino(f, x64)
        reports[name] = {
            "layers": rep.layers,
            "bits": rep.bits,
            "ov_max_diff": rep.max_diff,
            "finalize_max_diff": fq_nncf.pipeline_of(f).max_diff,
        }
        path = tmp / f"{name}.xml"
        ov.save_model(om, str(path), compress_to_fp16=False)
        reports[name]["ir_bytes"] = path.stat().st_size + path.with_suffix(".bin").stat().st_size
        compiled = ov.compile_model(om, "CPU", {"INFERENCE_NUM_THREADS": args.threads})
        compiled32 = ov.compile_model(om, "CPU", {"INFERENCE_NUM_THREADS": args.threads, **F32})
        y, g = test.y.numpy(), test.group.numpy()
        acc[name] = {
            "torch": group_acc(torch_pred(f, test.x), y, g),
            "openvino": group_acc(ov_pred(compiled, test.x), y, g),
            "openvino_f32": group_acc(ov_pred(compiled32, test.x), y, g),
        }
        variants[f"ov_{name}"] = compiled
        variants[f"ov_{name}_f32"] = compiled32
    fp_om = ov.convert_model(dense, example_input=x64)
    fp_path = tmp / "fp32.xml"
    ov.save_model(fp_om, str(fp_path), compress_to_fp16=False)
    fp_ir = fp_path.stat().st_size + fp_path.with_suffix(".bin").stat().st_size
    torch_bytes = sum(t.numel() * t.element_size() for t in dense.state_dict().values())
    variants["ov_fp32"] = ov.compile_model(fp_om, "CPU", {"INFERENCE_NUM_THREADS": args.threads})
    variants["ov_fp32_f32"] = ov.compile_model(
        fp_om, "CPU", {"INFERENCE_NUM_THREADS": args.threads, **F32}
    )
    y, g = test.y.numpy(), test.group.numpy()
    acc["fp32"] = {
        "torch": group_acc(torch_pred(dense, test.x), y, g),
        "openvino": group_acc(ov_pred(variants["ov_fp32"], test.x), y, g),
        "openvino_f32": group_acc(ov_pred(variants["ov_fp32_f32"], test.x), y, g),
    }
    result["openvino_cpu_default_precision"] = str(
        ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    )

    lat: dict[str, dict[str, float]] = {}
    for bname, xb in (("b1", x1), ("b64", x64)):
        fns = {"torch_fp32": lambda xb=xb: dense(xb)}
        for k, c in variants.items():
            fns[k] = lambda c=c, xb=xb: c(xb.numpy())
        ts: dict[str, list[float]] = {k: [] for k in fns}
        with torch.inference_mode():
            for _ in range(3):
                for fn in fns.values():
                    fn()
            for _ in range(args.calls):
                for k, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    ts[k].append(time.perf_counter() - t)
        lat[bname] = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
    result["latency_ms"] = lat
    result["speedup_over_torch_fp32"] = {
        b: {k: lat[b]["torch_fp32"] / v for k, v in lat[b].items()} for b in lat
    }
    result["size_bytes"] = {
        "torch_fp32_state_dict": torch_bytes,
        "ov_fp32_ir": fp_ir,
        **{f"ov_{k}_ir": v["ir_bytes"] for k, v in reports.items()},
    }
    result["size_over_torch_fp32"] = {k: v / torch_bytes for k, v in result["size_bytes"].items()}
    result["accuracy"] = acc
    result["exports"] = reports
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "latency_ms",
                    "speedup_over_torch_fp32",
                    "size_over_torch_fp32",
                    "accuracy",
                )
            },
            indent=1,
        )
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".json.part")
    part.write_text(json.dumps(result, indent=1, default=str))
    part.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
