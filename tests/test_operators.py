"""Data terms of BlindHarmony: cosine similarity, Sobel edges, edge masks and gradients."""

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate

from bids_app.harmonize.operators import (
    cosine_similarity,
    cosine_similarity_grad,
    edge_mask,
    edge_penalty,
    edge_penalty_grad,
    sobel,
    sobel_adjoint,
)

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cosine_similarity_values():
    x = _rand(3, 1, 8, 8)
    assert torch.allclose(cosine_similarity(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(cosine_similarity(x, 5.0 * x), torch.ones(3, dtype=torch.float64))
    a = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    b = a.clone()
    a[0, 0, 0, 0], b[0, 0, 1, 1] = 1.0, 1.0
    assert cosine_similarity(a, b).item() == pytest.approx(0.0)
    flat_x, flat_s = x[0].flatten(), x[1].flatten()
    expected = float(flat_x @ flat_s / (flat_x.norm() * flat_s.norm()))
    # rel=1e-7: the eps in the denominator
    assert cosine_similarity(x[:1], x[1:2]).item() == pytest.approx(expected, rel=1e-7)


def test_cosine_similarity_grad_matches_autograd():
    x = _rand(4, 1, 8, 12, seed=1).requires_grad_(True)
    xs = _rand(4, 1, 8, 12, seed=2)
    cosine_similarity(x, xs).sum().backward()
    grad = cosine_similarity_grad(x.detach(), xs)
    assert grad.shape == x.shape
    torch.testing.assert_close(grad, x.grad, rtol=1e-6, atol=1e-9)
    # the gradient is orthogonal to x (scale invariance of the cosine)
    dots = (grad.flatten(1) * x.detach().flatten(1)).sum(1)
    assert dots.abs().max().item() < 1e-7  # up to the eps of the denominator


def test_sobel_matches_scipy_correlation_with_zero_padding():
    x = _rand(2, 1, 9, 7, seed=3)
    gx, gy = sobel(x)
    for b in range(2):
        img = x[b, 0].numpy()
        np.testing.assert_allclose(gx[b, 0].numpy(), correlate(img, SOBEL_X, mode="constant"),
                                   atol=1e-12)
        np.testing.assert_allclose(gy[b, 0].numpy(), correlate(img, SOBEL_X.T, mode="constant"),
                                   atol=1e-12)


def test_sobel_of_a_ramp():
    ramp = torch.arange(10, dtype=torch.float64).repeat(8, 1).view(1, 1, 8, 10)  # along W
    gx, gy = sobel(ramp)
    assert torch.all(gx[..., 1:-1, 1:-1] == 8.0)
    assert torch.all(gy[..., 1:-1, 1:-1] == 0.0)


def test_sobel_adjoint_is_adjoint():
    x = _rand(3, 1, 10, 6, seed=4)
    gx, gy = _rand(3, 1, 10, 6, seed=5), _rand(3, 1, 10, 6, seed=6)
    sx, sy = sobel(x)
    lhs = (sx * gx).sum() + (sy * gy).sum()
    rhs = (x * sobel_adjoint(gx, gy)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)
    # explicit matrix check on a small grid
    n = 5 * 4
    basis = torch.eye(n, dtype=torch.float64).view(n, 1, 5, 4)
    sx, sy = sobel(basis)
    forward = torch.cat([sx.view(n, n), sy.view(n, n)], dim=1)  # rows: images of basis
    out = sobel_adjoint(torch.eye(n, dtype=torch.float64).view(n, 1, 5, 4),
                        torch.zeros(n, 1, 5, 4, dtype=torch.float64))
    torch.testing.assert_close(out.view(n, n), forward[:, :n].t())


def test_edge_penalty_grad_matches_autograd():
    x = _rand(3, 1, 12, 10, seed=7)
    gen = torch.Generator().manual_seed(8)
    masks = tuple((torch.rand(3, 1, 12, 10, generator=gen) > 0.4).double() for _ in range(2))
    gx, gy = sobel(x)
    assert gx.abs().min() > 1e-9 and gy.abs().min() > 1e-9  # away from kinks of |.|
    xg = x.clone().requires_grad_(True)
    edge_penalty(xg, masks).sum().backward()
    torch.testing.assert_close(edge_penalty_grad(x, masks), xg.grad)


def test_edge_penalty_values():
    x = _rand(2, 1, 6, 6, seed=9)
    ones = (torch.ones_like(x), torch.ones_like(x))
    gx, gy = sobel(x)
    expected = gx.abs().flatten(1).sum(1) + gy.abs().flatten(1).sum(1)
    torch.testing.assert_close(edge_penalty(x, ones), expected)
    zeros = (torch.zeros_like(x), torch.zeros_like(x))
    assert torch.all(edge_penalty(x, zeros) == 0)
    assert torch.all(edge_penalty_grad(x, zeros) == 0)


def test_edge_mask_selects_low_gradient_foreground():
    rng = np.random.default_rng(10)
    img = rng.random((2, 1, 24, 20)) * 0.03  # noisy background, as in MRI
    img[:, :, 4:20, 3:17] = rng.random((2, 1, 16, 14)) * 0.5 + 0.3  # head
    img[1, 0, 8:12, 6:10] = 0.02  # dark hole below the intensity threshold
    xs = torch.from_numpy(img)
    mx, my = edge_mask(xs)
    assert mx.dtype == xs.dtype and mx.shape == xs.shape
    for b in range(2):
        slice_ = img[b, 0]
        for mask, kernel in ((mx, SOBEL_X), (my, SOBEL_X.T)):
            g = np.abs(correlate(slice_, kernel, mode="constant"))
            threshold = np.quantile(g, 0.30)
            expected = (g <= threshold) & (slice_ > 0.05)
            np.testing.assert_array_equal(mask[b, 0].numpy().astype(bool), expected)
            assert expected.sum() > 0
    # background and the dark hole are never kept; the percentile is per slice
    assert mx[:, :, :4].sum() == 0 and my[:, :, :4].sum() == 0
    assert mx[1, 0, 8:12, 6:10].sum() == 0 and my[1, 0, 8:12, 6:10].sum() == 0


def test_edge_mask_percentile_and_intensity_arguments():
    xs = _rand(1, 1, 16, 16, seed=11)
    few = edge_mask(xs, percentile=10.0, intensity=0.0)[0].sum()
    many = edge_mask(xs, percentile=60.0, intensity=0.0)[0].sum()
    assert few < many
    bright = edge_mask(xs, percentile=60.0, intensity=0.5)[0]
    assert torch.all(xs[bright.bool()] > 0.5)
