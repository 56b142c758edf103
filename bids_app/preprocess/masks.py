"""The reference template's head and brain masks, and what they tell of an input.

``tpl-MNIColin27_res-2_desc-brain_mask.nii.gz`` (package data, found through TemplateFlow
by :func:`bids_app.utils.templates.template_path`) is MRIcron's brain-extracted Colin27
(``ch2bet.nii.gz``, BSD-3-Clause) on the prior's 2 mm grid. It is what skull-stripped
input is recognized and harmonized by, and what the prior's masking augmentation
(``blindharmony-train --mask-augmentation``) cuts training slices with.

:func:`skull_stripped` recognizes brain-only input from how much of the template's scalp
and skull (the head outside the dilated brain) holds signal after registration.

Regenerate the mask with ``python -m bids_app.preprocess.masks CH2BET [OUTPUT]`` (Debian's
``mricron-data`` ships ``/usr/share/mricron/templates/ch2bet.nii.gz``).
"""

from __future__ import annotations

import sys
from functools import lru_cache

import numpy as np

from ..utils.templates import template_path

#: File name of the template's brain mask (what ``python -m bids_app.preprocess.masks``
#: writes by default).
BRAIN_MASK = "tpl-MNIColin27_res-2_desc-brain_mask.nii.gz"


@lru_cache(maxsize=1)
def template_brain_mask():
    """Boolean brain mask ``(X, Y, Z)`` on the shipped 2 mm reference grid."""
    import nibabel as nb

    return np.asarray(nb.load(template_path("mask", desc="brain")).dataobj) > 0


def make_brain_mask(bet_path, reference=None):
    """Resample a brain-extracted template's nonzero voxels onto the reference grid."""
    import nibabel as nb
    from nibabel.processing import resample_from_to

    template = nb.load(reference or template_path("T1w"))
    bet = nb.as_closest_canonical(nb.load(str(bet_path)))
    inside = nb.Nifti1Image((np.asarray(bet.dataobj) > 0).astype(np.float32), bet.affine)
    mask = resample_from_to(inside, template, order=1).get_fdata() > 0.5
    out = nb.Nifti1Image(mask.astype(np.uint8), template.affine)
    out.set_data_dtype(np.uint8)
    return out


#: Voxels above this fraction of the volume's 99th percentile (inside the brain) hold signal.
SIGNAL_FRACTION = 0.05
#: Below this share of the shell holding signal, an image is skull-stripped.
STRIPPED_SHELL = 0.25
#: Voxels the brain mask is dilated by to define the shell, and eroded by for statistics.
SHELL_DILATION = 2
BRAIN_EROSION = 2


def shell_mask(head, brain, dilation=SHELL_DILATION):
    """The head outside the (dilated) brain: where a whole-head image has scalp and skull."""
    from scipy.ndimage import binary_dilation

    return head & ~binary_dilation(brain, iterations=dilation)


def inner_brain(brain, erosion=BRAIN_EROSION):
    """The brain mask eroded by ``erosion`` voxels (robust to brain-extraction edges)."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(brain, iterations=erosion)


def shell_fraction(volume, head, brain):
    """Share of the shell's voxels holding signal (above ``SIGNAL_FRACTION`` of the brain's
    99th percentile)."""
    volume = np.asarray(volume, dtype=np.float64)
    inside = volume[inner_brain(brain)]
    level = SIGNAL_FRACTION * max(float(np.percentile(inside, 99)) if inside.size else 0.0,
                                  1e-12)
    shell = volume[shell_mask(head, brain)]
    return float((shell > level).mean()) if shell.size else 0.0


def skull_stripped(volume, head, brain, threshold=STRIPPED_SHELL):
    """``(stripped, shell fraction)`` of a registered volume."""
    fraction = shell_fraction(volume, head, brain)
    return bool(fraction < threshold), round(fraction, 4)


#: The template's head: voxels above this fraction of its maximum.
HEAD_THRESHOLD = 0.2


def head_mask(reference, threshold=HEAD_THRESHOLD):
    """Boolean mask of a template's head (template > ``threshold`` x max).

    Parameters
    ----------
    reference : nibabel image or array
        The prior's reference template.
    threshold : float
        Fraction of the template's maximum.
    """
    data = np.asanyarray(getattr(reference, "dataobj", reference), dtype=np.float64)
    return data > threshold * data.max()


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
