"""The data terms of BlindHarmony (Eq. 1-3 of the paper) and their gradients, per slice.

All functions take batches of slices ``(B, 1, H, W)`` and work independently per slice.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _kernels(like):
    kx = _SOBEL.to(device=like.device, dtype=like.dtype)
    return kx.view(1, 1, 3, 3), kx.t().contiguous().view(1, 1, 3, 3)


def sobel(x):
    """3x3 Sobel derivatives ``(gx, gy)`` of each slice (zero padding)."""
    kx, ky = _kernels(x)
    return F.conv2d(x, kx, padding=1), F.conv2d(x, ky, padding=1)


def sobel_adjoint(gx, gy):
    """Adjoint of :func:`sobel`: ``Gx^T gx + Gy^T gy``."""
    kx, ky = _kernels(gx)
    return F.conv_transpose2d(gx, kx, padding=1) + F.conv_transpose2d(gy, ky, padding=1)


def cosine_similarity(x, xs, eps=1e-8):
    """NCC of the paper, as cosine similarity of each slice pair: shape ``(B,)``."""
    x, xs = x.flatten(1), xs.flatten(1)
    return (x * xs).sum(1) / (x.norm(dim=1) * xs.norm(dim=1) + eps)


def cosine_similarity_grad(x, xs, eps=1e-8):
    """Gradient of :func:`cosine_similarity` with respect to ``x``.

    ``d/dx <x, s>/(|x||s|) = s/(|x||s|) - <x, s> x/(|x|^3 |s|)``.
    """
    flat_x, flat_s = x.flatten(1), xs.flatten(1)
    nx = flat_x.norm(dim=1, keepdim=True) + eps
    ns = flat_s.norm(dim=1, keepdim=True) + eps
    dot = (flat_x * flat_s).sum(1, keepdim=True)
    grad = flat_s / (nx * ns) - dot * flat_x / (nx**3 * ns)
    return grad.view_as(x)


def edge_mask(xs, *, percentile=30.0, intensity=0.05):
    """Non-edge masks ``(Mx, My)`` of the source slices.

    A pixel is kept in direction d when its absolute Sobel derivative along d is at most the
    slice's ``percentile``-th percentile (of that direction) and its intensity is above
    ``intensity`` (so background is not counted). "At most" rather than "below": when more
    than 30 % of a slice is flat background the percentile is 0, and a strict comparison
    would leave the mask empty on every such slice (quantized images have flat tissue too).
    """
    gx, gy = sobel(xs)
    foreground = xs > intensity
    masks = []
    for g in (gx.abs(), gy.abs()):
        threshold = torch.quantile(g.flatten(1), percentile / 100.0, dim=1)
        masks.append(((g <= threshold.view(-1, 1, 1, 1)) & foreground).to(xs.dtype))
    return tuple(masks)


def edge_penalty(x, masks):
    """``M |G x|`` summed over pixels and both directions: shape ``(B,)``."""
    gx, gy = sobel(x)
    return (masks[0] * gx.abs()).flatten(1).sum(1) + (masks[1] * gy.abs()).flatten(1).sum(1)


def edge_penalty_grad(x, masks):
    """(Sub)gradient of :func:`edge_penalty`: ``G^T (M sign(M G x))`` per direction."""
    gx, gy = sobel(x)
    mx, my = masks
    return sobel_adjoint(mx * torch.sign(mx * gx), my * torch.sign(my * gy))
