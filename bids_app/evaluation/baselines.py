"""Classical harmonization baselines scored beside BlindHarmony.

Histogram matching here is "to the target population": a monotone quantile map that sends
the source image's foreground quantiles to the mean foreground quantiles of the target
domain's training images (Nyul-style landmarks at every percentile).
"""

from __future__ import annotations

import numpy as np

LEVELS = np.linspace(0.5, 99.5, 100)


def _minmax(x):
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def foreground_quantiles(volume, levels=LEVELS, threshold=0.05):
    """Quantiles (at ``levels`` percent) of the min-max normalized volume's foreground."""
    x = _minmax(volume)
    return np.percentile(x[x > threshold], levels)


def population_quantiles(volumes, levels=LEVELS):
    """Mean foreground quantiles of target-domain volumes."""
    return np.mean([foreground_quantiles(v, levels) for v in volumes], axis=0)


def histogram_match(volume, reference_quantiles, levels=LEVELS):
    """Map ``volume`` (min-max normalized) monotonically onto the population quantiles."""
    x = _minmax(volume)
    source = foreground_quantiles(volume, levels)
    src = np.concatenate([[0.0], source, [1.0]])
    dst = np.concatenate([[0.0], reference_quantiles, [1.0]])
    src = np.maximum.accumulate(src + np.arange(src.size) * 1e-9)
    return np.interp(x, src, dst).astype(np.float32)
