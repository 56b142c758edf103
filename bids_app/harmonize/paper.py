"""Algorithm 1 of Jeong et al. (ICCV 2023), "BlindHarmony", on batches of slices.

The cosine step is ``x <- x + beta1 grad NCC(x, xs)``, with the analytic gradient of the
cosine similarity of the slice pair (sums over the pixels of one slice). Written out,
``beta1 grad NCC = eta (|x| / |xs| xs - NCC x)`` with ``eta = beta1 / |x|^2``: the step
relative to the image is ``beta1`` over the sum of the squared pixels, which grows with
the number of pixels. The paper's ``beta1 = 1000`` on its 144 x 176 slices is therefore
the same step as ``1000 * H W / (144 * 176)`` on ``H x W`` slices (:func:`grid_beta1`):
424.2 on the prior's 96 x 112 grid. (An earlier rule scaled with the square root of the
number of pixels, 651, a step 1.53 times the paper's.)

After each round trip through the flow the image is quantized, ``floor(4080 x) / 4080``,
and clamped to [0, 1] (:func:`quantize`), as the paper's released pipeline does (its flow is
trained on ``(floor(4080 x) + U[0, 1)) / 4096``); a slice whose round trip failed (not
finite, all zero, or above :data:`MAX_VALUE`) keeps its image from before the round trip.
"""

from __future__ import annotations

import torch

from .operators import cosine_similarity_grad, edge_mask, edge_penalty_grad

#: The paper's slice grid (144 x 176 axial slices, 1.2 mm) and its cosine step there.
PAPER_GRID = (144, 176)
PAPER_BETA1 = 1000.0

#: Quantization levels after each round trip: ``floor(QUANT_LEVELS x) / QUANT_LEVELS``.
QUANT_LEVELS = 4080

#: A round trip with any value above this (or not finite, or all zero) has failed.
MAX_VALUE = 100.0


def grid_beta1(shape, beta1=PAPER_BETA1, grid=PAPER_GRID):
    """The ``beta1`` that takes the paper's cosine step on slices of ``shape``.

    The step's size relative to the image is ``beta1 / |x|^2``, and ``|x|^2`` (a sum over
    pixels) grows with the number of pixels when the head fills the same share of the
    slice, so ``beta1`` scales with it: ``beta1 * H W / (H0 W0)``.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the slices.
    beta1 : float
        The step on ``grid`` (the paper's 1000).
    grid : tuple of int
        ``(H0, W0)``, the slices ``beta1`` was chosen for (the paper's 144 x 176).

    Returns
    -------
    float
    """
    return float(beta1) * shape[0] * shape[1] / (grid[0] * grid[1])


def quantize(x, levels=QUANT_LEVELS):
    """``floor(levels x) / levels``, clamped to [0, 1]: the image after a round trip."""
    return (torch.floor(x * levels) / levels).clamp(0.0, 1.0)


def round_trip_ok(x, max_value=MAX_VALUE):
    """Per slice of ``x`` ``(B, 1, H, W)``: finite, not all zero and at most ``max_value``."""
    flat = x.flatten(1)
    finite = torch.isfinite(flat).all(1)
    safe = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
    return finite & (safe.sum(1) != 0) & (safe.max(1).values <= max_value)


@torch.no_grad()
def blindharmony_paper(
    flow, xs, x0, *, alpha=1e-3, beta1=424.2, beta2=1e-3, iterations=10, progress=None
):
    """Harmonize source slices with a flow prior, as in Algorithm 1.

    Each iteration moves the image along the data-term gradient,
    ``x <- x + beta1 grad NCC(x, xs) - beta2 grad M|Gx|``, then shrinks its latent,
    ``z = (1 - alpha) f(x)``, maps back, ``x = f^-1(z)``, and quantizes and clamps the
    result (:func:`quantize`). A slice whose round trip failed (:func:`round_trip_ok`)
    keeps its image from before the round trip. The non-edge mask ``M`` is the source's
    (:func:`~bids_app.harmonize.operators.edge_mask`).

    Parameters
    ----------
    flow : SliceFlow
        Prior trained on the target domain (eval mode).
    xs : torch.Tensor ``(B, 1, H, W)``
        Min-max normalized source slices.
    x0 : torch.Tensor ``(B, 1, H, W)``
        Initial images: the mean training slice at each slice's position.
    alpha, beta2 : float
        Latent shrinkage and edge step.
    beta1 : float or torch.Tensor ``(B,)``
        Cosine-similarity step, one for all slices or one per slice (so that several
        candidate values run in one batch). The default is the paper's step on 96 x 112
        slices (:func:`grid_beta1`, rounded).
    iterations : int
        Number of iterations ``N``.
    progress : callable, optional
        Called once per iteration (e.g. a tqdm bar's ``update``).

    Returns
    -------
    x : torch.Tensor ``(B, 1, H, W)``
        Harmonized slices: in [0, 1], except a slice none of whose round trips succeeded
        (it keeps its last data step).
    z : torch.Tensor ``(B, H*W)``
        The shrunk latents of the last successful round trip of each slice (``x`` is their
        inverse, quantized and clamped).
    """
    mask = edge_mask(xs)
    beta1 = torch.as_tensor(beta1, dtype=xs.dtype, device=xs.device)
    if beta1.ndim:
        beta1 = beta1.reshape(-1, 1, 1, 1)
    x = x0.clone()
    z = None
    for _ in range(iterations):
        x = x + beta1 * cosine_similarity_grad(x, xs) - beta2 * edge_penalty_grad(x, mask)
        z_new = (1.0 - alpha) * flow(x)[0]
        x_new = flow.inverse(z_new)
        ok = round_trip_ok(x_new) & torch.isfinite(z_new).all(1)
        x = torch.where(ok.view(-1, 1, 1, 1), quantize(x_new), x)
        if z is None and not bool(ok.all()):
            z = flow(x)[0]
        z = z_new if z is None else torch.where(ok.view(-1, 1), z_new, z)
        if progress is not None:
            progress(1)
    return x, z
