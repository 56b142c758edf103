"""Automatic beta1 for Algorithm 1: candidates run in one batch, the prior picks one.

The paper fixes beta1 (its Table 3: on Gamma 1.5, 1000 loses to histogram matching and
500 wins) and leaves tuning per source domain to future work. Here every candidate runs
Algorithm 1 on the same few informative slices in one batch (per-slice beta1), each result
is carried, as the app carries it, as one monotone intensity map per slice, and the
candidate under which the source is most likely is kept: the source's bits/dim under
"prior + that candidate's maps", by the change of variables (as the default method scores
its maps, so that a map cannot buy likelihood by flattening the image). No target-domain
image of the subject is involved.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..preprocess.intensity_maps import interp_extended
from .intensity import fit_lut, segment_counts
from .paper import blindharmony_paper

#: Normalized source intensities at or below this are background: not used to fit the
#: per-slice maps nor counted in their Jacobian.
HEAD_FLOOR = 0.02

#: Smallest slope (normalized units) a per-slice map is credited with in the Jacobian: the
#: monotone fit leaves flat segments where the result is not increasing, and a zero slope
#: would make any map with one flat segment infinitely unlikely.
SLOPE_FLOOR = 0.05


def slice_maps(source, harmonized, n_knots):
    """Per-slice monotone maps ``source -> harmonized``: numpy ``(B, n_knots)``.

    ``source`` and ``harmonized`` are numpy ``(B, 1, H, W)`` in normalized units.
    """
    return np.stack([fit_lut(s[0], h[0], s[0] > HEAD_FLOOR, n_knots)
                     for s, h in zip(source, harmonized)])


def map_bits_per_dim(flow, source, maps, *, slope_floor=SLOPE_FLOOR):
    """Bits/dim of source slices under "prior + one intensity map per slice".

    ``log p(u) = log p_prior(x) + sum_i log(g'(u_i) / span)`` with ``x = (g(u) - min) / span``
    the min-max normalized mapped slice; the sum runs over head pixels (background carries
    nothing the map could explain). Rescaling a map changes neither ``x`` nor the score.

    Parameters
    ----------
    flow : SliceFlow
    source : numpy ``(B, 1, H, W)``
        Normalized source slices.
    maps : numpy ``(B, K)``
        Knot values of each slice's map on [0, 1].

    Returns
    -------
    numpy ``(B,)``
    """
    n_segments = maps.shape[1] - 1
    mapped = np.stack([interp_extended(s, m) for s, m in zip(source, maps)])
    flat = mapped.reshape(len(mapped), -1)
    low = flat.min(1)
    span = np.maximum(flat.max(1) - low, 1e-6)
    x = (mapped - low[:, None, None, None]) / span[:, None, None, None]
    slopes = np.diff(maps, axis=1) * n_segments / span[:, None]
    log_slopes = np.log(np.maximum(slopes, slope_floor))
    counts = torch.stack([segment_counts(u, n_segments, floor=HEAD_FLOOR)
                          for u in torch.from_numpy(source)]).numpy()
    jacobian = (counts * log_slopes).sum(1)
    dtype = next(flow.parameters()).dtype
    with torch.no_grad():
        bits = flow.bits_per_dim(torch.from_numpy(x).to(flow.device, dtype)).cpu().numpy()
    return bits - jacobian / (flow.dim * math.log(2.0))


@torch.no_grad()
def choose_beta1(flow, xs, x0, *, candidates, alpha, beta2, iterations, n_knots,
                 progress=None):
    """Run Algorithm 1 with every candidate beta1 on the same slices; keep the likeliest.

    Parameters
    ----------
    flow : SliceFlow
    xs, x0 : torch.Tensor ``(B, 1, H, W)``
        Source slices and their initial images (a few informative slices of the volume).
    candidates : sequence of float
        beta1 values to try.
    alpha, beta2, iterations
        Algorithm 1's other settings.
    n_knots : int
        Knots of the per-slice maps.
    progress : callable, optional
        Called once per iteration.

    Returns
    -------
    best : int
        Index of the chosen candidate.
    results : list of torch.Tensor ``(B, 1, H, W)``
        Algorithm 1's result for every candidate (the chosen one is reused).
    scores : list of float
        Mean bits/dim of the source under each candidate's maps (lower is better).
    """
    k, n = len(candidates), len(xs)
    beta1 = torch.tensor([float(c) for c in candidates], dtype=xs.dtype,
                         device=xs.device).repeat_interleave(n)
    x, _ = blindharmony_paper(flow, xs.repeat(k, 1, 1, 1), x0.repeat(k, 1, 1, 1), alpha=alpha,
                              beta1=beta1, beta2=beta2, iterations=iterations,
                              progress=progress)
    results = list(x.split(n))
    source = xs.cpu().numpy()
    scores = []
    for result in results:
        maps = slice_maps(source, result.clamp(0, 1).cpu().numpy(), n_knots)
        scores.append(float(np.mean(map_bits_per_dim(flow, source, maps))))
    return int(np.argmin(scores)), results, scores
