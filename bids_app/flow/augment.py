"""Random monotone contrast changes: the training data of the contrast-agnostic companion.

The target prior is never trained on these (an intensity augmentation would teach it to
accept contrast changes). Its companion, the same flow trained on the same slices after a
random change of contrast, learns what every contrast of a head slice shares: local pixel
statistics, the anatomy's shape. The log-ratio of the two likelihoods keeps what is
specific to the target's contrast (``docs/prior.md``).

Each change is one of

- a power ``x ** g`` with ``log g`` uniform in ``[log 0.4, log 2.5]``;
- an exponential family ``(exp(k x) - 1) / (exp(k) - 1)`` with ``k`` uniform in
  ``[-6, 6]`` (negative ``k`` is log-like, positive exp-like);
- a random monotone piecewise-linear map with 6 segments (Dirichlet increments);

each preceded, with probability one half, by a smooth multiplicative field (a random
second-order polynomial in the slice's coordinates, up to +-40 %), and with probability
``identity`` nothing at all. Every slice is min-max normalized again afterwards, as the
benchmark's shifts are.
"""

from __future__ import annotations

import numpy as np

#: Share of slices the companion sees unchanged.
IDENTITY_SHARE = 1 / 6


def random_monotone_map(x, rng):
    """Apply one random monotone map of [0, 1] onto itself (``g(0) = 0``, ``g(1) = 1``)."""
    kind = rng.integers(3)
    if kind == 0:
        return x ** float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))
    if kind == 1:
        k = rng.uniform(-6.0, 6.0)
        if abs(k) < 1e-3:
            return x
        return np.expm1(k * x) / np.expm1(k)
    knots = np.linspace(0.0, 1.0, 7)
    values = np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.full(6, 1.5)))])
    return np.interp(x, knots, values)


def random_field(shape, rng, *, strength=0.4):
    """A smooth multiplicative field on a 2D slice: second-order polynomial, mean 1."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    terms = list(grids) + [g * h for i, g in enumerate(grids) for h in grids[i:]]
    field = sum(rng.normal() * t for t in terms)
    field /= np.abs(field).max() + 1e-12
    return 1.0 + rng.uniform(0.0, strength) * field


def random_contrast(batch, rng, *, identity=IDENTITY_SHARE):
    """Randomly change the contrast of each slice of a ``(B, 1, H, W)`` batch in [0, 1].

    Returns a new float32 array; every slice is min-max normalized again.
    """
    out = np.array(batch, dtype=np.float64, copy=True)
    for i in range(len(out)):
        if rng.random() < identity:
            continue
        x = out[i, 0]
        if rng.random() < 0.5:
            x = np.clip(x * random_field(x.shape, rng), 0.0, None)
            x = x / max(float(x.max()), 1e-12)
        x = random_monotone_map(np.clip(x, 0.0, 1.0), rng)
        low, high = float(x.min()), float(x.max())
        out[i, 0] = (x - low) / (high - low) if high > low else 0.0
    return out.astype(np.float32)


def random_brain_masking(batch, masks, rng, *, share=0.2, max_shift=2, factor=1):
    """Skull-strip a random ``share`` of the slices with their brain-mask slices.

    A geometric change, not an intensity one: the slice keeps its contrast inside the
    brain and is zero outside, as a brain extraction leaves it. Each mask is dilated or
    eroded by up to ``max_shift`` pixels first (brain-extraction tools disagree on the
    edge). ``masks`` are boolean ``(B, 1, H, W)``, the template's brain mask at each slice's
    position, on a grid ``factor`` times finer than the slices: the mask is then
    block-averaged to the slices' grid, so that its edge is soft, as a brain extraction at
    the finer resolution leaves it on the coarse grid. Slices are min-max normalized again.
    """
    from scipy.ndimage import binary_dilation, binary_erosion

    from ..preprocess.slices import block_mean

    out = np.array(batch, dtype=np.float32, copy=True)
    for i in range(len(out)):
        if rng.random() >= share or not masks[i].any():
            continue
        mask = masks[i, 0]
        shift = int(rng.integers(-max_shift, max_shift + 1))
        if shift > 0:
            mask = binary_dilation(mask, iterations=shift)
        elif shift < 0:
            mask = binary_erosion(mask, iterations=-shift)
        if factor > 1:
            mask = block_mean(mask[None, None].astype(np.float32), factor)[0, 0]
        x = out[i, 0] * mask
        high = float(x.max())
        out[i, 0] = x / high if high > 0 else 0.0
    return out


__all__ = ["IDENTITY_SHARE", "random_brain_masking", "random_contrast", "random_field",
           "random_monotone_map"]
