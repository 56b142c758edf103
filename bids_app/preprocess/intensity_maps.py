"""Piecewise-linear monotone intensity maps, applied to numpy intensities.

A map is given by its values at uniform knots of [0, 1] (``g(0)`` ... ``g(1)``); outside
[0, 1] it continues linearly with the slope of its first or last segment, so intensities
beyond a slice's range keep changing smoothly. Harmonization (:mod:`bids_app.harmonize`)
chooses the maps on the reference grid; :func:`bids_app.preprocess.native.to_native`
applies them to the native image. They live here, below both, so that preprocessing does
not import harmonization.

>>> import numpy as np
>>> identity = np.linspace(0.0, 1.0, 5)
>>> interp_extended([-0.5, 0.25, 1.5], identity).tolist()
[-0.5, 0.25, 1.5]
>>> apply_slice_map([10.0, 20.0, 40.0], identity, 10.0, 30.0).tolist()
[10.0, 20.0, 40.0]
"""

from __future__ import annotations

import numpy as np


def interp_extended(t, values):
    """Piecewise-linear map with knot values ``values`` on [0, 1], evaluated at ``t`` (numpy).

    Outside [0, 1] the map continues linearly with the slope of its first or last segment.
    """
    values = np.asarray(values, dtype=np.float64)
    step = 1.0 / (len(values) - 1)
    t = np.asarray(t, dtype=np.float64)
    out = np.interp(t, np.linspace(0.0, 1.0, len(values)), values)
    out = np.where(t < 0, values[0] + t * (values[1] - values[0]) / step, out)
    return np.where(t > 1, values[-1] + (t - 1) * (values[-1] - values[-2]) / step, out)


def apply_slice_map(values, lut, low, high):
    """One slice's map (knot values ``lut`` on that slice's ``[low, high]``) in volume units.

    ``v -> low + span * lut((v - low) / span)``, extended linearly outside ``[low, high]``
    (``span = high - low``, or 1 for a constant slice).
    """
    span = high - low if high > low else 1.0
    return low + span * interp_extended((np.asarray(values, dtype=np.float64) - low) / span, lut)


def apply_global_map(x, values, scale):
    """Apply a map fitted on ``x / scale`` to intensities ``x`` (numpy), in ``x``'s units.

    Outside [0, 1] the map continues linearly with its end slopes.
    """
    u = np.asarray(x, dtype=np.float64) / scale
    return (interp_extended(u, values) * scale).astype(np.float32)
