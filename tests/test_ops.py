"""Shared quantization ops against a float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fq_plugins.compressors.ops import round_ste, symmetric_fake_quant, symmetric_quant_codes


def reference(w: np.ndarray, bits: np.ndarray) -> np.ndarray:
    out = np.empty_like(w, dtype=np.float64)
    for c in range(w.shape[0]):
        wc = w[c].astype(np.float64)
        q = 2.0 ** (bits[c] - 1) - 1
        if q == 0:
            out[c] = np.sign(wc) * np.abs(wc).mean()
        else:
            s = np.abs(wc).max() / q
            out[c] = np.clip(np.round(wc / s), -q, q) * s
    return out


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 3, 3)])
def test_per_channel_matches_float64_reference(shape):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=gen, dtype=torch.float64)
    bits = torch.tensor([1, 2, 3, 4, 8, 16][: shape[0]], dtype=torch.float64)
    got = symmetric_fake_quant(w, bits)
    np.testing.assert_allclose(
        got.numpy(), reference(w.numpy(), bits.numpy()), rtol=1e-12, atol=1e-15
    )


def test_codes_times_scale_equal_fake_quant_exactly():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    bits = torch.full((8,), 3.0)
    q, s = symmetric_quant_codes(w, bits)
    assert torch.equal(q * s, symmetric_fake_quant(w, bits))
    assert q.abs().max() <= 3 and torch.equal(q, q.round())


def test_levels_count():
    w = torch.linspace(-1, 1, 1001).reshape(1, -1)
    for b in (2, 3, 4, 5):
        distinct = torch.unique(symmetric_fake_quant(w, torch.tensor([float(b)]))).numel()
        assert distinct == 2**b - 1


def test_ste_gradient_is_identity():
    w = torch.randn(5, 7, requires_grad=True)
    g = torch.randn(5, 7)
    (symmetric_fake_quant(w, torch.full((5,), 3.0)) * g).sum().backward()
    assert torch.equal(w.grad, g)
    x = torch.randn(10, requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(10))
    assert torch.equal(round_ste(torch.tensor([0.4, 1.6, -2.5])), torch.tensor([0.0, 2.0, -2.0]))


def test_binary_gradient_identity_and_zero_channel_safe():
    w = torch.zeros(2, 4)
    w[1] = torch.tensor([1.0, -2.0, 3.0, -4.0])
    w.requires_grad_(True)
    out = symmetric_fake_quant(w, torch.tensor([1.0, 1.0]))
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(4))
    assert torch.equal(out[1], torch.tensor([2.5, -2.5, 2.5, -2.5]))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones(2, 4))


def test_per_tensor():
    w = torch.tensor([[1.0, 0.5], [0.1, -0.2]])
    out = symmetric_fake_quant(w, torch.tensor(2.0), per_channel=False)  # Q=1, s=1
    assert torch.equal(out, torch.tensor([[1.0, 0.0], [0.0, -0.0]]))
