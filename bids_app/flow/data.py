"""Target-domain slices for training: the same path into the reference space as harmonization."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..preprocess.image import load_t1w
from ..preprocess.registration import register_to_reference, resample_to_grid
from ..preprocess.slices import head_fraction, normalize_slices

#: Slices holding less head than this (fraction of pixels above 0.05) are not trained on.
MIN_HEAD_FRACTION = 0.05


def to_reference(path, reference, *, num_threads=1):
    """Load a T1w, register it to ``reference`` and resample it onto the slice grid.

    This is the single code path into the prior's space, shared by training and by the
    participant level.

    Returns
    -------
    volume : float32 array (the reference grid's shape)
    matrix : RAS pull matrix (``p_native = matrix @ p_reference``)
    native : the loaded, RAS-reoriented image
    """
    native = load_t1w(path)
    matrix, _ = register_to_reference(native, reference, num_threads=num_threads)
    return resample_to_grid(native, reference, matrix), matrix, native


@dataclass
class SliceSet:
    """Normalized training slices with where they came from."""

    slices: np.ndarray  # (N, 1, H, W) float32 in [0, 1]
    subject: np.ndarray  # (N,) int index into ``subjects``
    position: np.ndarray  # (N,) slice index on the grid
    subjects: list
    volumes: np.ndarray  # (S, X, Y, Z) per-subject registered volumes scaled to [0, 1]


def extract_slices(paths, reference, *, num_threads=1, progress=None):
    """Bring every image into the reference space and cut it into normalized slices.

    Parameters
    ----------
    paths : list of (subject label, path)
    reference : nibabel.Nifti1Image
    progress : callable, optional
        Called with each label after it is processed.
    """
    keep_slices, keep_subject, keep_position, volumes = [], [], [], []
    for index, (label, path) in enumerate(paths):
        volume, _, _ = to_reference(path, reference, num_threads=num_threads)
        slices, _, _, valid = normalize_slices(volume)
        keep = valid & (head_fraction(slices) >= MIN_HEAD_FRACTION)
        keep_slices.append(slices[keep])
        keep_subject.append(np.full(int(keep.sum()), index))
        keep_position.append(np.nonzero(keep)[0])
        volumes.append(volume / max(float(np.percentile(volume, 99.5)), 1e-6))
        if progress is not None:
            progress(label)
    return SliceSet(
        slices=np.concatenate(keep_slices),
        subject=np.concatenate(keep_subject),
        position=np.concatenate(keep_position),
        subjects=[label for label, _ in paths],
        volumes=np.stack(volumes).astype(np.float32),
    )


def mean_slices(sliceset, n_positions, shape):
    """``x0`` of Algorithm 1: the mean training slice at every slice position.

    Positions that no training slice covers get the mean of all slices.
    """
    x0 = np.zeros((n_positions, 1, *shape), dtype=np.float64)
    counts = np.bincount(sliceset.position, minlength=n_positions)
    np.add.at(x0, sliceset.position, sliceset.slices)
    overall = sliceset.slices.mean(axis=0)
    for k in range(n_positions):
        x0[k] = x0[k] / counts[k] if counts[k] else overall
    return x0.astype(np.float32)
