"""Data terms of BlindHarmony: cosine similarity, Sobel edges, edge masks and gradients."""

import nibabel as nb
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
    mask = (torch.rand(3, 1, 12, 10, generator=gen) > 0.4).double()
    gx, gy = sobel(x)
    assert gx.abs().min() > 1e-9 and gy.abs().min() > 1e-9  # away from kinks of |.|
    xg = x.clone().requires_grad_(True)
    edge_penalty(xg, mask).sum().backward()
    grad = edge_penalty_grad(x, mask)
    torch.testing.assert_close(grad, xg.grad)
    assert grad.abs().max() <= 16.0  # the two kernels' absolute weights


def test_edge_penalty_values():
    x = _rand(2, 1, 6, 6, seed=9)
    ones = torch.ones_like(x)
    gx, gy = sobel(x)
    expected = gx.abs().flatten(1).sum(1) + gy.abs().flatten(1).sum(1)
    torch.testing.assert_close(edge_penalty(x, ones), expected)
    zeros = torch.zeros_like(x)
    assert torch.all(edge_penalty(x, zeros) == 0)
    assert torch.all(edge_penalty_grad(x, zeros) == 0)


@pytest.fixture(scope="module")
def fixture_slices(lib_bids_dir):
    """Every axial slice holding signal of the three fixture subjects (native RAS grid),
    min-max normalized: central slices with noisy background, and slices where flat
    background (exact zeros) covers more than 30 % of the slice."""
    out = []
    for path in sorted(lib_bids_dir.glob("sub-*/anat/*_T1w.nii.gz")):
        volume = nb.as_closest_canonical(nb.load(str(path))).get_fdata()
        for k in range(volume.shape[2]):
            s = volume[:, :, k]
            if s.max() > s.min():
                out.append((s - s.min()) / (s.max() - s.min()))
    return torch.from_numpy(np.stack(out)[:, None])


def _magnitude(img):
    return np.hypot(correlate(img, SOBEL_X, mode="constant"),
                    correlate(img, SOBEL_X.T, mode="constant"))


def test_edge_mask_is_the_papers_rule_on_real_slices(fixture_slices):
    """Kept: Sobel magnitude strictly below the slice's 30th percentile, and intensity above
    0.05. Where at least 30 % of a slice has zero gradient the percentile is 0 and the
    mask is empty; elsewhere it holds low-gradient head pixels, never background."""
    mask = edge_mask(fixture_slices)
    assert mask.shape == fixture_slices.shape and mask.dtype == fixture_slices.dtype
    gx, gy = sobel(fixture_slices)
    # zero gradient as computed (an exact cancellation of unequal pixels can leave 1e-17)
    flat = ((gx == 0) & (gy == 0)).double().mean((1, 2, 3)).numpy() >= 0.30
    for m, s in zip(mask.numpy()[:, 0], fixture_slices.numpy()[:, 0]):
        g = _magnitude(s)
        threshold = np.quantile(g, 0.30)
        expected = (g < threshold) & (s > 0.05)
        # 8-bit data tie at the percentile: rounding may tip a pixel exactly on it
        tie = np.abs(g - threshold) < 1e-9 * max(threshold, 1.0)
        np.testing.assert_array_equal(m.astype(bool)[~tie], expected[~tie])
        assert not np.any(m.astype(bool) & (g > threshold + 1e-9))
    kept = mask.sum((1, 2, 3)).numpy()
    assert flat.sum() >= 10 and (~flat).sum() >= 10  # both kinds of slice are here
    assert np.all(kept[flat] == 0)
    # elsewhere the flattest 30 % may all be background (a slice of neck or crown)
    assert np.mean(kept[~flat] > 0) > 0.95
    assert torch.all(fixture_slices[mask.bool()] > 0.05)


def test_edge_mask_without_the_intensity_condition_covers_background(fixture_slices):
    """The paper's released rule has no intensity condition: on IXI's noisy backgrounds the
    flattest 30 % of a slice is mostly background (why the condition is kept)."""
    literal = edge_mask(fixture_slices, intensity=None).bool()
    kept = edge_mask(fixture_slices).bool()
    assert torch.all(kept <= literal)  # the condition only removes pixels
    background = literal & (fixture_slices <= 0.05)
    assert background.sum() > 0.5 * literal.sum()
    assert torch.equal(literal & (fixture_slices > 0.05), kept)


def test_edge_mask_percentile_argument(fixture_slices):
    few = edge_mask(fixture_slices, percentile=10.0, intensity=None).sum()
    many = edge_mask(fixture_slices, percentile=60.0, intensity=None).sum()
    assert 0 < few < many
    bright = edge_mask(fixture_slices, percentile=60.0, intensity=0.5).bool()
    assert torch.all(fixture_slices[bright] > 0.5)
