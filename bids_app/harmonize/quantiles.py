"""Target-population intensity quantiles in the prior's reference space.

After affine registration every image is seen through the same fixed mask of the reference
space (the head of the prior's template, a region chosen without looking at the image's
intensities). The quantiles of an image's intensities inside that mask move with any monotone
contrast change of the image and hardly at all with anything else, so they carry two things
the flow prior needs help with:

* an estimate of the contrast change that never fails on shifts outside the prior's
  one-parameter family (:func:`quantile_map`: the image's quantiles sent to the mean
  quantiles of the training population), and
* a yardstick for any other estimate: a map ``g`` is *consistent* with the population when
  ``g`` sends the image's quantiles as close to the population mean as training images
  themselves are (:func:`consistency`, in units of the population's own spread). The
  yardstick compares quantiles relative to the image's own high quantile (the
  ``ANCHOR``-th percentile) rather than to its maximum, which a single bright voxel sets:
  measured on IXI-HH, this halves the population's spread and keeps in-domain images with
  an unusual maximum consistent with the identity.

The statistics come from the training images of the prior (:func:`population_statistics`)
and are stored in its bundle; nothing here looks at a target-domain image of the subject.
"""

from __future__ import annotations

import numpy as np

#: Percentiles (in percent) at which quantiles are taken.
LEVELS = np.linspace(0.5, 99.5, 100)
#: The mask is the reference template above this fraction of its maximum.
MASK_THRESHOLD = 0.2
#: Consistency threshold: this percentile of the training images' own distances.
CONSISTENCY_PERCENTILE = 80.0
#: Percentile (one of ``LEVELS``) that relative quantiles are divided by.
ANCHOR = 98.5


def reference_mask(reference, threshold=MASK_THRESHOLD):
    """Boolean mask of the reference template's head (template > ``threshold`` x max).

    Parameters
    ----------
    reference : nibabel image or array
        The prior's reference template.
    threshold : float
        Fraction of the template's maximum.
    """
    data = np.asanyarray(getattr(reference, "dataobj", reference), dtype=np.float64)
    return data > threshold * data.max()


def volume_quantiles(volume, mask, levels=LEVELS):
    """Quantiles of ``volume / max(volume)`` inside ``mask`` (at ``levels`` percent)."""
    volume = np.asarray(volume, dtype=np.float64)
    peak = volume.max()
    if not np.isfinite(peak) or peak <= 0:
        raise ValueError("volume has no positive intensities")
    return np.percentile(volume[mask] / peak, levels)


def relative(quantiles, levels=LEVELS, anchor=ANCHOR):
    """Quantiles divided by the one at the ``anchor`` percentile (last axis)."""
    index = int(np.argmin(np.abs(np.asarray(levels) - anchor)))
    quantiles = np.asarray(quantiles, dtype=np.float64)
    return quantiles / quantiles[..., index : index + 1]


def population_statistics(volumes, mask, *, levels=LEVELS,
                          percentile=CONSISTENCY_PERCENTILE):
    """Mean quantiles of target-domain volumes, their spread and the consistency threshold.

    Parameters
    ----------
    volumes : sequence of arrays ``(X, Y, Z)``
        Training volumes on the reference grid.
    mask : bool array ``(X, Y, Z)``
        :func:`reference_mask` of the reference template.

    Returns
    -------
    dict
        ``quantiles`` (mean quantiles in units of each volume's maximum, the target of
        :func:`quantile_map`), ``relative_quantiles`` (mean :func:`relative` quantiles),
        ``spread`` (mean squared distance of a training image's relative quantiles to their
        mean) and ``threshold`` (``percentile`` of the training images' distances in units
        of ``spread``), JSON-ready.
    """
    quantiles = np.array([volume_quantiles(v, mask, levels) for v in volumes])
    rel = relative(quantiles, levels)
    mean = rel.mean(axis=0)
    distances = np.sum((rel - mean) ** 2, axis=1)
    spread = float(distances.mean())
    return {
        "levels": [round(float(v), 3) for v in levels],
        "quantiles": [round(float(v), 6) for v in quantiles.mean(axis=0)],
        "relative_quantiles": [round(float(v), 6) for v in mean],
        "anchor": ANCHOR,
        "spread": spread,
        "threshold": round(float(np.percentile(distances / spread, percentile)), 4),
        "n_volumes": int(len(quantiles)),
        "mask_threshold": MASK_THRESHOLD,
    }


def quantile_map(source_quantiles, population_quantiles, n_knots):
    """Monotone map sending the source's quantiles to the population's, on uniform knots.

    Parameters
    ----------
    source_quantiles, population_quantiles : arrays ``(L,)``
        In units of each volume's maximum.
    n_knots : int
        Knots of the returned piecewise-linear map on [0, 1] (``g(0) = 0``, ``g(1) = 1``).

    Returns
    -------
    numpy array ``(n_knots,)``
        Increasing knot values.
    """
    src = np.concatenate([[0.0], np.asarray(source_quantiles, dtype=np.float64), [1.0]])
    dst = np.concatenate([[0.0], np.asarray(population_quantiles, dtype=np.float64), [1.0]])
    # ties (e.g. a constant region) would make the inverse ill-defined: break them minimally
    src = np.maximum.accumulate(src + np.arange(src.size) * 1e-9)
    dst = np.maximum.accumulate(dst)
    return np.interp(np.linspace(0.0, 1.0, n_knots), src, dst)


def consistency(values, source_quantiles, population):
    """Distance of a map's image of the source quantiles to the population, in spreads.

    ``sum_l (r_l(g(q)) - p_l)^2 / spread`` where ``g`` is the piecewise-linear map with knot
    values ``values``, ``q`` the source's quantiles, ``r`` :func:`relative` and ``p`` the
    population's mean relative quantiles (``population`` is a
    :func:`population_statistics` record). Training images under the identity map score 1
    on average.
    """
    values = np.asarray(values, dtype=np.float64)
    levels = np.asarray(population["levels"])
    mapped = np.interp(source_quantiles, np.linspace(0.0, 1.0, len(values)), values)
    rel = relative(mapped, levels, population.get("anchor", ANCHOR))
    target = np.asarray(population["relative_quantiles"])
    return float(np.sum((rel - target) ** 2) / population["spread"])
