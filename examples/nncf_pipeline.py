"""An NNCF pipeline with one added call: fq-plugins BAQ (learned mixed bits) + fairness gap.

    python examples/nncf_pipeline.py        # ~1 min on 2 CPU cores (first run compiles NNCF's extension)

nncf.quantize (their pipeline) → fq_nncf.apply → their training loop with the engine's
objective → fq_nncf.finalize (NNCF integer quantizers, learned bits) → OpenVINO with
u2/u4/i8 weight constants (if `pip install openvino`).
"""

from __future__ import annotations

import os

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")

import nncf
import torch
from torch import nn

from fq_plugins.adapters import nncf as fq_nncf

RECIPE = {
    "compress": [
        {
            "method": "fairquant",
            "mode": "baq",
            "budget": {"levels": {2: 0.2, 4: 0.4, 8: 0.4}},
            "importance": {"calib_batches": 4},
        }
    ],
    "fairness": {"regularizer": {"kind": "gap", "weight": 0.5}},
}


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(  # a top-level Sequential: wrap it for NNCF
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    model = fq_nncf.wrap_sequential(model).eval()
    data = [
        (torch.randn(32, 3, 16, 16), torch.randint(0, 4, (32,)), torch.randint(0, 2, (32,)))
        for _ in range(8)
    ]
    adv = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE)
    q = nncf.quantize(model, nncf.Dataset([x for x, _, _ in data]), advanced_parameters=adv)
    q = fq_nncf.apply(q, RECIPE, calib=data)  # the one added call
    opt = torch.optim.AdamW(fq_nncf.session_of(q).param_groups(q, lr=1e-3))
    objective = fq_nncf.objective(q)
    q.train()
    for epoch in range(2):
        for x, y, g in data:
            terms = objective(q(x), y, g)
            opt.zero_grad()
            terms.total.backward()
            opt.step()
        print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in terms.floats().items()))
    x = data[0][0]
    q = fq_nncf.finalize(q, probe=lambda m: m(x))
    print(f"finalized: max |finalized - fake-quantized| = {fq_nncf.pipeline_of(q).max_diff:.2e}")
    try:
        import openvino  # noqa: F401
    except ImportError:
        print("pip install openvino to export")
        return
    _ov_model, report = fq_nncf.to_openvino(q, x)
    print("OpenVINO weight constants:", report.layers, f"max |ov - torch| = {report.max_diff:.2e}")


if __name__ == "__main__":
    main()
