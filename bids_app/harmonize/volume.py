"""Harmonize a whole reference-space volume: normalize, run a method, reassemble, score.

:func:`harmonize_volume` is orchestration only: the parameters come from the method
registry (:func:`~bids_app.harmonize.methods.resolve_params`), what the input is from
:func:`~bids_app.harmonize.evidence.assess_input`, the harmonization from the method's
runner (:mod:`~bids_app.harmonize.selection` for ``flow-intensity``,
:mod:`~bids_app.harmonize.paper_volume` for ``paper``), and the scores from the prior
(:func:`score`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..preprocess.slices import normalize_slices, reassemble
from .criterion import slice_likelihood
from .domain import out_of_domain
from .evidence import assess_input
from .methods import Problem, get_method, hyperparameters, resolve_params
from .operators import cosine_similarity


def check_grid(volume, slices, bundle):
    """Refuse a volume that is not on the prior's slice grid (ValueError)."""
    factor = int(bundle.preprocessing.get("downsample", 1))
    shape = tuple(factor * int(v) for v in bundle.flow.config["shape"])
    if slices.shape[2:] != shape or len(slices) != len(bundle.x0):
        raise ValueError(
            f"volume grid {np.shape(volume)} does not match the prior's slice grid "
            f"{tuple(bundle.reference.shape)}"
        )


def _latent_reasons(latent, evidence, domain):
    """The latent-norm part of the out-of-domain rule: ``(reasons, threshold)``."""
    key = ("latent_norm_threshold_stripped" if evidence["skull_stripped"]
           else "latent_norm_threshold")
    if key not in domain:
        return [], None
    if not out_of_domain(latent, {"latent_norm_threshold": domain[key]}):
        return [], domain[key]
    return [f"latent norm {latent:.3f} over the prior's threshold {domain[key]} (the prior "
            "does not recognize the result)"], domain[key]


def score(problem, outcome, *, started):
    """The metrics of a harmonized volume (its sidecar's quality record).

    Bits/dim and latent norm of the result under the prior, the NCC to the source, the
    out-of-domain flag with its reasons (the method's own and the latent norm's), what the
    input was found to be, and the run time.
    """
    idx = np.nonzero(problem.valid)[0]
    flow, evidence = problem.bundle.flow, problem.evidence
    out = torch.from_numpy(outcome.harmonized[idx]).to(problem.device)
    source = torch.from_numpy(problem.slices[idx]).to(problem.device)
    bpd, latent = slice_likelihood(flow, out)
    src_bpd, _ = slice_likelihood(flow, source)
    ncc = cosine_similarity(out, source).cpu().numpy()
    per_slice = np.full(len(problem.slices), np.nan)
    per_slice[idx] = bpd
    domain = problem.bundle.harmonization.get("out_of_domain") or {}
    extra, threshold = _latent_reasons(float(np.mean(latent)), evidence, domain)
    reasons = list(outcome.reasons) + extra
    return {
        "NCCToSource": round(float(np.mean(ncc)), 5),
        "LatentNorm": round(float(np.mean(latent)), 4),
        "BitsPerDim": round(float(np.mean(bpd)), 4),
        "SourceBitsPerDim": round(float(np.mean(src_bpd)), 4),
        "SliceBitsPerDim": [None if np.isnan(v) else round(float(v), 4) for v in per_slice],
        "OutOfDomain": bool(reasons) if domain or reasons else None,
        "OutOfDomainReasons": reasons,
        "OutOfDomainThreshold": threshold,
        "SkullStripped": evidence["skull_stripped"],
        "ShellFraction": evidence["shell_fraction"],
        "TissueOrder": evidence["tissue_order"],
        "HarmonizedSlices": int(len(idx)),
        "Device": str(problem.device),
        "RunTimeSeconds": round(time.perf_counter() - started, 2),
    }


def harmonize_volume(volume, bundle, *, method=None, params=None, device=None, progress=True):
    """Harmonize a volume that is already on the prior's slice grid.

    Parameters
    ----------
    volume : array ``(X, Y, Z)``
        Source image resampled onto ``bundle.reference``'s grid.
    bundle : PriorBundle
    method : str, optional
        A name of :data:`~bids_app.harmonize.methods.METHODS`; default: the bundle's own.
    params : dict, optional
        The method's parameters set by the user (typed; the rest come from the bundle).
    device : torch.device, optional
        Default: where the bundle's flow is.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    harmonized : float32 array ``(X, Y, Z)``
        In the source's units (the per-slice normalization is undone).
    result : dict
        ``method``, ``params`` (the hyperparameters used, JSON-ready), ``decision`` (what
        the method decided for this image), ``global_map`` (``{"values", "scale"}`` for a
        method that applies one map to the volume, else None), ``lut`` (``(Z, K)``
        per-slice intensity maps in normalized units), ``low``/``high``/``valid``
        (per-slice scale factors) and ``metrics`` (:func:`score`).
    """
    started = time.perf_counter()
    method, typed = resolve_params(bundle, method, params)
    device = torch.device(device) if device is not None else bundle.flow.device
    bundle.flow.to(device).eval()
    slices, low, high, valid = normalize_slices(volume)
    check_grid(volume, slices, bundle)
    problem = Problem(volume=volume, slices=slices, low=low, high=high, valid=valid,
                      bundle=bundle, evidence=assess_input(volume, bundle), device=device,
                      progress=progress)
    outcome = get_method(method).run(problem, typed)
    metrics = score(problem, outcome, started=started)
    return reassemble(outcome.harmonized, low, high), {
        "global_map": outcome.global_map,
        "method": method,
        "params": hyperparameters(typed),
        "decision": outcome.decision,
        "lut": outcome.lut,
        "low": low,
        "high": high,
        "valid": valid,
        "metrics": metrics,
    }


__all__ = ["check_grid", "harmonize_volume", "score"]
