"""Contrast ranking: training the target prior to prefer each target slice over its
contrast changes, with the change of variables.

The default method estimates a source image's map ``g`` by maximizing the criterion

    C(g; u) = log p(x_n) + sum_i log g'(u_i) - N log span(x),   x = g(u)

(:mod:`bids_app.harmonize.criterion`). For a shifted image ``u = T(x)`` of a target image
``x``, ``C(g; u) = C(g o T; x) - sum_i log T'(x_i)``: the maximum over ``g`` is the true
inverse ``T^-1`` exactly when, on the target image, the identity beats every map ``h``,

    m(h; x) = C(id; x) - C(h; x) > 0.

For the true density of target slices this holds on average over images for every ``h``
(``E_x[m] = KL(p || h^* p) >= 0``, Gibbs' inequality), so it is a property of the prior we
want, not an extra assumption. A flow trained by maximum likelihood alone does not have it
per image: its likelihood is dominated by local pixel statistics and prefers darker,
flatter slices (docs/prior.md). Training adds, to the bits/dim of each batch, a soft hinge
on ``m`` for one random map per slice (:func:`ranking_loss`). The maps are *negatives*: the
prior is taught to reject them, never shown them as target slices (an intensity
augmentation would teach it to accept contrast changes).

The negatives are random monotone piecewise-linear maps with random knots, pulled toward
the identity by a random strength, times (half of the time) a smooth second-order
polynomial field of up to +-40 % (:func:`random_negative`). No family of the contrast
benchmark (powers, exp, log, sigmoids, the benchmark's bias field) is among them: that
benchmark measures how the ranking generalizes to changes the prior was not taught.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..harmonize.prior_map import apply_map
from .augment import random_field

#: Knots of the random piecewise-linear maps (interior knots, uniform positions).
KNOTS = 6


@dataclass(frozen=True)
class Ranking:
    """The ranking term of the training loss.

    Attributes
    ----------
    weight : float
        Weight of the mean hinge against the mean bits/dim.
    temperature : float
        Softness of the hinge, bits/pixel: margins well above it cost nothing.
    field_share : float
        Share of negatives that carry a smooth multiplicative field.
    adversaries : int
        Size of the bank of adversarial maps (:class:`AdversaryBank`); with any, half of
        each batch's negatives are theirs.
    adversary_lr : float
        The adversaries' Adam step.
    """

    weight: float = 1.0
    temperature: float = 0.01
    field_share: float = 0.5
    adversaries: int = 0
    adversary_lr: float = 0.05

    def as_record(self):
        return {"weight": self.weight, "temperature": self.temperature,
                "field_share": self.field_share, "knots": KNOTS,
                "adversaries": self.adversaries, "adversary_lr": self.adversary_lr}


def random_negative(x, rng, *, field_share=0.5):
    """One random contrast change of a slice ``x`` ``(H, W)`` in [0, 1].

    Returns ``(y, log_slope)``: the changed slice, min-max normalized again, and the log
    of the pixelwise derivative of the map ``x -> y`` (normalization included).
    """
    knots = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, KNOTS)), [1.0]])
    values = np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.ones(KNOTS + 1)))])
    slopes = np.diff(values) / np.maximum(np.diff(knots), 1e-9)
    strength = rng.uniform(0.05, 1.0)
    segment = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, KNOTS)
    y = (1 - strength) * x + strength * np.interp(x, knots, values)
    log_slope = np.log((1 - strength) + strength * slopes[segment])
    if rng.random() < field_share:
        field = random_field(x.shape, rng)
        y = y * field
        log_slope = log_slope + np.log(field)
    low, high = float(y.min()), float(y.max())
    span = max(high - low, 1e-6)
    return (y - low) / span, log_slope - math.log(span)


def negatives(batch, rng, *, field_share=0.5):
    """Negatives of a ``(B, 1, H, W)`` batch in [0, 1]: ``(y, jacobian)``.

    ``jacobian`` ``(B,)`` is the change-of-variables term of each map in nats, counted over
    the slice's non-background pixels (``x > 0``: a brain extraction's zeros do not move).
    """
    out = np.empty_like(batch, dtype=np.float32)
    jacobian = np.empty(len(batch))
    for i, slice_ in enumerate(np.asarray(batch, dtype=np.float64)):
        y, log_slope = random_negative(slice_[0], rng, field_share=field_share)
        out[i, 0] = y
        jacobian[i] = float(log_slope[slice_[0] > 0].sum())
    return out, jacobian


def ranking_margin(log_p_x, log_p_y, jacobian, dim):
    """``m(h; x)`` in bits/pixel: ``log p(x) - log p(y) - jacobian`` over ``dim ln 2``."""
    return (log_p_x - log_p_y - jacobian) / (dim * math.log(2.0))


def ranking_loss(margin, temperature):
    """The soft hinge ``t softplus(-m / t)``, mean over the batch (bits/pixel)."""
    return (temperature * F.softplus(-margin / temperature)).mean()


class AdversaryBank:
    """Maps that the prior prefers to the identity, found by the prior itself.

    Random negatives are mostly easy: a prior trained by maximum likelihood already ranks
    about 92 % of them right. What it gets wrong are a few directions (a smooth field that
    flattens the head's shading, a darkening), which random draws seldom hit. Each of the
    bank's ``n`` adversaries is a map of the family the app estimates (an increasing
    piecewise-linear map of ``segments`` segments, softmax increments, times a
    second-order polynomial field ``exp(sum_j phi_j P_j)`` in the slice's coordinates,
    bounded by a tanh to +-``field_bound`` in the log) that follows the gradient of the
    criterion to the maps the prior likes best: after each training step, one Adam step
    lowers the mean margin of its pairs (:meth:`update`, :meth:`step`), while the prior
    learns to reject them. The bank persists across steps, as persistent contrastive
    divergence keeps its chains; it starts at small random maps and is not checkpointed (a
    resumed run starts a new bank, which finds the prior's weak directions again within
    tens of steps).
    """

    def __init__(self, n, shape, *, segments=KNOTS + 1, lr=0.05, field_bound=0.4, seed=0,
                 device="cpu"):
        generator = torch.Generator().manual_seed(seed)
        self.theta = (0.1 * torch.randn(n, segments, generator=generator)).to(device)
        self.phi = (0.1 * torch.randn(n, 5, generator=generator)).to(device)
        self.theta.requires_grad_(True)
        self.phi.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.theta, self.phi], lr=lr)
        self.field_bound = field_bound
        h, w = shape
        y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w),
                              indexing="ij")
        self.terms = torch.stack([y, x, y * y, y * x, x * x]).to(device)  # (5, H, W)

    def __len__(self):
        return len(self.theta)

    def negatives(self, x, counted):
        """Apply adversary ``i % n`` to slice ``i`` of ``x`` ``(B, 1, H, W)`` (clean, in
        [0, 1]): ``(y, jacobian)``, differentiable in the bank's parameters; ``y`` is
        min-max normalized, ``jacobian`` in nats over the ``counted`` pixels."""
        which = torch.arange(len(x), device=x.device) % len(self)
        mapped, log_slope = (a.flatten(1) for a in apply_map(x, self.theta[which]))
        raw = torch.einsum("bj,jhw->bhw", self.phi[which], self.terms).flatten(1)
        log_field = self.field_bound * torch.tanh(raw)
        y = mapped * torch.exp(log_field)
        low = y.min(1, keepdim=True).values
        span = (y.max(1, keepdim=True).values - low).clamp_min(1e-6)
        c = counted.flatten(1).to(y.dtype)
        jacobian = ((log_slope + log_field) * c).sum(1) - c.sum(1) * torch.log(span[:, 0])
        return ((y - low) / span).view_as(x), jacobian

    def update(self, margin):
        """The gradient that lowers the mean margin of the bank's pairs (``margin``, still
        attached to the bank's parameters); :meth:`step` takes it, once the prior's own
        backward pass is done."""
        self._grads = torch.autograd.grad(margin.mean(), [self.theta, self.phi],
                                          retain_graph=True)

    def step(self):
        """One Adam step of every adversary along the gradient of :meth:`update`."""
        self.theta.grad, self.phi.grad = self._grads
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def validation_pairs(slices, *, n=64, seed=0, field_share=0.5):
    """A fixed set of ``n`` (slice, negative, jacobian) validation pairs (numpy)."""
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(slices), size=min(n, len(slices)), replace=False))
    x = np.asarray(slices[index], dtype=np.float32)
    y, jacobian = negatives(x, rng, field_share=field_share)
    return x, y, jacobian


__all__ = ["AdversaryBank", "KNOTS", "Ranking", "negatives", "random_negative", "ranking_loss",
           "ranking_margin", "validation_pairs"]
