"""Bits, sparsity, packed size, MACs and BOPs against a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fq_plugins.accounting import count_macs, model_cost


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)  # 54 weights, 18 per channel
        self.fc = nn.Linear(75, 4)  # 300 weights + 4 bias

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.fixture
def net():
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        m.conv.weight.view(-1)[:9] = 0.0  # 9 exact zeros
    return m


def test_macs_hand_computed(net):
    macs = count_macs(net, torch.randn(7, 2, 5, 5))  # per example, whatever the batch
    assert macs == {"conv": 75 * 18, "fc": 300}


def test_cost_hand_computed(net):
    bits = {"conv": torch.tensor([2.0, 4.0, 8.0])}
    c = model_cost(net, bits, example_input=torch.randn(1, 2, 5, 5))
    assert c.weight_params == 354
    assert c.avg_bits_param == pytest.approx((18 * 14 + 300 * 32) / 354)
    assert c.avg_bits_channel == pytest.approx((14 + 4 * 32) / 7)
    assert c.sparsity == pytest.approx(9 / 354)
    # codes: 252 bits -> 32 bytes (rounded up); 3 fp32 scales; fc weight+bias in fp32
    assert c.packed_bytes == 32 + 12 + 1200 + 16
    assert c.fp32_bytes == 54 * 4 + 1200 + 16
    conv_bops = 1350 * (252 / 54) * 32 * (1 - 9 / 54)
    assert c.bops == pytest.approx(conv_bops + 300 * 32 * 32)
    assert c.bops_fp32 == pytest.approx(1650 * 32 * 32)
    assert c.effective_gops == pytest.approx((2 * 1350 * (252 / 54) / 32 + 2 * 300) / 1e9)
    assert c.macs == 1650
    layer = {lc.name: lc for lc in c.layers}
    assert (layer["conv"].bits_channel_min, layer["conv"].bits_channel_max) == (2.0, 8.0)
    assert not layer["fc"].quantized


def test_activation_bits_change_bops_only(net):
    a = model_cost(net, {"conv": torch.tensor(4.0)}, example_input=torch.randn(1, 2, 5, 5))
    b = model_cost(
        net, {"conv": torch.tensor(4.0)}, example_input=torch.randn(1, 2, 5, 5), act_bits=8
    )
    assert b.bops == pytest.approx(a.bops / 4) and a.packed_bytes == b.packed_bytes


def test_fp32_model_counts_32_bits_and_ratio_one(net):
    c = model_cost(net)
    assert c.avg_bits_param == 32 and c.packed_bytes == c.fp32_bytes and c.compression_ratio == 1
    assert c.macs == 0 and math.isnan(c.bops_rel)


def test_wrong_bits_length_is_an_error(net):
    with pytest.raises(ValueError, match="3 output channels"):
        model_cost(net, {"conv": torch.tensor([4.0, 4.0])})


def test_parametrized_model_is_counted_once(net):
    from fq_plugins.compressors.uniform import UniformCompressor
    from fq_plugins.targets import select_targets

    comp = UniformCompressor(bits=4)
    before = model_cost(net)
    comp.attach(net, select_targets(net))
    after = model_cost(net, {n: s.bits for n, s in comp.stats().layers.items()})
    assert after.fp32_bytes == before.fp32_bytes  # parametrization internals not double counted
    assert after.avg_bits_param == 4
