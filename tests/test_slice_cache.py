"""The registered-slice cache of ``blindharmony-train`` is keyed by content, not by path.

A dataset mounted anew (another machine, another session, another spelling of its path)
must keep its cache: registering 135 images again costs 20-40 minutes on 2 cores.
"""

import os
import shutil

import nibabel as nb
import numpy as np

from bids_app.cli.train import _cache_labels


def _images(root):
    return [(p.name.split("_")[0][4:], p) for p in sorted(root.rglob("*_T1w.nii.gz"))]


def test_labels_follow_the_images_contents(lib_bids_dir, tmp_path):
    reference = nb.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    original = _images(lib_bids_dir)
    assert len(original) >= 2
    labels = _cache_labels(original, reference)

    copy = tmp_path / "elsewhere" / "ixi"
    shutil.copytree(lib_bids_dir, copy)
    moved = _images(copy)
    os.utime(moved[0][1], (0, 0))  # a new modification time
    assert _cache_labels(moved, reference) == labels

    data = bytearray(moved[1][1].read_bytes())
    data[-1] ^= 0xFF
    moved[1][1].write_bytes(bytes(data))
    changed = _cache_labels(moved, reference)
    assert changed[0] == labels[0] and changed[1] == labels[1] and changed[2] != labels[2]

    other = nb.Nifti1Image(np.zeros((2, 3, 4), np.float32), np.eye(4))
    assert _cache_labels(original, other)[0] != labels[0]
