"""Everything harmonization needs besides the weights, measured on target-domain images.

:func:`calibrate_bundle` writes a prior bundle's ``harmonization`` record from its
validation volumes (and its training volumes, for the population statistics), all on the
reference grid: the prior's own bias (:func:`~bids_app.harmonize.intensity.calibrate_power_map`),
the out-of-domain thresholds (:func:`~bids_app.harmonize.domain.calibrate_domain` for
whole-head and for skull-stripped slices, :func:`~bids_app.harmonize.evidence.
calibrate_tissue_order`) and the population's intensity quantiles in the template's head and
in its brain (:func:`~bids_app.harmonize.quantiles.population_statistics`), and the
population's smooth fields (:func:`~bids_app.harmonize.field.field_statistics`).
``blindharmony-train`` calls it at the end of training and with ``--recalibrate``.
"""

from __future__ import annotations

import numpy as np
import torch

#: The power search's range (:func:`~bids_app.harmonize.intensity.estimate_gamma`); an
#: estimate beyond ``EDGE`` of its top is pinned at the edge, not an estimate.
GAMMA_RANGE = (0.3, 3.0)
EDGE = 0.95


def stripped_estimate(flow, masked, scoring_slices):
    """The prior's power estimate on brain-masked validation volumes and what stands in
    the way of calibrating it: ``(fit, problems)``
    (:func:`~bids_app.harmonize.intensity.calibrate_power_map`,
    :func:`~bids_app.harmonize.intensity.calibration_problems`; no problems: the fit is
    recorded as the bundle's ``stripped`` estimate)."""
    from .intensity import calibrate_power_map, calibration_problems

    with torch.no_grad():
        fit = calibrate_power_map(flow, masked, scoring_slices=scoring_slices,
                                  gamma_range=GAMMA_RANGE)
    return fit, calibration_problems(fit, gamma_range=GAMMA_RANGE, edge=EDGE)


def calibrate_bundle(bundle_path, volumes, *, train_volumes=None, device="cpu"):
    """Measure the calibration on ``volumes`` (validation) and save it in the bundle.

    Returns the new ``harmonization`` record, with ``notes`` (messages for the user) that
    are not saved.
    """
    from ..flow.bundle import load_bundle
    from ..preprocess.masks import inner_brain, template_brain_mask
    from .methods import default_record, resolve_params
    from .domain import calibrate_domain
    from .evidence import calibrate_tissue_order
    from .field import field_statistics
    from .intensity import calibrate_power_map, calibration_problems
    from .quantiles import population_statistics, reference_mask

    bundle = load_bundle(bundle_path, device=device)
    scoring = resolve_params(bundle, "flow-intensity")[1].scoring_slices
    with torch.no_grad():
        calibration = calibrate_power_map(bundle.flow, volumes, scoring_slices=scoring,
                                          gamma_range=GAMMA_RANGE)
    problems = calibration_problems(calibration, gamma_range=GAMMA_RANGE, edge=EDGE)
    record = default_record()
    record.update({k: v for k, v in bundle.harmonization.items() if k == "paper"})
    record["flow-intensity"].update(calibration)
    brain = template_brain_mask()
    template = np.asarray(bundle.reference.dataobj, dtype=np.float64)
    on_grid = brain.shape == template.shape
    notes = [f"The prior's power estimate on whole-head validation images: {p}; its bias is "
             "divided out all the same, but check the prior" for p in problems]
    with torch.no_grad():
        domain = calibrate_domain(bundle.flow, volumes)
        if on_grid:
            masked = [np.asarray(v) * brain for v in volumes]
            stripped_fit, problems = stripped_estimate(bundle.flow, masked, scoring)
            if not problems:
                record["flow-intensity"]["stripped"] = stripped_fit
            else:
                notes.append("The prior's power estimate on brain-masked validation images "
                             f"cannot be calibrated ({'; '.join(problems)}): skull-stripped "
                             "slices are harmonized by the population of brain intensities "
                             "alone")
            stripped = calibrate_domain(bundle.flow, masked)
            domain["latent_norm_threshold_stripped"] = stripped["latent_norm_threshold"]
            domain["validation_latent_norm_stripped"] = stripped["validation_latent_norm"]
            domain.update(calibrate_tissue_order(volumes, template, brain))
    record["out_of_domain"] = domain
    if train_volumes is not None and len(train_volumes):
        try:
            record["flow-intensity"]["population"] = population_statistics(
                train_volumes, reference_mask(bundle.reference))
            if on_grid:
                record["flow-intensity"]["population_brain"] = population_statistics(
                    train_volumes, inner_brain(brain), mask_name="brain")
        except ValueError as exc:
            # the prior's own estimate is used alone (no population check)
            notes.append(f"Population quantiles not recorded: {exc}")
        if on_grid:
            try:
                record["flow-intensity"]["population_field"] = field_statistics(
                    train_volumes, template, brain)
            except ValueError as exc:
                notes.append(f"Population fields not recorded (no bias-field correction): "
                             f"{exc}")
    bundle.harmonization = record
    bundle.save(bundle_path)
    return {**record, "notes": notes}


def calibrate_field(bundle_path, train_volumes, *, device="cpu"):
    """Measure only the training images' smooth fields into the bundle.

    Writes ``flow-intensity.population_field``
    (:func:`~bids_app.harmonize.field.field_statistics` on ``train_volumes``, with the
    bundle's template) and keeps the rest of the bundle's calibration as it is: a bundle
    calibrated before the field was measured gains the bias-field correction without its
    other numbers moving (``blindharmony-train --recalibrate-field``). Returns the record.
    """
    from ..flow.bundle import load_bundle
    from ..preprocess.masks import template_brain_mask
    from .field import field_statistics

    bundle = load_bundle(bundle_path, device=device)
    brain = template_brain_mask()
    template = np.asarray(bundle.reference.dataobj, dtype=np.float64)
    if brain.shape != template.shape:
        raise ValueError(f"{bundle_path}: the bundle's grid {template.shape} is not the "
                         f"shipped template's {brain.shape}: no brain mask to fit fields in")
    record = field_statistics(train_volumes, template, brain)
    harmonization = dict(bundle.harmonization)
    harmonization["flow-intensity"] = {**(harmonization.get("flow-intensity") or {}),
                                       "population_field": record}
    bundle.harmonization = harmonization
    bundle.save(bundle_path)
    return record


__all__ = ["calibrate_bundle", "calibrate_field", "stripped_estimate"]
