"""fq-plugins methods through torchao's ``quantize_``, trained, converted, saved and loaded.

A small CNN on synthetic (x, y, group) batches, CPU, about 10 s::

    python examples/torchao_quantize.py

1. ``quantize_(model, BAQConfig(avg_bits=4, calib=...))``: FairQuant's learnable bits on
   every Conv2d and Linear, attached once with the importance of all layers;
2. a few steps of the user's loop with the engine's ``Objective`` (task + fairness gap);
3. ``convert(model)``: torchao ``IntxUnpackedToInt8Tensor`` weights built from the learned
   codes and scales, bit-exact with the fake-quantized model;
4. save as safetensors and load into a freshly built model: identical outputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn
from torchao.quantization import FqnToConfig, quantize_

from fq_plugins.adapters.torchao import (
    BAQConfig,
    CoDeQConfig,
    UniformConfig,
    convert,
    load_converted,
    save_converted,
    session_of,
)
from fq_plugins.engine import Objective
from fq_plugins.fairness.regularizers import RegularizerSpec


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    )


def batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(32, 3, 16, 16, generator=g)
        y = torch.randint(0, 4, (32,), generator=g)
        group = torch.randint(0, 2, (32,), generator=g)
        out.append((x, y, group))
    return out


def main() -> None:
    train, calib = batches(8, 0), batches(2, 1)

    # 1. one config for the whole model: the budget covers every layer at once
    model = make_model()
    quantize_(model, BAQConfig(avg_bits=4, calib=calib))

    # 2. the user's loop with the engine's objective
    session = session_of(model)
    objective = Objective(regularizer=RegularizerSpec(kind="gap", weight=0.5), session=session)
    opt = torch.optim.AdamW(session.param_groups(model, lr=1e-3))
    for step, (x, y, group) in enumerate(train):
        terms = objective(model(x), y, group)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        session.on_step(step)
    session.on_epoch_end(0)  # BAQ projects its learned bits to the budget
    print(
        f"task loss {terms.floats()['task']:.3f}, average bits {float(session.methods[0].avg_bits()):.2f}"
    )

    # 3. convert: torchao tensors with the learned codes and scales, exact
    x_test = batches(1, 2)[0][0]
    model.eval()
    with torch.no_grad():
        fake = model(x_test)
    report = convert(model, "size", probe=lambda m: m(x_test))
    print("layers:", report.layers)
    print("max |converted - fake-quantized| =", report.max_diff)
    with torch.no_grad():
        assert torch.equal(model(x_test), fake)

    # 4. save and load into a freshly built (differently initialised) model
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.safetensors")
        save_converted(model, path)
        fresh = load_converted(make_model(seed=1), path).eval()
        with torch.no_grad():
            assert torch.equal(fresh(x_test), fake)
    print("saved and loaded: outputs identical")

    # per-layer methods with FqnToConfig (filter_fn=None is required by torchao)
    other = make_model()
    quantize_(
        other,
        FqnToConfig(
            {"0": CoDeQConfig(bits=4), "3": UniformConfig(bits=3), "7": UniformConfig(bits=8)}
        ),
        filter_fn=None,
    )
    print("FqnToConfig:", convert(other).layers)


if __name__ == "__main__":
    main()
