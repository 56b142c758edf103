"""The prior's own estimate of a source's contrast change: a monotone map and a smooth field.

The source volume ``u`` (on the reference grid, scaled to [0, 1]) is modelled as a
target-domain image seen through an increasing intensity map and a smooth multiplicative
field: the harmonized image is ``x = f * g(u)``, with

- ``g`` piecewise linear on ``segments`` equal segments of [0, 1], its increments the
  softmax of ``theta`` (``theta = 0`` is the identity; every ``theta`` gives an increasing
  map with ``g(0) = 0``, ``g(1) = 1``);
- ``f = exp(sum_j phi_j P_j)``, ``P_j`` the 9 terms of a second-order polynomial in the
  volume's coordinates scaled to [-1, 1] (``phi = 0``: no field), as a B1 inhomogeneity.

``theta`` and ``phi`` maximize the method's criterion summed over the scoring slices (on the
prior's grid, :func:`~bids_app.harmonize.criterion.prior_grid`),

    sum_slices log p(x_n) + sum_i [log g'(u_i) + log f_i] - N log span(x),

with the change of variables over the ``N`` non-background pixels
(:func:`~bids_app.harmonize.criterion.jacobian_criterion`), by L-BFGS with gradients
through the flow. Nothing but the prior decides: no population statistics, no calibration.
This is only as good as the prior's ranking of contrast changes
(``benchmarks/prior_contrast.py``); a prior trained with the ranking term
(:mod:`bids_app.flow.ranking`) is taught exactly what this estimate needs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .criterion import log_likelihood

#: Segments of the monotone map.
SEGMENTS = 8


def field_terms(shape, positions):
    """The 9 second-order polynomial terms on the slices at ``positions`` of a volume.

    ``shape`` is the volume's ``(X, Y, Z)``; returns ``(9, B, 1, X, Y)`` (float32) for the
    ``B`` axial slices at ``positions``, the coordinates scaled to [-1, 1] over the volume.
    """
    x = np.linspace(-1, 1, shape[0])[:, None]
    y = np.linspace(-1, 1, shape[1])[None, :]
    z = np.linspace(-1, 1, shape[2])[np.asarray(positions)]
    grids = [np.broadcast_to(x, shape[:2]), np.broadcast_to(y, shape[:2])]
    out = []
    for k in z:
        g = grids + [np.full(shape[:2], k)]
        terms = g + [a * b for i, a in enumerate(g) for b in g[i:]]
        out.append(np.stack(terms))
    return torch.from_numpy(np.stack(out, axis=1)[:, :, None].astype(np.float32))


def field_volume(phi, shape):
    """The field ``exp(sum_j phi_j P_j)`` on a whole ``(X, Y, Z)`` grid (numpy)."""
    terms = field_terms(shape, np.arange(shape[2]))[:, :, 0].numpy()  # (9, Z, X, Y)
    log_field = np.tensordot(np.asarray(phi, dtype=np.float64), terms, axes=1)
    return np.exp(log_field).transpose(1, 2, 0)


def map_values(theta):
    """Knot values ``(..., segments + 1)`` of the monotone map(s) of ``theta`` ``(..., K)``."""
    increments = torch.softmax(theta, -1)
    zero = increments.new_zeros(*increments.shape[:-1], 1)
    return torch.cat([zero, torch.cumsum(increments, -1)], -1)


def apply_map(u, theta):
    """``(g(u), log g'(u))`` of the piecewise-linear map of ``theta`` on ``u`` in [0, 1].

    ``theta`` is one map ``(K,)`` for every slice of ``u`` ``(B, ...)``, or one per slice
    ``(B, K)``.
    """
    segments = theta.shape[-1]
    values = map_values(theta.expand(len(u), segments))
    increments = torch.diff(values, dim=1)
    t = u.clamp(0, 1).reshape(len(u), -1) * segments
    index = t.floor().clamp(max=segments - 1).long()
    step = increments.gather(1, index)
    mapped = values.gather(1, index) + (t - index) * step
    return mapped.view_as(u), torch.log(step * segments).view_as(u)


def criterion_nats(flow, u, terms, theta, phi, *, floor=0.0):
    """The criterion of ``x = f g(u)`` for each slice of ``u`` ``(B, 1, H, W)``, in nats."""
    mapped, log_slope = apply_map(u, theta)
    log_field = torch.tensordot(phi, terms, dims=1) if phi is not None else 0.0
    return log_likelihood(flow, u, mapped * torch.exp(log_field), log_slope + log_field,
                          floor=floor)


def fit_prior_map(flow, u, terms=None, *, segments=SEGMENTS, iterations=25, floor=0.0):
    """Maximize the criterion over the monotone map (and the field, with ``terms``).

    Parameters
    ----------
    flow : SliceFlow
    u : torch.Tensor ``(B, 1, H, W)``
        Source slices on the prior's grid, on the volume's scale (in [0, 1]).
    terms : torch.Tensor ``(9, B, 1, H, W)``, optional
        :func:`field_terms` of the slices, on the prior's grid; None fits no field.
    iterations : int
        L-BFGS iterations (each one or more forward and backward passes of the flow).

    Returns
    -------
    dict
        ``values`` (the map's knot values, numpy), ``phi`` (the field's coefficients, or
        None), ``bits`` (the criterion at the optimum, bits per pixel, higher is likelier),
        ``identity_bits`` (at the identity) and ``evaluations``.
    """
    was_training = flow.training
    flow.eval()
    for p in flow.parameters():
        p.requires_grad_(False)
    theta = torch.zeros(segments, dtype=u.dtype, device=u.device, requires_grad=True)
    phi = (torch.zeros(terms.shape[0], dtype=u.dtype, device=u.device, requires_grad=True)
           if terms is not None else None)
    scale = 1.0 / (len(u) * flow.dim * math.log(2.0))
    params = [theta] + ([phi] if phi is not None else [])
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations,
                                  line_search_fn="strong_wolfe")
    count = [0]

    def closure():
        optimizer.zero_grad()
        loss = -scale * criterion_nats(flow, u, terms, theta, phi, floor=floor).sum()
        loss.backward()
        count[0] += 1
        return loss

    try:
        with torch.no_grad():
            identity = -float(closure_value(flow, u, terms, theta, phi, floor, scale))
        optimizer.step(closure)
        with torch.no_grad():
            best = -float(closure_value(flow, u, terms, theta, phi, floor, scale))
    finally:
        for p in flow.parameters():
            p.requires_grad_(True)
        flow.train(was_training)
    return {"values": map_values(theta.detach()).cpu().numpy().astype(np.float64),
            "phi": None if phi is None else phi.detach().cpu().numpy().astype(np.float64),
            "bits": best, "identity_bits": identity, "evaluations": count[0]}


def closure_value(flow, u, terms, theta, phi, floor, scale):
    """The loss of :func:`fit_prior_map` at the current parameters (no gradients)."""
    return -scale * criterion_nats(flow, u, terms, theta, phi, floor=floor).sum()


__all__ = ["SEGMENTS", "apply_map", "criterion_nats", "field_terms", "field_volume",
           "fit_prior_map", "map_values"]
