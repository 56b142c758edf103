"""Simulated scanner shifts of the paper's Table 1 (and a bias-field shift).

Per the paper: the image is min-max normalized, transformed, and min-max normalized again.
"""

from __future__ import annotations

import numpy as np

from .metrics import minmax


def bias_field(shape, *, strength=0.35, seed=0):
    """A smooth multiplicative field (B1-like): a random low-order polynomial, mean 1."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = np.zeros(shape)
    terms = [g for g in grids] + [g * h for i, g in enumerate(grids) for h in grids[i:]]
    for term in terms:
        field += rng.normal() * term
    field /= np.abs(field).max() + 1e-12
    return 1.0 + strength * field


SHIFTS = {
    "identity": lambda x: x,
    "exp": np.exp,
    "log": lambda x: np.log1p(x),
    "gamma0.7": lambda x: x**0.7,
    "gamma1.5": lambda x: x**1.5,
}


def apply_shift(volume, name, *, seed=0):
    """Apply a named shift to a volume; returns float32 in [0, 1].

    ``name`` is one of :data:`SHIFTS` or ``"bias+gamma0.8"`` (a smooth multiplicative
    field, then gamma 0.8).
    """
    x = minmax(volume)
    if name == "bias+gamma0.8":
        y = minmax(x * bias_field(x.shape, seed=seed)) ** 0.8
    elif name in SHIFTS:
        y = SHIFTS[name](x)
    else:
        raise ValueError(f"unknown shift {name!r}")
    return minmax(y).astype(np.float32)


ALL_SHIFTS = ["identity", "exp", "log", "gamma0.7", "gamma1.5", "bias+gamma0.8"]


def skull_strip(native, matrix, *, dilation=0):
    """A brain-extracted copy of a native image, as a brain-extraction tool would leave it.

    The shipped template's brain mask (:func:`bids_app.preprocess.masks.template_brain_mask`)
    is carried into the image's space through its registration ``matrix`` (``p_native =
    matrix @ p_reference``, :func:`bids_app.preprocess.registration.register_affine`),
    optionally dilated by ``dilation`` native voxels (a looser extraction), and everything
    outside it is set to 0. Returns a nibabel image with the input's affine and header.
    """
    import nibabel as nb
    from scipy.ndimage import binary_dilation, map_coordinates

    from ..preprocess.masks import BRAIN_MASK, data_path, template_brain_mask

    reference = nb.load(data_path(BRAIN_MASK))
    ijk = np.indices(native.shape[:3]).reshape(3, -1)
    ras = native.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    vox = np.linalg.inv(reference.affine) @ np.linalg.inv(matrix) @ ras
    inside = map_coordinates(template_brain_mask().astype(np.float32), vox[:3], order=1)
    mask = inside.reshape(native.shape[:3]) > 0.5
    if dilation:
        mask = binary_dilation(mask, iterations=dilation)
    data = np.asanyarray(native.dataobj)
    return nb.Nifti1Image(np.where(mask, data, 0).astype(data.dtype), native.affine,
                          native.header)
