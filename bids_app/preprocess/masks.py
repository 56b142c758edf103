"""The reference template's brain mask, and where it comes from.

``tpl-MNIColin27_res-2_desc-brain_mask.nii.gz`` (package data) is MRIcron's
brain-extracted Colin27 (``ch2bet.nii.gz``, BSD-3-Clause) on the prior's 2 mm grid. It is
what skull-stripped input is recognized and harmonized by, and what the prior's masking
augmentation (``blindharmony-train --mask-augmentation``) cuts training slices with.

Regenerate it with ``python -m bids_app.preprocess.masks CH2BET [OUTPUT]`` (Debian's
``mricron-data`` ships ``/usr/share/mricron/templates/ch2bet.nii.gz``).
"""

from __future__ import annotations

import sys
from functools import lru_cache
from importlib import resources

import numpy as np

BRAIN_MASK = "tpl-MNIColin27_res-2_desc-brain_mask.nii.gz"
TEMPLATE = "tpl-MNIColin27_res-2_T1w.nii.gz"


def data_path(name):
    return str(resources.files("bids_app") / "data" / name)


@lru_cache(maxsize=1)
def template_brain_mask():
    """Boolean brain mask ``(X, Y, Z)`` on the shipped 2 mm reference grid."""
    import nibabel as nb

    return np.asarray(nb.load(data_path(BRAIN_MASK)).dataobj) > 0


def make_brain_mask(bet_path, template_path=None):
    """Resample a brain-extracted template's nonzero voxels onto the reference grid."""
    import nibabel as nb
    from nibabel.processing import resample_from_to

    template = nb.load(template_path or data_path(TEMPLATE))
    bet = nb.as_closest_canonical(nb.load(str(bet_path)))
    inside = nb.Nifti1Image((np.asarray(bet.dataobj) > 0).astype(np.float32), bet.affine)
    mask = resample_from_to(inside, template, order=1).get_fdata() > 0.5
    out = nb.Nifti1Image(mask.astype(np.uint8), template.affine)
    out.set_data_dtype(np.uint8)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m bids_app.preprocess.masks CH2BET [OUTPUT]", file=sys.stderr)
        return 64
    out = argv[1] if len(argv) > 1 else BRAIN_MASK
    make_brain_mask(argv[0]).to_filename(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
