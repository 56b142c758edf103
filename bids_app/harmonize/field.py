"""A smooth multiplicative field (B1-like shading), measured against the target population.

A scanner's coil and transmit profile multiply the image by a smooth field; no monotone
intensity map can undo that (docs/method.md, "A smooth field"). After registration the
image's white matter is seen through one fixed mask, the template's own white matter, and
there the log-ratio of the image to the template (the training images' mean) is anatomy
held nearly constant: what varies smoothly in it is shading. A low-order polynomial fitted
to that log-ratio (:func:`fit_coefficients`, trimmed least squares, so that misregistered
or pathological voxels do not pull it) is the image's field relative to the target
population's mean shading.

Target-domain images have fields of their own (their coil, their head position, the
template's blur). :func:`field_statistics` measures the training images' coefficients, their
median and covariance, and the Mahalanobis distance that 95 % of them stay under. An image
whose field is farther from the population than that (:func:`assess_field`) is divided by
the difference; every other image keeps its shading. Nothing here looks at an image of the
subject from the target domain: the method stays blind.

The field is a polynomial in the reference grid's voxel coordinates, each axis scaled to
[-1, 1] (:func:`grid_coordinates`), so it can be evaluated anywhere: on the reference grid
and, through the registration, at every native voxel (:func:`log_field`), where the
harmonized image is made without resampling.
"""

from __future__ import annotations

import itertools

import numpy as np

#: Order of the polynomial field (2: 9 terms besides the constant, the low-order shading
#: of a coil). Measured on the 11 validation images under a +-40 % field: order 2 caught
#: 10 of 11 (+5.4 dB), order 1 caught 5 (+2.5 dB); neither touched an unshifted image
#: (docs/method.md).
ORDER = 2
#: The template's white matter: brain voxels between these percentiles of the template's
#: brain intensities (above grey matter, below fat and vessels), eroded by one voxel.
WM_PERCENTILES = (70.0, 97.0)
#: A field is corrected beyond this percentile of the training images' own distances.
FIELD_PERCENTILE = 95.0
#: Trimmed least squares: residuals beyond this many robust standard deviations are left
#: out, for this many rounds.
TRIM, TRIM_ROUNDS = 3.0, 3


def exponents(order=ORDER):
    """The ``(a, b, c)`` exponents of the polynomial's terms ``x^a y^b z^c``, constant
    left out, in order of degree."""
    out = []
    for degree in range(1, order + 1):
        for combo in itertools.combinations_with_replacement(range(3), degree):
            out.append(tuple(combo.count(axis) for axis in range(3)))
    return out


def grid_coordinates(index, shape):
    """Voxel indices of the reference grid (continuous) scaled to [-1, 1] per axis."""
    return [2.0 * np.asarray(i, dtype=np.float64) / max(n - 1, 1) - 1.0
            for i, n in zip(index, shape)]


def _terms(coords, order):
    return [coords[0] ** a * coords[1] ** b * coords[2] ** c for a, b, c in exponents(order)]


def white_matter(template, brain, percentiles=WM_PERCENTILES):
    """The template's white matter (:data:`WM_PERCENTILES` of its brain), eroded."""
    from scipy.ndimage import binary_erosion

    template = np.asarray(template, dtype=np.float64)
    brain = np.asarray(brain, dtype=bool)
    lo, hi = np.percentile(template[brain], percentiles)
    return binary_erosion(brain & (template >= lo) & (template <= hi))


def fit_coefficients(volume, template, wm, order=ORDER):
    """The field's coefficients (constant left out): ``log(volume / template)`` in ``wm``.

    Parameters
    ----------
    volume, template : arrays ``(X, Y, Z)``
        The image and the template on the reference grid (any intensity units).
    wm : bool array ``(X, Y, Z)``
        :func:`white_matter` of the template.
    order : int
        Polynomial order.

    Returns
    -------
    numpy array ``(len(exponents(order)),)``
        Coefficients of the log-field on :func:`grid_coordinates`.
    """
    volume = np.asarray(volume, dtype=np.float64)
    template = np.asarray(template, dtype=np.float64)
    inside = wm & (volume > 0) & (template > 0)
    if inside.sum() < 10 * (len(exponents(order)) + 1):
        raise ValueError("too little white matter with signal to fit a field")
    ratio = np.log(volume[inside]) - np.log(template[inside])
    coords = grid_coordinates(np.nonzero(inside), volume.shape)
    design = np.column_stack([np.ones(ratio.size), *_terms(coords, order)])
    keep = np.ones(ratio.size, dtype=bool)
    for _ in range(TRIM_ROUNDS):
        coef, *_ = np.linalg.lstsq(design[keep], ratio[keep], rcond=None)
        residual = ratio - design @ coef
        centre = np.median(residual[keep])
        spread = 1.4826 * np.median(np.abs(residual[keep] - centre))
        keep = np.abs(residual - centre) <= TRIM * max(spread, 1e-9)
    return coef[1:]


def field_statistics(volumes, template, brain, *, order=ORDER, percentile=FIELD_PERCENTILE):
    """The target population's fields: median coefficients, precision and threshold.

    Parameters
    ----------
    volumes : sequence of arrays ``(X, Y, Z)``
        Training volumes on the reference grid.
    template : array ``(X, Y, Z)``
        The training images' mean (the bundle's reference).
    brain : bool array ``(X, Y, Z)``
        The template's brain mask.

    Returns
    -------
    dict
        JSON-ready: ``order``, ``median`` (coefficients), ``precision`` (inverse covariance
        of the coefficients), ``threshold`` (``percentile`` of the training images' squared
        Mahalanobis distances), ``percentile``, ``wm_percentiles``, ``n_volumes``.
    """
    wm = white_matter(template, brain)
    coefs = np.array([fit_coefficients(v, template, wm, order) for v in volumes])
    if len(coefs) <= coefs.shape[1]:
        raise ValueError(f"field statistics need more than {coefs.shape[1]} training images "
                         f"({len(coefs)} given)")
    median = np.median(coefs, axis=0)
    precision = np.linalg.inv(np.cov((coefs - median).T))
    distances = np.einsum("ij,jk,ik->i", coefs - median, precision, coefs - median)
    return {
        "order": int(order),
        "median": [float(v) for v in median],
        "precision": [[float(v) for v in row] for row in precision],
        "threshold": round(float(np.percentile(distances, percentile)), 4),
        "percentile": percentile,
        "wm_percentiles": list(WM_PERCENTILES),
        "n_volumes": int(len(coefs)),
    }


def log_field(coefficients, order, shape, index=None):
    """The log-field of ``coefficients`` at reference voxel ``index`` (default: the grid).

    ``index`` is a sequence of 3 arrays of continuous reference voxel indices (any shape:
    native voxels carried into the reference grid); ``shape`` is the reference grid's.
    """
    if index is None:
        index = np.indices(shape, dtype=np.float64)
    coords = grid_coordinates(index, shape)
    out = np.zeros(np.shape(coords[0]), dtype=np.float64)
    for c, term in zip(coefficients, _terms(coords, order)):
        out += float(c) * term
    return out


def assess_field(volume, template, brain, record):
    """Whether ``volume``'s field is beyond the population's, and the correction if so.

    Parameters
    ----------
    volume, template, brain
        As :func:`field_statistics`.
    record : dict
        :func:`field_statistics`' record.

    Returns
    -------
    dict
        ``distance`` (squared Mahalanobis distance of the image's coefficients from the
        population's median), ``threshold``, ``corrected`` (distance over threshold) and,
        when corrected, ``shrinkage`` (``1 - (p - 2) / distance``, James-Stein, ``p`` the
        number of terms: the expected part of the subject's own shading) and
        ``correction``, what :func:`correction` divides out: ``coefficients`` of the
        log-field (the difference to the median, shrunk), ``offset`` (subtracted from the
        log-field everywhere, so that the brain's mean is kept), ``order`` and ``shape``
        (of the reference grid).
    """
    order = int(record["order"])
    wm = white_matter(template, brain, tuple(record.get("wm_percentiles", WM_PERCENTILES)))
    delta = fit_coefficients(volume, template, wm, order) - np.asarray(record["median"])
    distance = float(delta @ np.asarray(record["precision"]) @ delta)
    threshold = float(record["threshold"])
    out = {"distance": round(distance, 3), "threshold": threshold,
           "corrected": bool(distance > threshold)}
    if out["corrected"]:
        # James-Stein: part of the difference is the subject's own shading, as large as the
        # population's spread says; shrink by (p - 2) / distance, p the number of terms
        shrink = max(0.0, 1.0 - (delta.size - 2) / distance)
        delta = shrink * delta
        offset = float(log_field(delta, order, np.shape(volume))[np.asarray(brain)].mean())
        out.update(shrinkage=round(shrink, 4), correction={
            "coefficients": [float(v) for v in delta], "order": order, "offset": offset,
            "shape": [int(n) for n in np.shape(volume)]})
    return out


def correction(field, index=None):
    """The factor ``exp(-(log-field - offset))`` of a ``correction`` record of
    :func:`assess_field`, on the reference grid or at reference voxel ``index``."""
    return np.exp(-(log_field(field["coefficients"], field["order"], field["shape"], index)
                    - field["offset"]))


__all__ = ["ORDER", "assess_field", "correction", "exponents", "field_statistics",
           "fit_coefficients", "grid_coordinates", "log_field", "white_matter"]
