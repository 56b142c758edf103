"""What analysis sees: tissue fractions from one fixed, simple segmentation.

A harmonized image is for analysis, and the commonest analysis of a T1w image is tissue
segmentation. The quality benchmark therefore also segments every method's output with one
fixed, simple rule and compares the tissue fractions with those of the unshifted image (as
BlindHarmony's downstream figure argues): a contrast change moves the thresholds between
tissues, and a harmonization that undoes it brings the fractions back.

The rule: on the prior's 2 mm reference grid, inside the shipped template's brain mask
(:func:`bids_app.preprocess.masks.template_brain_mask`, the same voxels for every image of a
subject once it is registered), the intensities are split into three classes by multi-Otsu
thresholds (scikit-image's ``threshold_multiotsu``: the two thresholds that maximize the
between-class variance of the histogram, the optimum of a 3-means clustering of the
intensities on 256 bins), ordered by intensity: CSF < grey matter < white matter on a T1w
image. It needs no training, no prior and no random start, and it is invariant to a linear
rescaling of the intensities (an increasing one), so only a change of contrast moves it.
"""

from __future__ import annotations

import numpy as np

#: Tissue classes, darkest first (T1w).
TISSUES = ("csf", "gm", "wm")


def _brain(volume, mask):
    volume = np.asarray(volume, dtype=np.float64)
    if mask is None:
        from ..preprocess.masks import template_brain_mask

        mask = template_brain_mask()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != volume.shape:
        raise ValueError(f"shapes differ: volume {volume.shape} vs mask {mask.shape} (the "
                         "default mask is the template's brain on the 2 mm reference grid)")
    if not np.isfinite(volume[mask]).all():
        raise ValueError("volume has non-finite intensities inside the mask")
    return volume, mask


def segment_tissues(volume, mask=None, *, nbins=256):
    """Three-class segmentation by intensity (multi-Otsu) inside a brain mask.

    Parameters
    ----------
    volume : array_like ``(X, Y, Z)``
        A T1w image on the grid of ``mask`` (any intensity units).
    mask : bool array_like ``(X, Y, Z)``, optional
        Voxels to segment; default the template's brain mask on the prior's 2 mm reference
        grid (:func:`bids_app.preprocess.masks.template_brain_mask`).
    nbins : int
        Histogram bins of the threshold search.

    Returns
    -------
    labels : numpy.ndarray of uint8, the shape of ``volume``
        0 outside the mask, then 1, 2, 3 for :data:`TISSUES` (CSF, grey and white matter).
    thresholds : numpy.ndarray ``(2,)``
        The two intensity thresholds (CSF/grey, grey/white).

    Raises
    ------
    ValueError
        Mismatched shapes, non-finite intensities, or too few distinct intensities in the
        mask for three classes.
    """
    from skimage.filters import threshold_multiotsu

    volume, mask = _brain(volume, mask)
    values = volume[mask]
    thresholds = threshold_multiotsu(values, classes=len(TISSUES), nbins=nbins)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[mask] = np.digitize(values, thresholds) + 1
    return labels, np.asarray(thresholds, dtype=np.float64)


def tissue_fractions(volume, mask=None, **kwargs):
    """Share of the mask's voxels in each tissue class (:func:`segment_tissues`).

    Returns
    -------
    dict
        ``{"csf": f, "gm": f, "wm": f}``, fractions of the mask that sum to 1.
    """
    labels, _ = segment_tissues(volume, mask, **kwargs)
    counts = np.bincount(labels.ravel(), minlength=len(TISSUES) + 1)[1:]
    return {t: float(c) / float(counts.sum()) for t, c in zip(TISSUES, counts)}


def fraction_errors(fractions, reference):
    """Absolute differences of tissue fractions, in percentage points, per tissue.

    Parameters
    ----------
    fractions, reference : dict
        :func:`tissue_fractions` of an image and of its reference (the unshifted image).

    Returns
    -------
    dict
        ``{"csf": e, "gm": e, "wm": e}`` with ``e = 100 |fraction - reference|``.
    """
    return {t: 100.0 * abs(float(fractions[t]) - float(reference[t])) for t in TISSUES}
