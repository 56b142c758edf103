"""What an input is, seen from the reference space: skull-stripped or not, T1-like or not.

Two measurements of a registered source volume, each calibrated on target-domain images:

* :func:`~bids_app.preprocess.masks.shell_fraction`: how much of the template's head
  *outside* the brain (scalp, skull, meninges: the shell between the head mask and the
  dilated brain mask) holds signal.
  Whole-head T1w images fill most of it; a brain-extraction tool leaves it empty. An image
  is taken as skull-stripped when the fraction is below ``STRIPPED_SHELL``
  (:func:`~bids_app.preprocess.masks.skull_stripped`), and is then harmonized through the
  template's brain only.
* :func:`tissue_order`: the rank (Spearman) correlation of the source with the prior's
  template (the mean training image) inside the eroded brain. A monotone contrast change
  does not change ranks, so every contrast the method can undo keeps the value of the
  unshifted image; an inverted or T2-like contrast (CSF bright, white matter dark) or a
  failed registration turns it low or negative. The threshold is recorded in the bundle
  (:func:`calibrate_tissue_order`: ``TISSUE_MARGIN`` times the lowest validation value).
"""

from __future__ import annotations

import numpy as np

#: The tissue-order threshold is this multiple of the lowest validation correlation.
TISSUE_MARGIN = 0.5


def tissue_order(volume, template, brain):
    """Spearman correlation of ``volume`` with ``template`` inside the eroded brain."""
    from scipy.stats import spearmanr

    from ..preprocess.masks import inner_brain

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


def assess_input(volume, bundle):
    """What the registered source is (:mod:`bids_app.preprocess.masks`, :func:`tissue_order`).

    ``skull_stripped`` and its ``shell_fraction``; ``tissue_order``, the rank correlation
    with the prior's template in the brain. Bundles on another grid than the shipped
    template's get no evidence (``None`` values, not stripped).
    """
    from ..preprocess.masks import head_mask, skull_stripped, template_brain_mask

    brain = template_brain_mask()
    template = np.asarray(bundle.reference.dataobj, dtype=np.float64)
    if brain.shape != np.shape(volume) or brain.shape != template.shape:
        return {"skull_stripped": False, "shell_fraction": None, "tissue_order": None}
    stripped, fraction = skull_stripped(volume, head_mask(template), brain)
    return {"skull_stripped": stripped, "shell_fraction": fraction,
            "tissue_order": round(tissue_order(volume, template, brain), 4)}


def tissue_order_reasons(evidence, domain):
    """The out-of-domain reason the tissue order gives, if any (a list of 0 or 1 strings).

    ``evidence`` is :func:`assess_input`'s, ``domain`` the bundle's ``out_of_domain``
    record.
    """
    threshold = domain.get("tissue_order_threshold")
    order = evidence.get("tissue_order")
    if threshold is None or order is None or order >= threshold:
        return []
    return [f"tissue order {order:.3f} under {threshold} (the rank correlation with the "
            "prior's template in the brain: not a T1w contrast, e.g. inverted or T2-like, "
            "or a failed registration)"]


__all__ = ["assess_input", "calibrate_tissue_order", "tissue_order", "tissue_order_reasons"]
