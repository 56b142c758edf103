"""Carry a harmonization back to the native image without resampling its anatomy.

Harmonization happens on the prior's slice grid. Resampling that result back to native
space would blur the image twice; instead every native voxel keeps its own intensity and
goes through the intensity map of the reference slice it falls in. The maps (one per
reference slice, on normalized intensities, with the slice's scale factors) vary smoothly
from slice to slice and are interpolated linearly along the slice axis, so the change of
intensity is smooth in space and the native resolution is untouched.
"""

from __future__ import annotations

import nibabel as nb
import numpy as np

from .intensity_maps import apply_global_map, apply_slice_map


def _reference_coordinate(native_img, matrix, grid_affine, axis):
    """Continuous reference voxel index along grid ``axis`` of every native voxel."""
    # reference voxel = inv(grid) @ inv(A) @ native_affine @ native voxel
    to_ref = np.linalg.inv(grid_affine) @ np.linalg.inv(matrix) @ native_img.affine
    row = to_ref[axis]
    i, j, k = (np.arange(n, dtype=np.float64) for n in native_img.shape[:3])
    return (
        row[0] * i[:, None, None] + row[1] * j[None, :, None] + row[2] * k[None, None, :] + row[3]
    )


def _slice_coordinate(native_img, matrix, grid_affine):
    """Continuous reference slice index (third grid axis) of every native voxel."""
    return _reference_coordinate(native_img, matrix, grid_affine, 2)


def field_correction(native_img, field, matrix, grid_affine):
    """The factor that divides a smooth field out of every native voxel.

    ``field`` is the ``global_map["field"]`` record of ``flow-intensity``
    (:func:`bids_app.harmonize.field.assess_field`): a polynomial in the reference grid's
    voxel coordinates, evaluated exactly at each native voxel's place in that grid.
    """
    from ..harmonize.field import correction

    index = [_reference_coordinate(native_img, matrix, grid_affine, axis) for axis in range(3)]
    return correction(field, index)


def to_native(native_img, lut, low, high, valid, matrix, grid_affine, global_map=None):
    """Harmonized image on the native grid.

    Parameters
    ----------
    native_img : nibabel.Nifti1Image
        The source image (RAS, as loaded by :func:`~bids_app.preprocess.image.load_t1w`).
    lut : array ``(Z, K)``
        Per reference slice, the map's values at ``K`` uniform knots of [0, 1].
    low, high : arrays ``(Z,)``
        Per-slice scale factors of the reference-space normalization.
    valid : bool array ``(Z,)``
        Slices that were harmonized; the others borrow the nearest valid slice's map.
    matrix : array ``(4, 4)``
        RAS pull matrix of the registration (``p_native = matrix @ p_reference``).
    grid_affine : array ``(4, 4)``
        Affine of the reference slice grid.

    global_map : dict, optional
        ``{"values", "scale"}``: a single monotone map of the whole volume (the
        ``flow-intensity`` method); applied exactly instead of the per-slice maps. With a
        ``"field"`` entry the smooth field it records is divided out of the mapped
        image (:func:`field_correction`).

    Returns
    -------
    nibabel.Nifti1Image
        Same shape, affine and header as ``native_img``; float32 data.
    """
    lut, low, high = np.asarray(lut), np.asarray(low, float), np.asarray(high, float)
    valid_idx = np.nonzero(np.asarray(valid))[0]
    data = np.asanyarray(native_img.dataobj, dtype=np.float64)
    if global_map is not None:
        out = apply_global_map(data, global_map["values"], global_map["scale"])
        if global_map.get("field") is not None:
            out = out * field_correction(native_img, global_map["field"], matrix, grid_affine)
        return _like(native_img, out)
    if valid_idx.size == 0:
        return _like(native_img, data)
    # every grid slice gets the map of the nearest valid slice
    nearest = valid_idx[np.abs(np.arange(len(lut))[:, None] - valid_idx[None]).argmin(1)]
    lut, low, high = lut[nearest], low[nearest], high[nearest]
    coord = np.clip(_slice_coordinate(native_img, matrix, grid_affine), 0, len(lut) - 1)
    k0 = np.minimum(np.floor(coord).astype(int), len(lut) - 2) if len(lut) > 1 else np.zeros(
        coord.shape, dtype=int
    )
    weight = coord - k0
    data = np.ascontiguousarray(data)
    out = np.empty(data.shape, dtype=np.float64)  # C order: reshape(-1) must be a view
    flat_k0 = k0.ravel()
    order = np.argsort(flat_k0, kind="stable")
    bounds = np.searchsorted(flat_k0[order], np.arange(len(lut) + 1))
    flat_data, flat_w, flat_out = data.ravel(), weight.ravel(), out.reshape(-1)
    for k in range(len(lut)):
        sel = order[bounds[k] : bounds[k + 1]]
        if sel.size == 0:
            continue
        values = flat_data[sel]
        first = apply_slice_map(values, lut[k], low[k], high[k])
        if len(lut) > 1:
            second = apply_slice_map(values, lut[k + 1], low[k + 1], high[k + 1])
            w = flat_w[sel]
            flat_out[sel] = (1 - w) * first + w * second
        else:
            flat_out[sel] = first
    return _like(native_img, out)


def _like(native_img, data):
    header = native_img.header.copy()
    header.set_data_dtype(np.float32)
    return nb.Nifti1Image(np.asarray(data, dtype=np.float32), native_img.affine, header)
