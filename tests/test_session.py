"""CompressionSession: order, penalties, param groups, cost, finalize."""

from __future__ import annotations

import pytest
import torch
from pydantic import Field

from fq_plugins.errors import ConfigError
from fq_plugins.models import SmallCNN
from fq_plugins.protocols import Compressor, MethodConfig
from fq_plugins.session import CompressionSession
from fq_plugins.targets import TargetSpec, select_targets


class PenaltyConfig(MethodConfig):
    value: float = Field(1.0)


class ScalePenalty(Compressor):
    """A test method owning one parameter, with its own lr group and a penalty."""

    name = "scale_penalty"
    description = "test"
    Config = PenaltyConfig

    def attach(self, model, targets, context=None):
        model.register_parameter("fq_scale", torch.nn.Parameter(torch.tensor(2.0)))
        self.param = model.fq_scale

    def penalty(self):
        return self.config.value * self.param**2

    def param_groups(self):
        return [{"params": [self.param], "lr": 0.5}]

    def finalize(self, model):
        return model


def test_penalties_sum_and_param_groups():
    model = SmallCNN(3, 4)
    a, b = ScalePenalty(value=1.0), ScalePenalty(value=3.0)
    s = CompressionSession([a])
    s.attach(model)
    s2 = CompressionSession([a, b])  # two methods sharing one parameter: group kept once
    b.param = a.param
    assert s2.penalty().item() == pytest.approx(4.0 + 12.0)
    groups = s.param_groups(model, lr=1e-3, weight_decay=0.1)
    assert groups[1]["lr"] == 0.5 and groups[1]["params"] == [model.fq_scale]
    assert all(p is not model.fq_scale for p in groups[0]["params"])
    n_all = sum(1 for _ in model.parameters())
    assert len(groups[0]["params"]) + 1 == n_all and groups[0]["weight_decay"] == 0.1


def test_targets_matching_nothing_is_an_error_naming_the_key():
    s = CompressionSession.from_configs([{"method": "uniform", "targets": {"include": ["nope.*"]}}])
    with pytest.raises(ConfigError) as ei:
        s.attach(SmallCNN(3, 4))
    msg = str(ei.value)
    assert msg.startswith("compress[0].targets:") and "nope.*" in msg and "features.0" in msg


def test_select_targets_types_include_ignore():
    model = SmallCNN(3, 4)
    assert [n for n, _ in select_targets(model, TargetSpec(types=["linear"]))] == ["head"]
    names = [n for n, _ in select_targets(model, TargetSpec(ignore=["head", "features.0"]))]
    assert names == ["features.3", "features.6"]


def test_cost_and_finalize_keep_outputs_and_bits():
    torch.manual_seed(0)
    model = SmallCNN(3, 4)
    s = CompressionSession.from_configs(
        [{"method": "uniform", "bits": 4, "targets": {"ignore": ["head"]}}]
    )
    s.attach(model)
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    fake = model(x)
    before = s.cost(model, x[:1])
    final = s.finalize(model)
    assert torch.equal(final(x), fake)
    after = s.cost(final, x[:1])
    assert after.avg_bits_param == before.avg_bits_param < 32
    assert after.packed_bytes == before.packed_bytes
    assert after.macs == before.macs > 0
