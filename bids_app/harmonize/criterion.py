"""How well a candidate map explains a source image under the prior: the method's criterion.

A source slice ``u`` is modelled as ``u = g^-1(x)`` with ``x`` a target-domain slice drawn
from the prior and ``g`` an increasing intensity map (possibly varying smoothly in space,
like a bias field). Its log-likelihood under that model is, by the change of variables,

    log p(u | g) = log p_prior(x_n) + sum_i log g'(u_i) - D log span(x)

where ``x_n`` is ``x = g(u)`` min-max normalized per slice (the prior's input), ``span(x)``
its range and ``D`` the number of pixels (:func:`jacobian_criterion`). The sum counts only
pixels above ``floor`` (the background carries no intensity the 12-bit prior resolves).

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
def jacobian_criterion(flow, u, x, log_slope, *, floor=0.0):
    """``log p(u | g)`` in nats per slice (see the module docstring).

    Parameters
    ----------
    u, x : torch.Tensor ``(B, 1, H, W)``
        Source slices and their image under the candidate map, ``x = g(u)``, on the
        volume's scale.
    log_slope : torch.Tensor ``(B, 1, H, W)``
        ``log g'(u)`` at every pixel.
    """
    xn, span = normalize(x)
    counted = (u > floor).to(log_slope.dtype)
    jacobian = (log_slope * counted).flatten(1).sum(1) - flow.dim * torch.log(span)
    return flow.log_prob(xn) + jacobian


@torch.no_grad()
def ratio_criterion(flow, companion, x):
    """``log p_target(x_n) - log p_agnostic(x_n)`` in nats per slice."""
    xn, _ = normalize(x)
    return flow.log_prob(xn) - companion.log_prob(xn)


def criterion(flow, u, x, log_slope, *, companion=None):
    """The criterion of a prior (with its companion, if any), nats per slice."""
    if companion is not None:
        return ratio_criterion(flow, companion, x)
    return jacobian_criterion(flow, u, x, log_slope)


def to_bits_per_dim(nats, flow):
    """Nats per slice -> bits per pixel of the flow's slice."""
    return np.asarray(nats, dtype=np.float64) / (flow.dim * math.log(2.0))


__all__ = ["criterion", "jacobian_criterion", "normalize", "ratio_criterion",
           "to_bits_per_dim"]
