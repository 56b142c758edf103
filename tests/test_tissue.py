"""Tissue fractions of the quality benchmark, on a real fixture image on the reference grid."""

import nibabel as nb
import numpy as np
import pytest

from bids_app.evaluation.metrics import white_matter_mask
from bids_app.evaluation.shifts import apply_shift
from bids_app.evaluation.tissue import (
    TISSUES,
    fraction_errors,
    segment_tissues,
    tissue_fractions,
)


@pytest.fixture(scope="module")
def registered(lib_t1w_path):
    """IXI052 (a test subject), its registration to the shipped prior's reference grid, and
    a function that puts any native-space version of it on that grid."""
    from bids_app.flow.bundle import load_bundle
    from bids_app.preprocess.registration import register_affine, resample_to_grid

    bundle = load_bundle()
    img = nb.as_closest_canonical(nb.load(str(lib_t1w_path)))
    matrix = register_affine(img, bundle.reference, num_threads=1)

    def on_grid(data):
        native = nb.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine)
        return resample_to_grid(native, bundle.reference, matrix)

    return img.get_fdata(dtype=np.float32), on_grid


def test_fractions_of_a_t1w_image_are_sensible(registered):
    from bids_app.preprocess.masks import template_brain_mask

    native, on_grid = registered
    volume = on_grid(native)
    fractions = tissue_fractions(volume)
    assert list(fractions) == list(TISSUES)
    assert sum(fractions.values()) == pytest.approx(1.0)
    # an adult brain in the template's (generous) brain mask: most of it grey and white
    # matter, some CSF (ventricles, sulci, the mask's edge)
    assert 0.1 < fractions["csf"] < 0.3
    assert 0.3 < fractions["gm"] < 0.55 and 0.25 < fractions["wm"] < 0.5
    labels, thresholds = segment_tissues(volume)
    brain = template_brain_mask()
    assert np.array_equal(labels > 0, brain) and thresholds[0] < thresholds[1]
    means = [volume[labels == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    # the brightest class is the white matter: the bright, eroded tissue of the image
    wm = white_matter_mask(volume) & brain
    assert (labels[wm] == 3).mean() > 0.8
    assert not (labels[wm] == 1).any()


def test_identity_keeps_the_fractions_and_a_contrast_change_moves_them(registered):
    native, on_grid = registered
    clean = tissue_fractions(on_grid(native))
    # the benchmark's identity "shift": min-max, times 1000 (a linear rescaling)
    same = tissue_fractions(on_grid(apply_shift(native, "identity") * 1000.0))
    assert max(fraction_errors(same, clean).values()) < 0.05
    for shift in ("gamma1.5", "sigmoid"):
        moved = fraction_errors(tissue_fractions(on_grid(apply_shift(native, shift))), clean)
        assert max(moved.values()) > 3.0  # percentage points
    errors = fraction_errors({"csf": 0.2, "gm": 0.5, "wm": 0.3},
                             {"csf": 0.25, "gm": 0.45, "wm": 0.3})
    assert errors == pytest.approx({"csf": 5.0, "gm": 5.0, "wm": 0.0})


def test_segmentation_checks_its_input(registered):
    native, on_grid = registered
    with pytest.raises(ValueError, match="shapes differ"):
        tissue_fractions(native)  # native grid, not the reference grid
    from bids_app.preprocess.masks import template_brain_mask

    volume = on_grid(native)
    volume[tuple(np.argwhere(template_brain_mask())[0])] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        tissue_fractions(volume)
