"""Harmonize a whole reference-space volume: normalize, run a method, reassemble, score."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..preprocess.slices import head_fraction, normalize_slices, reassemble, volume_to_slices
from .beta1 import choose_beta1, slice_maps
from .defaults import DEFAULTS, SELECTIONS
from .domain import out_of_domain
from .intensity import (apply_global_map, fit_intensity_map, golden_section, interp_extended,
                        map_and_normalize, smooth_slice_maps)
from .operators import cosine_similarity
from .paper import blindharmony_paper

METHODS = ("flow-intensity", "paper")


#: Knots of the per-slice intensity maps that carry the result to native space.
LUT_KNOTS = 33


def resolve_params(bundle, method, overrides=None):
    """Hyperparameters of ``method``: package defaults < bundle's record < ``overrides``.

    For ``paper``, ``beta1="auto"`` turns on the automatic beta1 (candidates around the
    prior's value) and a number turns it off.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    params = dict(DEFAULTS.get(method, {}))
    params.update({k: v for k, v in bundle.harmonization.get(method, {}).items()
                   if not k.startswith("validation_")})  # calibration evidence stays in the bundle
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if method == "paper" and given.get("beta1") == "auto":
        del given["beta1"]  # the candidates are factors of the prior's beta1
        given.setdefault("auto_beta1", True)
    elif method == "paper" and "beta1" in given:
        given.setdefault("auto_beta1", False)  # a beta1 given is a beta1 fixed
    params.update(given)
    return params


def scoring_slice_indices(slices, valid, n):
    """Indices of the ``n`` slices holding the most head (the informative ones)."""
    fraction = np.where(valid, head_fraction(slices), -1.0)
    order = np.argsort(-fraction, kind="stable")[: min(n, int(valid.sum()))]
    return np.sort(order)


def select_map(volume, reference, info, population, *, n_knots, gamma_bias=1.0,
               selection="auto", use_prior=True):
    """Check the prior's estimates against the population's quantiles; keep the finest one.

    Two estimates of the source's contrast change are at hand: the prior's (identity for an
    image it finds in its domain, else a power map; precise when the change is a power, blind
    to changes outside that family) and the population quantile map
    (:func:`~bids_app.harmonize.quantiles.quantile_map`: right for any monotone change, up to
    how much one subject's intensity distribution differs from the population's). The
    candidates are tried from the finest to the coarsest: the identity (only when the prior's
    gate found the image in its domain), the prior's power map ``u ** (gamma_hat /
    gamma_bias)``, and the quantile map. The first that is consistent with the population,
    i.e. sends the source's quantiles as close to the population's mean as training images
    are (:func:`~bids_app.harmonize.quantiles.consistency` at most the calibrated
    threshold; for the identity, the looser ``identity_threshold``: leaving an in-domain
    image untouched matters more than catching the mildest shifts), is kept; the quantile
    map always is.

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
    n_knots : int
        Knots of the quantile map.
    gamma_bias : float
        The prior's calibrated bias.
    selection : {"auto", "power", "quantile"}
        ``"power"``/``"quantile"`` force that candidate (for ablations).
    use_prior : bool
        False for input the prior cannot judge (skull-stripped): the candidates are the
        identity, tried on the population's evidence alone, the power map closest to the
        population (golden-section search of the consistency distance), and the quantile
        map.

    Returns
    -------
    values : numpy array
        Knot values of the chosen map.
    info : dict
        ``info`` with ``selected`` (``"identity"``, ``"power"`` or ``"quantile"``), the
        applied ``gamma`` (None for the quantile map) and ``consistency`` (distance of each
        candidate tried, in population spreads) and ``consistency_threshold``.
    """
    from .quantiles import ANCHOR, consistency, population_mask, quantile_map, volume_quantiles

    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {SELECTIONS}")
    mask = population_mask(reference, population)
    levels = np.asarray(population["levels"])
    source = volume_quantiles(volume, mask, levels)
    target = np.asarray(population["relative_quantiles"])
    threshold = float(population["threshold"])
    limits = {"identity": float(population.get("identity_threshold", threshold))}
    knots = np.linspace(0.0, 1.0, n_knots)
    if use_prior:
        gamma = float(info["gamma_hat"]) / gamma_bias
        candidates = {"power": knots ** gamma}
        if info.get("in_domain") and selection == "auto":
            candidates = {"identity": knots, **candidates}
    else:
        # no estimate of the prior: the power map closest to the population instead
        log_gamma, _ = golden_section(
            lambda t: consistency(knots ** float(np.exp(t)), source, population),
            np.log(0.3), np.log(3.0), 20)
        gamma = float(np.exp(log_gamma))
        candidates = {"power": knots ** gamma}
        if selection == "auto":
            candidates = {"identity": knots, **candidates}
    candidates["quantile"] = quantile_map(source, target, n_knots, levels=levels,
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
    than the unshifted image). :func:`harmonize_volume` asks for the veto only when
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


def assess_input(volume, bundle):
    """What the registered source is (:mod:`bids_app.preprocess.masks`,
    :mod:`bids_app.harmonize.evidence`).

    ``skull_stripped`` and its ``shell_fraction``; ``tissue_order``, the rank correlation
    with the prior's template in the brain. Bundles on another grid than the shipped
    template's get no evidence (``None`` values, not stripped).
    """
    from ..preprocess.masks import head_mask, skull_stripped, template_brain_mask
    from .evidence import tissue_order

    brain = template_brain_mask()
    template = np.asarray(bundle.reference.dataobj, dtype=np.float64)
    if brain.shape != np.shape(volume) or brain.shape != template.shape:
        return {"skull_stripped": False, "shell_fraction": None, "tissue_order": None}
    stripped, fraction = skull_stripped(volume, head_mask(template), brain)
    return {"skull_stripped": stripped, "shell_fraction": fraction,
            "tissue_order": round(tissue_order(volume, template, brain), 4)}


def tissue_order_reasons(evidence, domain):
    """The out-of-domain reason the tissue order gives, if any (a list of 0 or 1 strings)."""
    threshold = domain.get("tissue_order_threshold")
    order = evidence.get("tissue_order")
    if threshold is None or order is None or order >= threshold:
        return []
    return [f"tissue order {order:.3f} under {threshold} (the rank correlation with the "
            "prior's template in the brain: not a T1w contrast, e.g. inverted or T2-like, "
            "or a failed registration)"]


def choose_global_map(volume, slices, valid, bundle, params, evidence, *, device,
                      progress=True):
    """``flow-intensity``'s one monotone map of a volume, and the record of the decision.

    The prior's estimate (:func:`~bids_app.harmonize.intensity.fit_intensity_map`), checked
    against the population (:func:`select_map`, with the prior's veto). Skull-stripped
    input is harmonized through the template's brain: the population record measured there
    (``population_brain``) and the prior's estimate calibrated on brain-masked validation
    images (the ``stripped`` record: ``gamma_bias`` and ``gate_bits``); a prior without
    that record cannot judge such slices, and the population decides alone. The result
    falls back to the identity, with the reasons recorded (``fallback_reasons``), when the
    evidence is against any map: the tissue order is not T1w's, or the chosen map
    leaves the image farther from the population than every training image
    (``fallback_threshold``), or a skull-stripped image meets a prior without a brain
    population. ``slices`` and ``valid`` are the volume's :func:`normalize_slices` (computed
    once by :func:`harmonize_volume`).
    """
    from tqdm.auto import tqdm

    flow, stripped = bundle.flow, evidence["skull_stripped"]
    population = params.get("population_brain" if stripped else "population")
    selection = params.get("selection", "auto")
    # the prior's estimate, calibrated on whole-head or on brain-masked validation images
    calibration = params.get("stripped") if stripped else params
    use_prior = bool(calibration) and "gamma_bias" in calibration
    u = torch.from_numpy(volume_to_slices(volume) / float(np.max(volume))).to(device)
    if use_prior:
        chosen = scoring_slice_indices(slices, valid, int(params["scoring_slices"]))
        with tqdm(total=int(params["evaluations"]) + 1, disable=not progress,
                  desc="BlindHarmony (flow-intensity)") as bar:
            values, info = fit_intensity_map(
                flow, u[chosen], n_knots=int(params["knots"]),
                gamma_bias=float(calibration["gamma_bias"]),
                gate_bits=float(calibration["gate_bits"]),
                evaluations=int(params["evaluations"]), progress=bar.update,
            )
    else:
        values = np.linspace(0.0, 1.0, int(params["knots"]))
        info = {"gamma_hat": None, "gamma": 1.0, "in_domain": None}
    if population:
        prior_values, prior_info = values, info
        values, info = select_map(volume, bundle.reference, info, population,
                                  n_knots=int(params["quantile_knots"]),
                                  gamma_bias=float(calibration["gamma_bias"]) if use_prior
                                  else 1.0, selection=selection, use_prior=use_prior)
        if (use_prior and info["selected"] == "quantile" and selection == "auto"
                and veto_applies(info, float(params["veto_consistency"]))):
            values, info = prior_veto(flow, u[np.nonzero(valid)[0]], prior_values, prior_info,
                                      values, info, float(params["veto_bits"]))
    elif selection != "auto":
        raise ValueError("this prior records no population quantiles (recalibrate it "
                         "with blindharmony-train --recalibrate)")
    reasons = tissue_order_reasons(evidence, bundle.harmonization.get("out_of_domain") or {})
    if stripped and not population:
        reasons.append("skull-stripped input, and the prior records no population of brain "
                       "intensities (recalibrate it with blindharmony-train --recalibrate)")
    elif population and population.get("fallback_threshold") is not None:
        distance = info["consistency"][info["selected"]]
        if distance > float(population["fallback_threshold"]):
            reasons.append(f"the map leaves the image {distance:.1f} population spreads from "
                           f"the population, beyond the farthest training image "
                           f"({population['fallback_threshold']})")
    if reasons:
        values = np.linspace(0.0, 1.0, len(values))
        info = {**info, "selected": "identity", "gamma": 1.0}
    return values, {**info, "fallback": bool(reasons), "fallback_reasons": reasons}


@torch.no_grad()
def slice_likelihood(flow, x, batch_size=32):
    """Bits/dim and latent RMS norm of each slice of ``x`` ``(B, 1, H, W)``."""
    bpd, norm = [], []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        z, logabsdet = flow(batch)
        log_prob = flow.base.log_prob(z) + logabsdet
        bpd.append(-log_prob / (flow.dim * np.log(2.0)) + np.log2(4096))
        norm.append(z.norm(dim=1) / np.sqrt(flow.dim))
    return torch.cat(bpd).cpu().numpy(), torch.cat(norm).cpu().numpy()


def harmonize_volume(volume, bundle, *, method=None, params=None, device=None, progress=True):
    """Harmonize a volume that is already on the prior's slice grid.

    Parameters
    ----------
    volume : array ``(X, Y, Z)``
        Source image resampled onto ``bundle.reference``'s grid.
    bundle : PriorBundle
    method : {"flow-intensity", "paper"}, optional
        Default: the bundle's recorded default method.
    params : dict, optional
        Hyperparameter overrides (``None`` values are ignored).
    device : torch.device, optional
        Default: where the bundle's flow is.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    harmonized : float32 array ``(X, Y, Z)``
        In the source's units (the per-slice normalization is undone).
    result : dict
        ``global_map`` (``{"values", "scale"}`` for ``flow-intensity``: one monotone map of
        the whole volume, else None), ``method``, ``params``, ``lut`` (``(Z, LUT_KNOTS)``
        per-slice intensity maps in normalized units), ``low``/``high``/``valid``
        (per-slice scale factors) and ``metrics`` (NCC to the source, latent norm and
        bits/dim per slice and in mean, run time, device).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    method = method or bundle.harmonization.get("method", DEFAULTS["method"])
    params = resolve_params(bundle, method, params)
    flow = bundle.flow
    device = torch.device(device) if device is not None else flow.device
    flow.to(device).eval()
    slices, low, high, valid = normalize_slices(volume)
    if slices.shape[2:] != tuple(flow.config["shape"]) or len(slices) != len(bundle.x0):
        raise ValueError(
            f"volume grid {volume.shape} does not match the prior's slice grid "
            f"{tuple(bundle.reference.shape)}"
        )
    idx = np.nonzero(valid)[0]
    evidence = assess_input(volume, bundle)
    xs = torch.from_numpy(slices[idx]).to(device)
    lut = np.tile(np.linspace(0.0, 1.0, LUT_KNOTS), (len(slices), 1))
    harmonized = slices.copy()
    global_map = None

    if method == "paper":
        iterations = int(params["iterations"])
        x0 = bundle.x0[idx].to(device)
        settings = {"alpha": params["alpha"], "beta2": params["beta2"], "iterations": iterations}
        rest = np.arange(len(idx))
        out = np.empty((len(idx), *slices.shape[1:]), dtype=np.float32)
        auto = bool(params.get("auto_beta1"))
        with tqdm(total=iterations * (2 if auto else 1), disable=not progress,
                  desc="BlindHarmony (paper)") as bar:
            if auto:
                # Candidates on the informative slices in one batch; the chosen one's
                # results there are kept, the other slices run once with it.
                scoring = np.searchsorted(idx, scoring_slice_indices(
                    slices, valid, int(params["scoring_slices"])))
                candidates = [round(float(params["beta1"]) * f, 1)
                              for f in params["beta1_factors"]]
                best, results, scores = choose_beta1(
                    flow, xs[scoring], x0[scoring], candidates=candidates,
                    n_knots=LUT_KNOTS, progress=bar.update, **settings)
                out[scoring] = results[best].cpu().numpy()
                rest = np.setdiff1d(rest, scoring)
                params = {**params, "beta1": candidates[best], "beta1_candidates": candidates,
                          "beta1_bits_per_dim": [round(v, 4) for v in scores]}
            if len(rest):
                x, _ = blindharmony_paper(flow, xs[rest], x0[rest], beta1=params["beta1"],
                                          progress=bar.update, **settings)
                out[rest] = x.cpu().numpy()
        out = np.clip(out, 0, 1)
        harmonized[idx] = out
        lut[idx] = slice_maps(slices[idx], out, LUT_KNOTS)
        sigma = float(params.get("slice_sigma", 0.0))
        if sigma > 0:
            # 3D consistency: one smooth family of maps for both outputs
            lut = smooth_slice_maps(lut, low, high, valid, sigma)
            for k in idx:
                harmonized[k] = interp_extended(slices[k], lut[k]).astype(harmonized.dtype)
    else:
        values, info = choose_global_map(volume, slices, valid, bundle, params, evidence,
                                         device=device, progress=progress)
        reasons = info.pop("fallback_reasons")
        params = {k: v for k, v in params.items()
                  if not k.startswith("population") and k != "stripped"}
        scale = float(np.max(volume))
        stack = volume_to_slices(volume)
        global_map = {"values": values, "scale": scale}
        mapped = apply_global_map(stack, values, scale)
        for k in idx:
            span = high[k] - low[k]
            src = low[k] + np.linspace(0, 1, LUT_KNOTS) * span
            lut[k] = (apply_global_map(src, values, scale) - low[k]) / span
            harmonized[k] = (mapped[k] - low[k]) / span
        params = {**params, **info, "map": [round(float(v), 5) for v in values]}

    out_t = torch.from_numpy(harmonized[idx]).to(device)
    bpd, latent = slice_likelihood(flow, out_t)
    src_bpd, _ = slice_likelihood(flow, xs)
    ncc = cosine_similarity(out_t, xs).cpu().numpy()
    per_slice_bpd = np.full(len(slices), np.nan)
    per_slice_bpd[idx] = bpd
    domain = bundle.harmonization.get("out_of_domain") or {}
    if method == "paper":
        reasons = tissue_order_reasons(evidence, domain)
    latent_key = ("latent_norm_threshold_stripped" if evidence["skull_stripped"]
                  else "latent_norm_threshold")
    flagged = out_of_domain(float(np.mean(latent)), {"latent_norm_threshold": domain[latent_key]}
                            if latent_key in domain else None)
    if flagged:
        reasons.append(f"latent norm {float(np.mean(latent)):.3f} over the prior's threshold "
                       f"{domain[latent_key]} (the prior does not recognize the result)")
    metrics = {
        "NCCToSource": round(float(np.mean(ncc)), 5),
        "LatentNorm": round(float(np.mean(latent)), 4),
        "BitsPerDim": round(float(np.mean(bpd)), 4),
        "SourceBitsPerDim": round(float(np.mean(src_bpd)), 4),
        "SliceBitsPerDim": [None if np.isnan(v) else round(float(v), 4) for v in per_slice_bpd],
        "OutOfDomain": bool(reasons) if domain or reasons else None,
        "OutOfDomainReasons": reasons,
        "OutOfDomainThreshold": domain.get(latent_key),
        "SkullStripped": evidence["skull_stripped"],
        "ShellFraction": evidence["shell_fraction"],
        "TissueOrder": evidence["tissue_order"],
        "HarmonizedSlices": int(len(idx)),
        "Device": str(device),
        "RunTimeSeconds": round(time.perf_counter() - started, 2),
    }
    volume_out = reassemble(harmonized, low, high)
    return volume_out, {
        "global_map": global_map,
        "method": method,
        "params": params,
        "lut": lut,
        "low": low,
        "high": high,
        "valid": valid,
        "metrics": metrics,
    }
