"""Image-quality scores of the paper's protocol: PSNR and SSIM per axial slice.

Each axial slice (RAS ``[:, :, k]``) of the harmonized and of the reference image is
min-max normalized on its own; PSNR and SSIM use a data range of 1. Only slices with head
in them count (at least ``min_fraction`` of the reference slice above 0.05).
"""

from __future__ import annotations

import numpy as np


def minmax(x):
    """``x`` scaled to [0, 1] (float64); a constant image gives zeros."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def slice_scores(test, reference, *, min_fraction=0.1):
    """PSNR (dB) and SSIM per axial slice; returns two arrays over the counted slices."""
    from skimage.metrics import structural_similarity

    test = np.asarray(test, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if test.shape != reference.shape:
        raise ValueError(f"shapes differ: {test.shape} vs {reference.shape}")
    psnr, ssim = [], []
    for k in range(reference.shape[2]):
        ref = minmax(reference[:, :, k])
        if (ref > 0.05).mean() < min_fraction:
            continue
        out = minmax(test[:, :, k])
        mse = float(np.mean((out - ref) ** 2))
        psnr.append(10 * np.log10(1.0 / mse) if mse > 0 else np.inf)
        ssim.append(structural_similarity(out, ref, data_range=1.0))
    return np.array(psnr), np.array(ssim)


def summarize(test, reference, **kwargs):
    """Mean PSNR (identical slices capped at 100 dB) and mean SSIM of a volume pair."""
    psnr, ssim = slice_scores(test, reference, **kwargs)
    return {"psnr": float(np.mean(np.minimum(psnr, 100.0))), "ssim": float(np.mean(ssim))}


def white_matter_mask(reference, *, low=75.0, high=97.0):
    """Approximate white matter of a T1w ``reference``: its brightest tissue, eroded.

    Voxels of the head (above 10 % of the maximum) between the ``low`` and ``high``
    percentiles of the head's intensities (above the grey matter, below fat and vessels),
    eroded by one voxel to drop partial-volume edges. The same mask serves every image
    compared with ``reference``.
    """
    from scipy.ndimage import binary_erosion

    reference = np.asarray(reference, dtype=np.float64)
    head = reference > 0.1 * reference.max()
    lo, hi = np.percentile(reference[head], [low, high])
    return binary_erosion(head & (reference >= lo) & (reference <= hi))


def striping(volume, mask, *, axis=2):
    """Slice-to-slice intensity striping: mean |difference| of neighbouring slices' means.

    The volume is divided by its mean inside ``mask`` (white matter, e.g.
    :func:`white_matter_mask`), then the mean inside ``mask`` is taken on every slice
    along ``axis`` (slices with fewer than 20 mask voxels are skipped) and the mean
    absolute difference of consecutive slices is returned in percent. Anatomy gives any
    image a baseline; harmonizing slices independently adds to it.
    """
    volume = np.asarray(volume, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if volume.shape != mask.shape:
        raise ValueError(f"shapes differ: {volume.shape} vs {mask.shape}")
    scaled = volume / volume[mask].mean()
    means = []
    for k in range(volume.shape[axis]):
        m = np.take(mask, k, axis=axis)
        means.append(np.take(scaled, k, axis=axis)[m].mean() if m.sum() >= 20 else np.nan)
    means = np.asarray(means)
    steps = np.abs(np.diff(means))
    return float(100.0 * np.nanmean(steps))
