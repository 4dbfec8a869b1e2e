"""CoDeQ: quantizer against a float64 NumPy reference, zeros, gradients, pressures, BOPs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fq_plugins.compressors.codeq import CoDeQCompressor, codeq_fake_quant
from fq_plugins.errors import ConfigError
from fq_plugins.session import CompressionSession
from fq_plugins.targets import TargetSpec, select_targets
from fq_plugins.testing import CompressorContract


class TestCoDeQFixedContract(CompressorContract):
    compressor_cls = CoDeQCompressor
    config = {"bits": 4}


class TestCoDeQMixedContract(CompressorContract):
    compressor_cls = CoDeQCompressor
    config = {"sparsity_pressure": 1e-3, "precision_pressure": 1e-3}


class TestCoDeQActivationContract(CompressorContract):
    compressor_cls = CoDeQCompressor
    config = {"bits": 8, "act_bits": 8, "pressure_as": "decay", "sparsity_pressure": 0.01}


def reference(w: np.ndarray, ld: float, lb: float | None, bits: int | None, quantile: float = 0.99):
    """METHODS.md's CoDeQ equations, float64, written out independently."""
    aw = np.abs(w).ravel()
    k = math.ceil(quantile * aw.size)
    a = np.sort(aw)[k - 1]
    b = bits if bits is not None else np.round(2 + 6 * abs(np.tanh(lb)))
    d = 2 * a * (1 - abs(np.tanh(ld)))
    q_max = 2 ** (b - 1) - 1
    s = (a - d / 2) / (q_max - 0.5)
    shift = d / 2 - s / 2
    wc = np.sign(w) * np.maximum(np.abs(w) - shift, 0)
    q = np.clip(np.round(wc / s), -q_max, q_max)
    return s * q + shift * np.sign(q), a, d


@pytest.mark.parametrize(
    "ld,lb,bits", [(3.0, 3.0, None), (0.6, 0.3, None), (0.4, 0.0, 4), (1.0, 0.0, 2)]
)
def test_matches_float64_reference(ld, lb, bits):
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = codeq_fake_quant(
        w,
        torch.tensor(ld, dtype=torch.float64),
        None if bits else torch.tensor(lb, dtype=torch.float64),
        fixed_bits=bits,
    )
    want, a, d = reference(w.numpy(), ld, lb, bits)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert bool((got[w.abs() < d / 2] == 0).all())  # exact zeros in the dead-zone
    assert float(got.abs().max()) == pytest.approx(a)  # the top level equals a


def test_gradients_reach_both_logits_from_the_task_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    comp = CoDeQCompressor()
    CompressionSession([comp]).attach(model)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with torch.no_grad():
        for _, _, q in comp._quants():
            q.dz_logit.fill_(0.5)  # an open dead-zone, away from tanh saturation
            q.bit_logit.fill_(0.3)
    nn.functional.cross_entropy(model(x), y).backward()
    qs = [q for _, _, q in comp._quants()]
    assert all(float(q.dz_logit.grad.abs()) > 0 for q in qs)
    assert any(float(q.bit_logit.grad.abs()) > 0 for q in qs)


def test_pressures_as_penalty_and_as_decay():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    comp = CoDeQCompressor(sparsity_pressure=0.1, precision_pressure=0.2)
    session = CompressionSession([comp])
    session.attach(model)
    assert session.penalty().item() == pytest.approx(2 * (0.1 * 9 + 0.2 * 9))  # two tensors, ℓ = 3
    model2 = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    comp2 = CoDeQCompressor(sparsity_pressure=0.1, precision_pressure=0.2, pressure_as="decay")
    s2 = CompressionSession([comp2])
    s2.attach(model2)
    assert s2.penalty().item() == 0.0
    groups = s2.param_groups(model2, lr=1e-3, weight_decay=0.0)
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.1, 0.2]


def test_sparsity_pressure_widens_the_dead_zone_in_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    comp = CoDeQCompressor(bits=4, init_logit=1.0, sparsity_pressure=0.5)
    session = CompressionSession([comp])
    session.attach(model)
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    start = session.cost(model).sparsity
    opt = torch.optim.Adam(session.param_groups(model, lr=1e-2))
    for _ in range(50):
        loss = nn.functional.cross_entropy(model(x), y) + session.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert session.cost(model).sparsity > start + 0.2


def test_activation_bits_enter_bops():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    s = CompressionSession([CoDeQCompressor(bits=4, act_bits=8)])
    s.attach(model)
    c = s.cost(model, torch.randn(1, 4))
    assert c.act_bits == 8
    density = [1 - lc.sparsity for lc in c.layers]
    want = sum(lc.macs * 4 * 8 * dn for lc, dn in zip(c.layers, density, strict=True))
    assert c.bops == pytest.approx(want)
    final = s.finalize(model)
    assert s.cost(final).act_bits == 8


def test_normalisation_layers_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    comp = CoDeQCompressor()
    with pytest.raises(ConfigError, match="normalisation"):
        comp.attach(model, [("1", model[1])])
    assert select_targets(model, TargetSpec()) == [("0", model[0])]
