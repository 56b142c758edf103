"""Load a T1-weighted image, check that it can be harmonized, and reorient it to RAS."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np

from ..errors import InputDataError


def load_t1w(path):
    """Read a T1w NIfTI, check it and return it reoriented to RAS with float32 data.

    Parameters
    ----------
    path : str or Path
        A NIfTI-1/2 file (``.nii`` or ``.nii.gz``).

    Returns
    -------
    nibabel.Nifti1Image
        The image in the closest canonical (RAS+) orientation; ``scl_slope`` and
        ``scl_inter`` are applied, so the data are the real intensities.

    Raises
    ------
    InputDataError
        The file is missing, unreadable or truncated, is not 3D (a 4D image with a single
        volume is accepted), has NaN/inf voxels, or is constant/empty.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file not found")
    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many kinds for broken files
        raise InputDataError(
            path, f"cannot read the image ({exc.__class__.__name__}: {_one_line(exc)})"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(
            path, f"expected a 3D image, got {data.ndim}D with shape {tuple(data.shape)}"
        )
    if min(data.shape) < 8:
        raise InputDataError(path, f"image too small to harmonize: shape {data.shape}")
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputDataError(path, f"{bad} voxels are NaN or infinite")
    if float(data.max()) - float(data.min()) <= 0:
        raise InputDataError(path, "the image is constant (or empty)")
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputDataError(path, "the header's affine is singular or not finite")
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    canonical = nb.as_closest_canonical(nb.Nifti1Image(data, affine, header))
    canonical.set_qform(canonical.affine, code=1)
    canonical.set_sform(canonical.affine, code=1)
    return canonical


def _one_line(exc):
    """An exception's message on one line (nibabel's can span several).

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    str
        The non-empty lines of ``str(exc)``, stripped and joined by spaces.
    """
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def reorient_like(img, like):
    """Reorient ``img`` (e.g. a RAS result) to the voxel orientation of ``like``.

    The output then has ``like``'s shape and affine (up to float precision), so a
    derivative lines up voxel for voxel with its source file.
    """
    target = nb.orientations.io_orientation(like.affine)
    return img.as_reoriented(
        nb.orientations.ornt_transform(nb.orientations.io_orientation(img.affine), target)
    )
