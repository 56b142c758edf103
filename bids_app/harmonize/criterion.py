"""How well a candidate map explains a source image under the prior: the method's criterion.

A source slice ``u`` is modelled as ``u = g^-1(x)`` with ``x`` a target-domain slice drawn
from the prior and ``g`` an increasing intensity map (possibly varying smoothly in space,
like a bias field). Its log-likelihood under that model is, by the change of variables,

    log p(u | g) = log p_prior(x_n) + sum_i log g'(u_i) - N log span(x)

where ``x_n`` is ``x = g(u)`` min-max normalized per slice (the prior's input), ``span(x)``
its range and ``N`` the number of pixels counted (:func:`jacobian_criterion`). Both sums
count only pixels above ``floor``: the background's zeros carry no intensity the 12-bit
prior resolves and do not move with the map (counting them in the span term rewards
darker maps wherever a slice is mostly zero, as a skull-stripped slice is).
``span_pixels="all"`` counts every pixel in the span term instead: the convention of
bundles calibrated before session 7, kept to reproduce their numbers
(:func:`~bids_app.harmonize.intensity.map_log_likelihood` has the same switch).

With a contrast-agnostic companion (:mod:`bids_app.flow.augment`) the criterion is the
log-ratio ``log p_target(x_n) - log p_agnostic(x_n)`` (:func:`ratio_criterion`): the
Jacobian is the same in both terms and cancels, and so does what both flows share (local
pixel statistics), leaving what is specific to the target's contrast.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def normalize(x):
    """Min-max each slice of ``(B, 1, H, W)``; returns ``(normalized, span)``."""
    flat = x.flatten(1)
    low = flat.min(1).values
    span = (flat.max(1).values - low).clamp_min(1e-6)
    return (x - low.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1), span


@torch.no_grad()
def jacobian_criterion(flow, u, x, log_slope, *, floor=0.0, span_pixels="counted"):
    """``log p(u | g)`` in nats per slice (see the module docstring).

    Parameters
    ----------
    u, x : torch.Tensor ``(B, 1, H, W)``
        Source slices and their image under the candidate map, ``x = g(u)``, on the
        volume's scale.
    log_slope : torch.Tensor ``(B, 1, H, W)``
        ``log g'(u)`` at every pixel.
    span_pixels : {"counted", "all"}
        The pixels of the span term: the counted ones (the method's) or all of them.
    """
    return log_likelihood(flow, u, x, log_slope, floor=floor, span_pixels=span_pixels)


def log_likelihood(flow, u, x, log_slope, *, floor=0.0, span_pixels="counted"):
    """:func:`jacobian_criterion` with gradients (for maps fitted through the flow)."""
    if span_pixels not in ("counted", "all"):
        raise ValueError(f"span_pixels must be 'counted' or 'all', not {span_pixels!r}")
    xn, span = normalize(x)
    counted = (u > floor).to(log_slope.dtype)
    pixels = counted.flatten(1).sum(1) if span_pixels == "counted" else flow.dim
    jacobian = (log_slope * counted).flatten(1).sum(1) - pixels * torch.log(span)
    return flow.log_prob(xn) + jacobian


@torch.no_grad()
def ratio_criterion(flow, companion, x):
    """``log p_target(x_n) - log p_agnostic(x_n)`` in nats per slice."""
    xn, _ = normalize(x)
    return flow.log_prob(xn) - companion.log_prob(xn)


def criterion(flow, u, x, log_slope, *, companion=None, span_pixels="counted"):
    """The criterion of a prior (with its companion, if any), nats per slice."""
    if companion is not None:
        return ratio_criterion(flow, companion, x)
    return jacobian_criterion(flow, u, x, log_slope, span_pixels=span_pixels)


def prior_grid(flow, x, *, renormalize=False):
    """``(B, 1, H, W)`` slices on the prior's own grid.

    A prior trained on block-averaged slices (``blindharmony-train --downsample 2``: 4 mm on
    the 2 mm grid) sees the block means of the reference-grid slices, as in training
    (:func:`~bids_app.preprocess.slices.downsample_slices`); the factor is the ratio of the
    two grids. ``renormalize`` min-maxes each slice again (for slices that were min-maxed on
    the fine grid, as the training slices were); maps and their change of variables are
    evaluated on the block means of the source, before any normalization.
    """
    height, width = (int(v) for v in flow.config["shape"])
    if tuple(x.shape[-2:]) == (height, width):
        return x
    factor = x.shape[-2] // height
    if factor < 2 or x.shape[-2] != factor * height or x.shape[-1] != factor * width:
        raise ValueError(f"slices of {tuple(x.shape[-2:])} do not match the prior's grid "
                         f"{(height, width)}")
    out = torch.nn.functional.avg_pool2d(x, factor)
    if not renormalize:
        return out
    flat = out.flatten(1)
    empty = (flat.amax(1) <= flat.amin(1)).view(-1, 1, 1, 1)
    return torch.where(empty, torch.zeros_like(out), normalize(out)[0])


def slice_likelihood(flow, x, batch_size=32):
    """Bits/dim and latent RMS norm of each min-max normalized slice of ``x`` ``(B, 1, H, W)``.

    ``x`` is on the reference grid or on the prior's (:func:`prior_grid`);
    :meth:`~bids_app.flow.model.SliceFlow.evaluate` does the rest.
    """
    return flow.evaluate(prior_grid(flow, x, renormalize=True), batch_size=batch_size)


def to_bits_per_dim(nats, flow):
    """Nats per slice -> bits per pixel of the flow's slice."""
    return np.asarray(nats, dtype=np.float64) / (flow.dim * math.log(2.0))


__all__ = ["criterion", "jacobian_criterion", "log_likelihood", "normalize", "prior_grid",
           "ratio_criterion", "slice_likelihood", "to_bits_per_dim"]
