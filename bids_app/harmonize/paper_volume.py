"""``paper`` on a whole volume: Algorithm 1 on every slice, as the registry runs it.

:func:`run_paper` is the method's runner (:data:`~bids_app.harmonize.methods.METHODS`):
Algorithm 1 (:func:`~bids_app.harmonize.paper.blindharmony_paper`) on every slice holding
head, with beta1 chosen per image when asked (:func:`~bids_app.harmonize.beta1.
choose_beta1`), then the per-slice intensity maps that carry the result to native space
(:func:`~bids_app.harmonize.beta1.slice_maps`), smoothed across slices against striping
(:func:`~bids_app.harmonize.intensity.smooth_slice_maps`).
"""

from __future__ import annotations

import numpy as np

from ..preprocess.intensity_maps import interp_extended
from ..preprocess.slices import scoring_slice_indices
from .beta1 import choose_beta1, slice_maps
from .evidence import tissue_order_reasons
from .intensity import smooth_slice_maps
from .methods import LUT_KNOTS, Outcome
from .paper import blindharmony_paper


def _auto_beta1(problem, params, xs, x0, settings, progress):
    """Choose beta1 on the informative slices; their results and the decision record."""
    idx = np.nonzero(problem.valid)[0]
    scoring = np.searchsorted(idx, scoring_slice_indices(problem.slices, problem.valid,
                                                         params.scoring_slices))
    candidates = [round(params.beta1 * f, 1) for f in params.beta1_factors]
    best, results, scores = choose_beta1(
        problem.bundle.flow, xs[scoring], x0[scoring], candidates=candidates,
        n_knots=LUT_KNOTS, progress=progress, **settings)
    decision = {"beta1": candidates[best], "beta1_candidates": candidates,
                "beta1_bits_per_dim": [round(v, 4) for v in scores]}
    return scoring, results[best].cpu().numpy(), decision


def run_paper(problem, params):
    """Harmonize ``problem`` (:class:`~bids_app.harmonize.methods.Problem`) by Algorithm 1.

    With ``params.auto_beta1`` the candidates run on the informative slices in one batch;
    the chosen one's results there are kept, and the other slices run once with it.
    Returns an :class:`~bids_app.harmonize.methods.Outcome` (``decision`` holds the chosen
    beta1 and the candidates' scores when beta1 was chosen).
    """
    import torch
    from tqdm.auto import tqdm

    if problem.bundle.preprocessing.get("downsample", 1) != 1:
        raise ValueError("the paper method's output is the prior's own image: it needs a "
                         "prior on the reference grid, not a downsampled one")
    slices, valid = problem.slices, problem.valid
    idx = np.nonzero(valid)[0]
    xs = torch.from_numpy(slices[idx]).to(problem.device)
    x0 = problem.bundle.x0[idx].to(problem.device)
    settings = {"alpha": params.alpha, "beta2": params.beta2, "iterations": params.iterations}
    rest = np.arange(len(idx))
    out = np.empty((len(idx), *slices.shape[1:]), dtype=np.float32)
    decision = {}
    with tqdm(total=params.iterations * (2 if params.auto_beta1 else 1),
              disable=not problem.progress, desc="BlindHarmony (paper)") as bar:
        beta1 = params.beta1
        if params.auto_beta1:
            scoring, out_scoring, decision = _auto_beta1(problem, params, xs, x0, settings,
                                                         bar.update)
            out[scoring] = out_scoring
            rest = np.setdiff1d(rest, scoring)
            beta1 = decision["beta1"]
        if len(rest):
            x, _ = blindharmony_paper(problem.bundle.flow, xs[rest], x0[rest], beta1=beta1,
                                      progress=bar.update, **settings)
            out[rest] = x.cpu().numpy()
    out = np.clip(out, 0, 1)
    harmonized = slices.copy()
    harmonized[idx] = out
    lut = np.tile(np.linspace(0.0, 1.0, LUT_KNOTS), (len(slices), 1))
    lut[idx] = slice_maps(slices[idx], out, LUT_KNOTS)
    if params.slice_sigma > 0:
        # 3D consistency: one smooth family of maps for both outputs
        lut = smooth_slice_maps(lut, problem.low, problem.high, valid, params.slice_sigma)
        for k in idx:
            harmonized[k] = interp_extended(slices[k], lut[k]).astype(harmonized.dtype)
    domain = problem.bundle.harmonization.get("out_of_domain") or {}
    return Outcome(harmonized=harmonized, lut=lut, decision=decision,
                   reasons=tissue_order_reasons(problem.evidence, domain))


__all__ = ["run_paper"]
