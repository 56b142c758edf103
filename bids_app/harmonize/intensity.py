"""Monotone intensity maps: the flow prior chooses a contrast change of the source.

The ``flow-intensity`` method harmonizes by a smooth, monotone, global map ``g`` of the
min-max normalized source slices, ``x_h = g(x_s)``, chosen to maximize the flow prior's
likelihood of the mapped slices. Anatomy is kept by construction (``g`` is invertible and
the same everywhere), so the prior only has to judge contrast, which is what it learns
best from a few CPU-hours of training. The map is piecewise linear on ``K`` uniform knots
of [0, 1], fixed at ``g(0) = 0`` and ``g(1) = 1`` (slices stay min-max normalized), and
parametrized by a softmax over its increments so that every step keeps it increasing.
"""

from __future__ import annotations

import numpy as np
import torch


def knots_from_logits(logits):
    """Map values at the knots ``(K,)`` from unconstrained increments ``(K - 1,)``."""
    increments = torch.softmax(logits, dim=-1)
    return torch.cat([increments.new_zeros(1), torch.cumsum(increments, dim=-1)])


def apply_map(x, values):
    """Evaluate the piecewise-linear map with knot values ``values`` at ``x``.

    Inside [0, 1] the map interpolates its knots; outside it continues linearly with the
    slope of its first or last segment.
    """
    n = values.shape[-1] - 1
    t = x * n
    index = t.floor().clamp(0, n - 1).long()
    frac = t - index
    return values[index] + frac * (values[index + 1] - values[index])


def apply_global_map(x, values, scale):
    """Apply a map fitted on ``x / scale`` to intensities ``x`` (numpy), in ``x``'s units.

    Outside [0, 1] the map continues linearly with its end slopes.
    """
    values = np.asarray(values, dtype=np.float64)
    knots = np.linspace(0.0, 1.0, len(values))
    u = np.asarray(x, dtype=np.float64) / scale
    out = np.interp(u, knots, values)
    slope_lo = (values[1] - values[0]) / knots[1]
    slope_hi = (values[-1] - values[-2]) / knots[1]
    out = np.where(u < 0, values[0] + u * slope_lo, out)
    out = np.where(u > 1, values[-1] + (u - 1) * slope_hi, out)
    return (out * scale).astype(np.float32)


def identity_knots(n_knots):
    """Knot values of the identity map."""
    return np.linspace(0.0, 1.0, n_knots)


def map_log_slopes(values):
    """Log of the slope of every segment of the map with knot values ``values``."""
    n = values.shape[-1] - 1
    return torch.log(torch.diff(values).clamp_min(1e-12) * n)


def segment_counts(u, n_segments):
    """Number of pixels of ``u`` (values in [0, 1]) on each segment of the map."""
    index = (u.clamp(0, 1) * n_segments).floor().clamp(max=n_segments - 1).long()
    return torch.bincount(index.flatten(), minlength=n_segments).to(u.dtype)


def map_log_likelihood(flow, u, values, counts):
    """Log-likelihood (nats per slice) of source slices under "prior + intensity map".

    The source is modelled as ``u = g^-1(x)`` with ``x`` a target-domain slice drawn from
    the prior, after the per-slice min-max normalization of ``g(u)``. By the change of
    variables, ``log p(u | g) = log p_prior(x) + sum_i log g'(u_i) - D log(g(max) - g(min))``,
    which keeps the map from buying likelihood by flattening the image.

    Parameters
    ----------
    u : torch.Tensor ``(B, 1, H, W)``
        Source slices on the volume's scale (volume-normalized, so in [0, 1]).
    values : torch.Tensor ``(K,)``
        Knot values of the map.
    counts : torch.Tensor ``(B, K - 1)``
        Pixels of each slice on each segment (:func:`segment_counts` per slice).
    """
    mapped = apply_map(u, values)
    flat = mapped.flatten(1)
    low = flat.min(1).values
    high = flat.max(1).values
    span = (high - low).clamp_min(1e-6)
    x = (mapped - low.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1)
    jacobian = (counts * map_log_slopes(values)).sum(1) - flow.dim * torch.log(span)
    return flow.log_prob(x) + jacobian


def gamma_knots(gamma, n_knots):
    """Knot values of ``u ** gamma``."""
    return np.linspace(0.0, 1.0, n_knots) ** gamma


def logits_from_knots(values):
    """Inverse of :func:`knots_from_logits` (up to a constant)."""
    increments = np.clip(np.diff(np.asarray(values, dtype=np.float64)), 1e-6, None)
    return np.log(increments / increments.sum())


def fit_intensity_map(
    flow,
    u,
    *,
    n_knots=17,
    steps=40,
    lr=0.05,
    smoothness=0.0,
    gammas=(0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0),
    progress=None,
):
    """Maximum-likelihood monotone intensity map of a source volume under the flow prior.

    A coarse search over the power maps ``u ** gamma`` (forward passes only) picks the
    start; Adam then refines all knots of the piecewise-linear map.

    Parameters
    ----------
    flow : SliceFlow
        Prior in eval mode.
    u : torch.Tensor ``(B, 1, H, W)``
        Source slices divided by the volume's maximum (a subset of the volume suffices).
    n_knots : int
        Knots of the piecewise-linear map on [0, 1].
    steps : int
        Adam steps after the search (0: the best power map).
    lr : float
        Adam learning rate on the increment logits.
    smoothness : float
        Weight of a penalty on the second difference of the knot values.
    gammas : sequence of float
        Power maps tried to initialize.
    progress : callable, optional
        Called once per step.

    Returns
    -------
    values : numpy array ``(n_knots,)``
        Knot values of the map (increasing, from 0 to 1).
    history : list of float
        Negative log-likelihood in bits per pixel: the initial one, then after each step.
    """
    counts = torch.stack([segment_counts(s, n_knots - 1) for s in u])
    requires = [p.requires_grad for p in flow.parameters()]
    for p in flow.parameters():
        p.requires_grad_(False)
    scale = -1.0 / (flow.dim * np.log(2.0))

    def loss_of(values):
        return scale * map_log_likelihood(flow, u, values, counts).mean()

    try:
        with torch.no_grad():
            trials = [
                (float(loss_of(torch.as_tensor(gamma_knots(g, n_knots), dtype=u.dtype,
                                               device=u.device))), g)
                for g in gammas
            ]
        best_loss, best_gamma = min(trials)
        start = gamma_knots(best_gamma, n_knots)
        logits = torch.tensor(logits_from_knots(start), dtype=u.dtype, device=u.device,
                              requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=lr)
        history = [best_loss]
        best = (best_loss, start)
        for _ in range(steps):
            values = knots_from_logits(logits)
            nll = loss_of(values)
            loss = nll
            if smoothness:
                loss = loss + smoothness * torch.diff(values, n=2).pow(2).sum() * n_knots**2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(nll.detach())
            history.append(value)
            if value < best[0]:
                best = (value, values.detach().cpu().double().numpy())
            if progress is not None:
                progress(1)
    finally:
        for p, r in zip(flow.parameters(), requires):
            p.requires_grad_(r)
    return best[1], history


def fit_lut(source, target, mask, n_knots=33):
    """Least-squares monotone fit of ``target ~ g(source)`` on ``n_knots`` uniform knots.

    Used to carry a harmonization that is not a pure intensity map (Algorithm 1) to native
    space: per slice, the binned mean of ``target`` at each knot, made non-decreasing.
    """
    s, t = source[mask], target[mask]
    knots = np.linspace(0, 1, n_knots)
    if s.size < 10:
        return knots.copy()
    width = 1.0 / (n_knots - 1)
    values = np.full(n_knots, np.nan)
    index = np.clip(np.round(s / width).astype(int), 0, n_knots - 1)
    sums = np.bincount(index, weights=t, minlength=n_knots)
    counts = np.bincount(index, minlength=n_knots)
    ok = counts >= 3
    values[ok] = sums[ok] / counts[ok]
    if ok.sum() < 2:
        return knots.copy()
    values = np.interp(knots, knots[ok], values[ok])
    return np.maximum.accumulate(values)
