"""``flow-intensity``: the prior's estimate of the contrast change, checked by the population.

:func:`run_flow_intensity` is the method's runner (:data:`~bids_app.harmonize.methods.METHODS`):
:func:`choose_global_map` decides one monotone map of the volume from the prior's estimate
(:func:`~bids_app.harmonize.intensity.fit_intensity_map`), the population check
(:func:`select_map`), the prior's veto (:func:`prior_veto`) and the out-of-domain fallback;
the map is then applied to the volume and expressed per slice for the way back to native
space.
"""

from __future__ import annotations

import numpy as np
import torch

from ..preprocess.slices import scoring_slice_indices, volume_to_slices
from .criterion import slice_likelihood
from .evidence import tissue_order_reasons
from .field import assess_field, correction
from ..preprocess.intensity_maps import apply_global_map
from .intensity import calibrated_gamma, fit_intensity_map, golden_section, map_and_normalize
from .methods import LUT_KNOTS, SELECTIONS


def _candidates(source, population, info, *, n_knots, gamma_bias, selection, use_prior,
                gamma_slope=1.0):
    """The finer candidates of :func:`select_map` in order, and the power applied."""
    from .quantiles import consistency

    knots = np.linspace(0.0, 1.0, n_knots)
    if use_prior:
        gamma = calibrated_gamma(float(info["gamma_hat"]), gamma_bias, gamma_slope)
        identity = bool(info.get("in_domain"))
    else:
        # no estimate of the prior: the power map closest to the population instead
        log_gamma, _ = golden_section(
            lambda t: consistency(knots ** float(np.exp(t)), source, population),
            np.log(0.3), np.log(3.0), 20)
        gamma, identity = float(np.exp(log_gamma)), True
    candidates = {"power": knots ** gamma}
    if identity and selection == "auto":
        candidates = {"identity": knots, **candidates}
    return candidates, gamma


def select_map(volume, reference, info, population, *, n_knots, gamma_bias=1.0,
               selection="auto", use_prior=True, gamma_slope=1.0):
    """Check the prior's estimates against the population's quantiles; keep the finest one.

    The candidates, from the finest to the coarsest: the identity (only when the prior's
    gate found the image in its domain), the prior's power map ``u ** (gamma_hat /
    gamma_bias)`` (with ``gamma_slope``: :func:`~bids_app.harmonize.intensity.
    calibrated_gamma`), and the population quantile map
    (:func:`~bids_app.harmonize.quantiles.quantile_map`: right for any monotone change, up
    to how much one subject's intensity distribution differs from the population's). The
    first that is consistent with the population (:func:`~bids_app.harmonize.quantiles.
    consistency` at most the calibrated threshold; for the identity, the looser
    ``identity_threshold``: leaving an in-domain image untouched matters more than catching
    the mildest shifts) is kept; the quantile map always is. With ``use_prior`` False (input
    the prior cannot judge: skull-stripped) the candidates are the identity, the power map
    closest to the population and the quantile map. ``selection`` ``"power"`` or
    ``"quantile"`` forces that candidate (ablations).

    Parameters
    ----------
    volume : array ``(X, Y, Z)``
        Source volume on the reference grid.
    reference : nibabel image
        The prior's reference template (defines the mask).
    info : dict
        :func:`~bids_app.harmonize.intensity.fit_intensity_map`'s record.
    population : dict
        :func:`~bids_app.harmonize.quantiles.population_statistics`' record.

    Returns
    -------
    values : numpy array
        Knot values of the chosen map.
    info : dict
        ``info`` with ``selected``, the applied ``gamma`` (None for the quantile map),
        ``consistency`` (distance of each candidate tried, in population spreads),
        ``consistency_threshold`` and ``identity_threshold``.
    """
    from .quantiles import ANCHOR, consistency, population_mask, quantile_map, volume_quantiles

    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
    levels = np.asarray(population["levels"])
    source = volume_quantiles(volume, population_mask(reference, population), levels)
    threshold = float(population["threshold"])
    limits = {"identity": float(population.get("identity_threshold", threshold))}
    candidates, gamma = _candidates(source, population, info, n_knots=n_knots,
                                    gamma_bias=gamma_bias, selection=selection,
                                    use_prior=use_prior, gamma_slope=gamma_slope)
    candidates["quantile"] = quantile_map(source, np.asarray(population["relative_quantiles"]),
                                          n_knots, levels=levels,
                                          anchor=population.get("anchor", ANCHOR))
    distances = {}
    for name, values in candidates.items():
        distances[name] = round(consistency(values, source, population), 3)
        if name == selection or (selection == "auto"
                                 and distances[name] <= limits.get(name, threshold)):
            break
    applied = {"identity": 1.0, "power": round(gamma, 4), "quantile": None}[name]
    return values, {**info, "selected": name, "gamma": applied, "consistency": distances,
                    "consistency_threshold": threshold,
                    "identity_threshold": limits["identity"]}


def _mapped_bits(flow, u, values):
    """Mean bits/dim of the slices ``u`` after the map ``values`` and per-slice min-max."""
    x, _ = map_and_normalize(u, torch.as_tensor(values, dtype=u.dtype, device=u.device))
    bpd, _ = slice_likelihood(flow, x.clamp(0, 1))
    return float(np.mean(bpd))


def veto_applies(info, veto_consistency):
    """Whether the prior may veto the quantile map: its own answer is nearly consistent.

    The population check measures how far the prior's answer (the identity or the power
    map, whichever the prior gave) leaves the source from the population, in units of the
    consistency threshold. Within ``veto_consistency`` thresholds the two sources of
    evidence are close and the prior's likelihood decides; beyond it the population's
    evidence is overwhelming and the quantile map stands. ``info`` is an ``auto``
    :func:`select_map` record, so the prior's answer was tried before the quantile map.
    """
    distances = info["consistency"]
    own = distances["identity"] if "identity" in distances else distances["power"]
    return own <= veto_consistency * float(info["consistency_threshold"])


def prior_veto(flow, u, prior_values, prior_info, quantile_values, info, veto_bits):
    """Keep the prior's own answer when it finds the quantile map clearly worse.

    The population check can replace the prior's answer by the quantile map; the two can
    disagree for reasons the population cannot know (a subject's own anatomy, head coverage,
    coil shading). The quantile map is kept only when its mean bits/dim on the slices ``u``
    is at most ``veto_bits`` above the prior's answer's (both on all the slices holding
    head): more than the prior's largest preference for a shifted image over the unshifted
    one seen on validation images when the margin was set (Exp: up to 0.19 bits/dim lower
    than the unshifted image). :func:`choose_global_map` asks for the veto only when
    :func:`veto_applies`.

    Returns the chosen ``(values, info)``; ``info`` gains ``bits_quantile``,
    ``bits_prior`` and ``prior_veto``.
    """
    prior_bits = _mapped_bits(flow, u, np.asarray(prior_values))
    quantile_bits = _mapped_bits(flow, u, np.asarray(quantile_values))
    veto = quantile_bits > prior_bits + veto_bits
    record = {"bits_quantile": round(quantile_bits, 4), "bits_prior": round(prior_bits, 4),
              "prior_veto": bool(veto)}
    if not veto:
        return quantile_values, {**info, **record}
    selected = "identity" if prior_info.get("in_domain") else "power"
    return prior_values, {**info, **record, "selected": selected,
                          "gamma": prior_info["gamma"]}


def _prior_estimate(flow, u, slices, valid, params, calibration, progress):
    """The prior's power map of the volume (``fit_intensity_map`` on its scoring slices)."""
    from tqdm.auto import tqdm

    chosen = scoring_slice_indices(slices, valid, params.scoring_slices)
    with tqdm(total=params.evaluations + 1, disable=not progress,
              desc="BlindHarmony (flow-intensity)") as bar:
        return fit_intensity_map(
            flow, u[chosen], n_knots=params.knots,
            gamma_bias=float(calibration["gamma_bias"]),
            gate_bits=float(calibration["gate_bits"]),
            gamma_slope=float(calibration.get("gamma_slope", 1.0)),
            evaluations=params.evaluations, progress=bar.update,
            span_pixels=calibration.get("span_pixels", params.span_pixels),
        )


def _fallback_reasons(problem, population, info):
    """Why the chosen map must not be applied (the out-of-domain rule), if at all."""
    domain = problem.bundle.harmonization.get("out_of_domain") or {}
    reasons = tissue_order_reasons(problem.evidence, domain)
    if problem.evidence["skull_stripped"] and not population:
        reasons.append("skull-stripped input, and the prior records no population of brain "
                       "intensities (recalibrate it with blindharmony-train --recalibrate)")
    elif population and population.get("fallback_threshold") is not None:
        distance = info["consistency"][info["selected"]]
        if distance > float(population["fallback_threshold"]):
            reasons.append(f"the map leaves the image {distance:.1f} population spreads from "
                           f"the population, beyond the farthest training image "
                           f"({population['fallback_threshold']})")
    return reasons


def choose_global_map(problem, params):
    """``flow-intensity``'s one monotone map of a volume, and the record of the decision.

    The prior's estimate, checked against the population (:func:`select_map`, with the
    prior's veto). Skull-stripped input is harmonized through the template's brain: the
    population measured there (``params.population_brain``) and the prior's estimate
    calibrated on brain-masked validation images (``params.stripped``: ``gamma_bias`` and
    ``gate_bits``); a prior without that record cannot judge such slices, and the
    population decides alone. The result falls back to the identity, with the reasons
    recorded (``fallback_reasons``), when the evidence is against any map: the tissue order
    is not T1w's, or the chosen map leaves the image farther from the population than
    every training image (``fallback_threshold``), or a skull-stripped image meets a prior
    without a brain population.

    Returns ``(values, info)``: the map's knot values and the decision record.
    """
    flow, stripped = problem.bundle.flow, problem.evidence["skull_stripped"]
    population = params.population_brain if stripped else params.population
    calibration = params.stripped if stripped else {"gamma_bias": params.gamma_bias,
                                                    "gamma_slope": params.gamma_slope,
                                                    "gate_bits": params.gate_bits,
                                                    "span_pixels": params.span_pixels}
    use_prior = bool(calibration) and "gamma_bias" in calibration
    # how the prior's raw power estimate is corrected (no estimate: nothing to correct)
    gamma_bias, gamma_slope = ((float(calibration["gamma_bias"]),
                                float(calibration.get("gamma_slope", 1.0)))
                               if use_prior else (1.0, 1.0))
    volume = problem.volume
    u = torch.from_numpy(volume_to_slices(volume) / float(np.max(volume))).to(problem.device)
    if use_prior:
        values, info = _prior_estimate(flow, u, problem.slices, problem.valid, params,
                                       calibration, problem.progress)
    else:
        values = np.linspace(0.0, 1.0, params.knots)
        info = {"gamma_hat": None, "gamma": 1.0, "in_domain": None}
    if population:
        prior_values, prior_info = values, info
        values, info = select_map(volume, problem.bundle.reference, info, population,
                                  n_knots=params.quantile_knots, gamma_bias=gamma_bias,
                                  gamma_slope=gamma_slope, selection=params.selection,
                                  use_prior=use_prior)
        if (use_prior and info["selected"] == "quantile" and params.selection == "auto"
                and veto_applies(info, params.veto_consistency)):
            values, info = prior_veto(flow, u[np.nonzero(problem.valid)[0]], prior_values,
                                      prior_info, values, info, params.veto_bits)
    elif params.selection != "auto":
        raise ValueError("this prior records no population quantiles (recalibrate it "
                         "with blindharmony-train --recalibrate)")
    reasons = _fallback_reasons(problem, population, info)
    if reasons:
        values = np.linspace(0.0, 1.0, len(values))
        info = {**info, "selected": "identity", "gamma": 1.0}
    return values, {**info, "fallback": bool(reasons), "fallback_reasons": reasons}


def _field_inputs(problem, params):
    """``(template, brain)`` the field is measured with, or None where the step does not
    run (no record in the bundle, ``--bias-field off``, or a grid other than the shipped
    template's)."""
    from ..preprocess.masks import template_brain_mask

    if params.population_field is None or params.bias_field != "auto":
        return None
    brain = template_brain_mask()
    template = np.asarray(problem.bundle.reference.dataobj, dtype=np.float64)
    if brain.shape != np.shape(problem.volume) or brain.shape != template.shape:
        return None
    return template, brain


def _bias_field(volume, problem, params):
    """:func:`~bids_app.harmonize.field.assess_field` of ``volume`` (the source after its
    map), or None where the step does not run (:func:`_field_inputs`)."""
    inputs = _field_inputs(problem, params)
    if inputs is None:
        return None
    return assess_field(volume, *inputs, params.population_field)


def run_flow_intensity(problem, params):
    """Harmonize ``problem`` (:class:`~bids_app.harmonize.methods.Problem`) with one map.

    The map is chosen on the source (:func:`choose_global_map`); with ``--bias-field auto``
    the mapped volume's smooth field is then measured against the population's and, when
    beyond it, divided out (:mod:`~bids_app.harmonize.field`). The field is measured after
    the map because a contrast change is not a field but looks like one before it is
    undone: under ``u = x ** g`` the log-ratio to the template carries ``g - 1`` times the
    template's own shading (docs/method.md, "A smooth field"). An image the method will not
    change (the out-of-domain fallback) keeps its field.

    Returns a :class:`~bids_app.harmonize.methods.Outcome`: the harmonized slices (in the
    per-slice normalized units of ``problem.slices``), the map per slice for the way back
    to native space, the map itself (with the field divided out after it, if any) and the
    decision record.
    """
    from .methods import Outcome

    values, info = choose_global_map(problem, params)
    reasons = info.pop("fallback_reasons")
    scale = float(np.max(problem.volume))
    mapped = apply_global_map(problem.volume, values, scale)
    field = None if info["fallback"] else _bias_field(mapped, problem, params)
    applied = None
    if field is not None:
        applied = field.pop("correction", None)
        info["bias_field"] = field
    elif info["fallback"] and _field_inputs(problem, params) is not None:
        # the step would have run: say that the field was left as it is
        info["bias_field"] = {"corrected": False}
    if applied is not None:
        mapped = (mapped * correction(applied)).astype(np.float32)
    mapped = volume_to_slices(mapped)
    harmonized = problem.slices.copy()
    lut = np.tile(np.linspace(0.0, 1.0, LUT_KNOTS), (len(problem.slices), 1))
    low, high = problem.low, problem.high
    for k in np.nonzero(problem.valid)[0]:
        span = high[k] - low[k]
        src = low[k] + np.linspace(0, 1, LUT_KNOTS) * span
        lut[k] = (apply_global_map(src, values, scale) - low[k]) / span
        harmonized[k] = (mapped[k] - low[k]) / span
    decision = {**info, "map": [round(float(v), 5) for v in values]}
    global_map = {"values": values, "scale": scale}
    if applied is not None:
        global_map["field"] = applied
    return Outcome(harmonized=harmonized, lut=lut, decision=decision, reasons=reasons,
                   global_map=global_map)


__all__ = ["choose_global_map", "prior_veto", "run_flow_intensity", "select_map",
           "veto_applies"]
