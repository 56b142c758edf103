"""What an input is, seen from the reference space: skull-stripped or not, T1-like or not.

Two measurements of a registered source volume, each calibrated on target-domain images:

* :func:`shell_fraction`: how much of the template's head *outside* the brain (scalp,
  skull, meninges: the shell between the head mask and the dilated brain mask) holds signal.
  Whole-head T1w images fill most of it; a brain-extraction tool leaves it empty. An image
  is taken as skull-stripped when the fraction is below ``STRIPPED_SHELL``
  (:func:`skull_stripped`), and is then harmonized through the template's brain only.
* :func:`tissue_order`: the rank (Spearman) correlation of the source with the prior's
  template (the mean training image) inside the eroded brain. A monotone contrast change
  does not change ranks, so every contrast the method can undo keeps the value of the
  unshifted image; an inverted or T2-like contrast (CSF bright, white matter dark) or a
  failed registration turns it low or negative. The threshold is recorded in the bundle
  (:func:`calibrate_tissue_order`: ``TISSUE_MARGIN`` times the lowest validation value).
"""

from __future__ import annotations

import numpy as np

#: Voxels above this fraction of the volume's 99th percentile (inside the brain) hold signal.
SIGNAL_FRACTION = 0.05
#: Below this share of the shell holding signal, an image is skull-stripped.
STRIPPED_SHELL = 0.25
#: The tissue-order threshold is this multiple of the lowest validation correlation.
TISSUE_MARGIN = 0.5
#: Voxels the brain mask is dilated by to define the shell, and eroded by for statistics.
SHELL_DILATION = 2
BRAIN_EROSION = 2


def shell_mask(head, brain, dilation=SHELL_DILATION):
    """The head outside the (dilated) brain: where a whole-head image has scalp and skull."""
    from scipy.ndimage import binary_dilation

    return head & ~binary_dilation(brain, iterations=dilation)


def inner_brain(brain, erosion=BRAIN_EROSION):
    """The brain mask eroded by ``erosion`` voxels (robust to brain-extraction edges)."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(brain, iterations=erosion)


def shell_fraction(volume, head, brain):
    """Share of the shell's voxels holding signal (above ``SIGNAL_FRACTION`` of the brain's
    99th percentile)."""
    volume = np.asarray(volume, dtype=np.float64)
    inside = volume[inner_brain(brain)]
    level = SIGNAL_FRACTION * max(float(np.percentile(inside, 99)) if inside.size else 0.0,
                                  1e-12)
    shell = volume[shell_mask(head, brain)]
    return float((shell > level).mean()) if shell.size else 0.0


def skull_stripped(volume, head, brain, threshold=STRIPPED_SHELL):
    """``(stripped, shell fraction)`` of a registered volume."""
    fraction = shell_fraction(volume, head, brain)
    return bool(fraction < threshold), round(fraction, 4)


def tissue_order(volume, template, brain):
    """Spearman correlation of ``volume`` with ``template`` inside the eroded brain."""
    from scipy.stats import spearmanr

    inner = inner_brain(brain)
    a = np.asarray(volume, dtype=np.float64)[inner]
    b = np.asarray(template, dtype=np.float64)[inner]
    if a.size < 10 or np.ptp(a) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def calibrate_tissue_order(volumes, template, brain, *, margin=TISSUE_MARGIN):
    """Tissue-order correlations of validation ``volumes`` and the threshold (JSON-ready)."""
    values = [tissue_order(v, template, brain) for v in volumes]
    return {"tissue_order_threshold": round(margin * min(values), 4),
            "validation_tissue_order": [round(v, 4) for v in values]}


__all__ = ["calibrate_tissue_order", "inner_brain", "shell_fraction", "shell_mask",
           "skull_stripped", "tissue_order"]
