"""The prior's slice grid: from a reference-space volume to normalized axial slices and back.

A reference-space volume has shape ``(X, Y, Z)`` (RAS); its axial slices are
``volume[:, :, k]`` and become the flow's ``(Z, 1, X, Y)`` batch. Each slice is min-max
normalized to [0, 1] on its own (as in the paper); the scale factors are kept so that
:func:`reassemble` brings intensities back to the input's units.
"""

from __future__ import annotations

import numpy as np

#: Slices whose intensity range is below this fraction of the volume's range are empty.
EMPTY_FRACTION = 1e-3


def volume_to_slices(volume):
    """``(X, Y, Z)`` volume -> ``(Z, 1, X, Y)`` stack of axial slices (float32)."""
    volume = np.asarray(volume, dtype=np.float32)
    return np.ascontiguousarray(volume.transpose(2, 0, 1)[:, None])


def slices_to_volume(slices):
    """``(Z, 1, X, Y)`` stack -> ``(X, Y, Z)`` volume."""
    return np.ascontiguousarray(np.asarray(slices)[:, 0].transpose(1, 2, 0))


def normalize_slices(volume):
    """Min-max normalize every axial slice of a reference-space volume.

    Parameters
    ----------
    volume : array ``(X, Y, Z)``

    Returns
    -------
    slices : float32 array ``(Z, 1, X, Y)`` in [0, 1]
    low, high : float arrays ``(Z,)``
        Per-slice minimum and maximum (the scale factors).
    valid : bool array ``(Z,)``
        False for empty slices (range below ``EMPTY_FRACTION`` of the volume's range);
        those slices are all zeros.
    """
    stack = volume_to_slices(volume)
    low = stack.min(axis=(1, 2, 3)).astype(np.float64)
    high = stack.max(axis=(1, 2, 3)).astype(np.float64)
    span = high - low
    valid = span > EMPTY_FRACTION * max(float(span.max()), 1e-12)
    scale = np.where(valid, span, 1.0)
    out = (stack - low[:, None, None, None]) / scale[:, None, None, None]
    out[~valid] = 0.0
    return out.astype(np.float32), low, high, valid


def reassemble(slices, low, high):
    """Undo :func:`normalize_slices`: ``(Z, 1, X, Y)`` in [0, 1] -> ``(X, Y, Z)`` volume."""
    slices = np.asarray(slices, dtype=np.float64)
    span = (np.asarray(high) - np.asarray(low))[:, None, None, None]
    return slices_to_volume(slices * span + np.asarray(low)[:, None, None, None]).astype(
        np.float32
    )


def head_fraction(slices, threshold=0.05):
    """Fraction of each normalized slice above ``threshold`` (how much head it holds)."""
    return (np.asarray(slices) > threshold).mean(axis=(1, 2, 3))


def scoring_slice_indices(slices, valid, n):
    """Indices of the ``n`` slices holding the most head (the informative ones).

    Parameters
    ----------
    slices : array ``(Z, 1, X, Y)``
        Normalized slices (:func:`normalize_slices`).
    valid : bool array ``(Z,)``
        Slices that may be chosen.
    n : int
        How many; fewer when fewer slices are valid.

    Returns
    -------
    numpy.ndarray
        Sorted slice indices; ties keep the lower index.
    """
    fraction = np.where(valid, head_fraction(slices), -1.0)
    order = np.argsort(-fraction, kind="stable")[: min(n, int(np.sum(valid)))]
    return np.sort(order)


def block_mean(slices, factor):
    """Average ``(N, C, H, W)`` slices over ``factor x factor`` blocks (no renormalization)."""
    slices = np.asarray(slices)
    if factor == 1:
        return slices
    n, c, height, width = slices.shape
    if height % factor or width % factor:
        raise ValueError(f"Slice shape {height}x{width} is not divisible by {factor}.")
    return slices.reshape(n, c, height // factor, factor, width // factor, factor).mean(
        axis=(3, 5))


def downsample_slices(slices, factor):
    """Block-average ``(N, 1, H, W)`` slices by ``factor`` and min-max each again.

    A coarser prior (``factor`` 2: 4 mm on the 2 mm grid) sees the low-frequency content
    that contrast is made of, at a quarter of the cost per slice. Empty slices stay zero.
    """
    if factor == 1:
        return np.asarray(slices, dtype=np.float32)
    out = block_mean(np.asarray(slices, dtype=np.float32), factor)
    low = out.min(axis=(1, 2, 3), keepdims=True)
    span = out.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (out - low) / np.where(span > 0, span, 1.0), 0.0).astype(
        np.float32)
