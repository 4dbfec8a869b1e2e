"""Uniform k-bit: contract, budget selection, errors, state round trip."""

from __future__ import annotations

import pytest
import torch

from fq_plugins.compressors.uniform import UniformCompressor, UniformConfig
from fq_plugins.errors import ConfigError
from fq_plugins.models import SmallCNN
from fq_plugins.session import CompressionSession
from fq_plugins.targets import TargetSpec, select_targets
from fq_plugins.testing import CompressorContract


class TestUniformContract(CompressorContract):
    compressor_cls = UniformCompressor
    config = {"bits": 3}


class TestUniformTensorContract(CompressorContract):
    compressor_cls = UniformCompressor
    config = {"bits": 2, "granularity": "tensor"}


def _weights(model):
    return {
        n: m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    }


def test_budget_picks_widest_bits_that_fit():
    model = SmallCNN(3, 5)
    w = _weights(model)
    n_all, n_head = sum(w.values()), w["head"]
    cfg = UniformConfig(
        method="uniform", budget={"avg_bits": 6.5}, targets=TargetSpec(ignore=["head"])
    )
    comp = UniformCompressor(cfg)
    comp.attach(model, select_targets(model, cfg.targets))

    def avg(k):
        return (k * (n_all - n_head) + 32 * n_head) / n_all

    k = comp.chosen_bits
    assert avg(k) <= 6.5 < avg(k + 1)
    cost = CompressionSession([comp]).cost(model)
    assert cost.avg_bits_param == pytest.approx(avg(k))


def test_infeasible_budget_gives_feasible_range():
    model = SmallCNN(3, 5)
    session = CompressionSession.from_configs(
        [{"method": "uniform", "budget": {"avg_bits": 1.0}, "targets": {"ignore": ["head"]}}]
    )
    with pytest.raises(ConfigError) as ei:
        session.attach(model)
    msg = str(ei.value)
    assert (
        msg.startswith("compress[0].budget.avg_bits:")
        and "cannot be met" in msg
        and "(1 bit)" in msg
    )


def test_double_attach_same_module_is_an_error():
    model = SmallCNN(3, 5)
    session = CompressionSession.from_configs(
        [{"method": "uniform"}, {"method": "uniform", "bits": 4}]
    )
    with pytest.raises(
        ConfigError,
        match=r"compress\[1\].targets: module .features.0. is already quantized by uniform",
    ):
        session.attach(model)


def test_quantized_weights_have_at_most_2b_minus_1_levels_per_channel():
    model = SmallCNN(3, 5)
    comp = UniformCompressor(bits=3)
    comp.attach(model, select_targets(model))
    for _, m in comp.attached:
        for row in m.weight.detach().reshape(m.weight.shape[0], -1):
            assert torch.unique(row).numel() <= 7


def test_state_in_state_dict():
    model = SmallCNN(3, 5)
    UniformCompressor(bits=5).attach(model, select_targets(model))
    sd = model.state_dict()
    assert any(k.endswith("parametrizations.weight.0.bits") for k in sd)
    assert float(sd["head.parametrizations.weight.0.bits"][0]) == 5
