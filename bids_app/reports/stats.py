"""Numbers behind the report figures: robust outlier scores and intensity normalization.

Outliers
--------
A value is flagged with the *modified z-score* of Iglewicz and Hoaglin (1993),
``z = 0.6745 (x - median) / MAD``, against the threshold :data:`ROBUST_Z` (3.5, their
recommendation). Each metric is flagged on one side only (:data:`METRIC_DIRECTION`): a
low NCC to the source (the image changed a lot), a high latent norm or bits/dim (the
prior finds the image, or a slice of it, far from its training domain).

Slices are judged against the smooth trend of their own image's profile (a running
median over :data:`TREND_WINDOW` slices): the bits/dim of a slice naturally changes from
the top of the head to the skull base, and a slice is out of domain when it rises above
that trend by more than :data:`ROBUST_Z` times the profile's slice-to-slice noise, a
robust estimate from the differences of neighbouring slices (:func:`slice_z`). A run of
bad slices up to half the window long stands out.

Intensities
-----------
Histograms compare images from different scanners, so each image is scaled by a robust
maximum: the 99.5th percentile of its non-zero voxels (:func:`normalize_intensities`).
Voxels above 10 % of that value form the foreground (the head: images are not
skull-stripped), and only they enter the histogram. The source, the harmonized image
and the prior's reference template go through the same function.
"""

from __future__ import annotations

import numpy as np

#: Modified z-score above which a value is an outlier (Iglewicz and Hoaglin, 1993).
ROBUST_Z = 3.5

#: Which side of each metric is bad: ``-1`` low values, ``+1`` high values.
METRIC_DIRECTION = {
    "NCCToSource": -1,
    "LatentNorm": 1,
    "BitsPerDim": 1,
    "SourceBitsPerDim": 1,
}

#: Slices in the running median that gives a profile's trend.
TREND_WINDOW = 9

#: Percentile of the non-zero voxels that scales an image to about ``[0, 1]``.
SCALE_PERCENTILE = 99.5
#: Foreground: voxels above this fraction of the scale.
FOREGROUND_FRACTION = 0.1
#: Bins of the normalized-intensity histograms.
HISTOGRAM_BINS = np.linspace(FOREGROUND_FRACTION, 1.3, 73)


def robust_z(values):
    """Modified z-scores of ``values`` (``NaN`` stays ``NaN``).

    The median absolute deviation (MAD) is replaced by ``1.2533`` times the mean absolute
    deviation when it is zero (more than half of the values equal); all scores are zero
    when both are.

    >>> robust_z([1.0, 1.1, 0.9, 1.0, 5.0]).round(2).tolist()
    [0.0, 0.67, -0.67, 0.0, 26.98]
    """
    x = np.asarray(values, dtype=float)
    out = np.zeros_like(x)
    ok = np.isfinite(x)
    if not ok.any():
        return np.full_like(x, np.nan)
    med = np.median(x[ok])
    mad = np.median(np.abs(x[ok] - med))
    if mad > 0:
        out[ok] = 0.6745 * (x[ok] - med) / mad
    else:
        meanad = np.mean(np.abs(x[ok] - med))
        if meanad > 0:
            out[ok] = (x[ok] - med) / (1.2533 * meanad)
    out[~ok] = np.nan
    return out


def flag_outliers(values, direction=1, threshold=ROBUST_Z):
    """Boolean mask of outliers on the bad side (``direction`` +1: high, -1: low, 0: both).

    Fewer than 4 finite values are never flagged (no spread to speak of).

    >>> flag_outliers([0.95, 0.96, 0.94, 0.95, 0.5], direction=-1).tolist()
    [False, False, False, False, True]
    """
    x = np.asarray(values, dtype=float)
    if np.isfinite(x).sum() < 4:
        return np.zeros(x.shape, dtype=bool)
    z = robust_z(x)
    if direction > 0:
        bad = z > threshold
    elif direction < 0:
        bad = z < -threshold
    else:
        bad = np.abs(z) > threshold
    return np.nan_to_num(bad, nan=False).astype(bool)


def profile_array(slice_bpd):
    """A ``SliceBitsPerDim`` list as a float array (``None`` -> ``NaN``)."""
    return np.array([np.nan if v is None else float(v) for v in (slice_bpd or [])], dtype=float)


def slice_trend(slice_bpd, window=TREND_WINDOW):
    """Running median of the finite values of a per-slice profile (``NaN`` elsewhere)."""
    from scipy.ndimage import median_filter

    y = profile_array(slice_bpd)
    ok = np.isfinite(y)
    trend = np.full_like(y, np.nan)
    if ok.any():
        trend[ok] = median_filter(y[ok], size=min(window, int(ok.sum())), mode="nearest")
    return trend


def slice_z(slice_bpd, window=TREND_WINDOW):
    """``(z, trend, scale)``: each slice's rise above the trend of its profile, in noise units.

    ``scale`` is the slice-to-slice noise of the profile, estimated robustly from the
    differences of neighbouring (finite) slices: ``MAD(diff) / 0.6745 / sqrt(2)``, where
    a smooth trend hardly counts and one bad slice spoils only two differences. The
    flagging threshold in bits/dim is ``trend + ROBUST_Z * scale``.
    """
    y = profile_array(slice_bpd)
    trend = slice_trend(slice_bpd, window)
    finite = y[np.isfinite(y)]
    diff = np.diff(finite)
    scale = 0.0
    if diff.size:
        scale = float(np.median(np.abs(diff - np.median(diff))) / 0.6745 / np.sqrt(2))
        if scale == 0:
            scale = float(np.mean(np.abs(diff - np.median(diff))) * 1.2533 / np.sqrt(2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (y - trend) / scale if scale > 0 else np.where(np.isfinite(y), 0.0, np.nan)
    return z, trend, scale


def out_of_domain_slices(slice_bpd, threshold=ROBUST_Z):
    """Indices of the slices whose bits/dim rises above the trend of the image's profile.

    ``slice_bpd`` is the ``SliceBitsPerDim`` list of a sidecar (``None`` for slices that
    were empty and not harmonized). Profiles of fewer than 4 slices are never flagged.

    >>> out_of_domain_slices([None, 3.0, 3.1, 2.9, 3.0, 9.0, 3.05, 2.95, None])
    [5]
    """
    y = profile_array(slice_bpd)
    if np.isfinite(y).sum() < 4:
        return []
    z, _, _ = slice_z(slice_bpd)
    return [int(i) for i in np.nonzero(np.nan_to_num(z, nan=0.0) > threshold)[0]]


def normalize_intensities(data, *, stride=1):
    """Foreground voxels of ``data`` scaled by their robust maximum (see module docs).

    Parameters
    ----------
    data : array
        An image (any shape, any units).
    stride : int
        Take every ``stride``-th voxel along each axis (speed on large images).

    Returns
    -------
    1-D float array
        The normalized foreground intensities (empty for an all-zero image).
    """
    x = np.asarray(data, dtype=np.float32)
    if stride > 1 and x.ndim == 3:
        x = x[::stride, ::stride, ::stride]
    x = x[np.isfinite(x)]
    positive = x[x > 0]
    if positive.size == 0:
        return np.zeros(0, dtype=np.float32)
    scale = float(np.percentile(positive, SCALE_PERCENTILE))
    if scale <= 0:
        return np.zeros(0, dtype=np.float32)
    x = x / scale
    return x[x > FOREGROUND_FRACTION]


def histogram(values, bins=HISTOGRAM_BINS):
    """Bin centres and probability density of normalized intensities.

    The density is smoothed with a Gaussian of one bin (images stored as integers
    otherwise give comb-like histograms).
    """
    from scipy.ndimage import gaussian_filter1d

    density, edges = np.histogram(values, bins=bins, density=bool(np.size(values)))
    return (edges[:-1] + edges[1:]) / 2, gaussian_filter1d(density.astype(float), 1.0)
