"""Algorithm 1 of Jeong et al. (ICCV 2023), "BlindHarmony", on batches of slices."""

from __future__ import annotations

import torch

from .operators import cosine_similarity_grad, edge_mask, edge_penalty_grad


@torch.no_grad()
def blindharmony_paper(
    flow, xs, x0, *, alpha=1e-3, beta1=651.0, beta2=1e-3, iterations=10, progress=None
):
    """Harmonize source slices with a flow prior, as in Algorithm 1.

    Each iteration moves the image along the data-term gradient,
    ``x <- x + beta1 grad NCC(x, xs) - beta2 grad M|Gx|``, then shrinks its latent,
    ``z = (1 - alpha) f(x)``, and maps back, ``x = f^-1(z)``. A slice whose result is not
    finite keeps its previous value.

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
        candidate values run in one batch).
    iterations : int
        Number of iterations ``N``.
    progress : callable, optional
        Called once per iteration (e.g. a tqdm bar's ``update``).

    Returns
    -------
    x : torch.Tensor ``(B, 1, H, W)``
        Harmonized slices.
    z : torch.Tensor ``(B, H*W)``
        Their latents (before the final shrink).
    """
    masks = edge_mask(xs)
    beta1 = torch.as_tensor(beta1, dtype=xs.dtype, device=xs.device)
    if beta1.ndim:
        beta1 = beta1.reshape(-1, 1, 1, 1)
    x = x0.clone()
    z = None
    for _ in range(iterations):
        x = x + beta1 * cosine_similarity_grad(x, xs) - beta2 * edge_penalty_grad(x, masks)
        z_new = (1.0 - alpha) * flow(x)[0]
        x_new = flow.inverse(z_new)
        ok = torch.isfinite(x_new).flatten(1).all(1) & torch.isfinite(z_new).all(1)
        x = torch.where(ok.view(-1, 1, 1, 1), x_new, x)
        if z is None and not bool(ok.all()):
            z = flow(x)[0]
        z = z_new if z is None else torch.where(ok.view(-1, 1), z_new, z)
        if progress is not None:
            progress(1)
    return x, z
