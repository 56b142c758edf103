"""Training augmentations and the 4 mm slice grid, on real fixture slices."""

import nibabel as nb
import numpy as np
import pytest

from bids_app.flow.augment import random_brain_masking, random_contrast, random_monotone_map
from bids_app.flow.bundle import load_bundle
from bids_app.preprocess.masks import template_brain_mask
from bids_app.preprocess.registration import register_affine, resample_to_grid
from bids_app.preprocess.slices import (block_mean, downsample_slices, head_fraction,
                                        normalize_slices, volume_to_slices)


@pytest.fixture(scope="module")
def registered(lib_t1w_path):
    bundle = load_bundle()
    img = nb.as_closest_canonical(nb.load(str(lib_t1w_path)))
    matrix = register_affine(img, bundle.reference, num_threads=1)
    return np.asarray(resample_to_grid(img, bundle.reference, matrix), dtype=np.float32)


@pytest.fixture(scope="module")
def slices(registered):
    out, _, _, valid = normalize_slices(registered)
    keep = valid & (head_fraction(out) > 0.2)
    return out[keep]


def test_downsampled_slices_are_normalized_and_keep_the_head(slices):
    coarse = downsample_slices(slices, 2)
    assert coarse.shape == (len(slices), 1, 48, 56)
    assert np.allclose(coarse.min(axis=(1, 2, 3)), 0) and np.allclose(
        coarse.max(axis=(1, 2, 3)), 1)
    # a block mean keeps the head where it was: the same share of head pixels, within 5 %
    assert np.allclose(head_fraction(coarse), head_fraction(slices), atol=0.05)
    assert np.array_equal(downsample_slices(slices, 1), slices)
    with pytest.raises(ValueError, match="divisible"):
        block_mean(slices[:, :, :95], 2)


def test_random_contrast_is_monotone_within_every_slice(slices):
    rng = np.random.default_rng(0)
    batch = slices[:16]
    out = random_contrast(batch, rng, identity=0.0)
    changed = 0
    for before, after in zip(batch[:, 0], out[:, 0]):
        order = np.argsort(before.ravel(), kind="stable")
        # the map is monotone: sorting by the old intensities sorts the new ones (up to
        # the multiplicative field, which is smooth and bounded)
        assert after.min() == 0 and after.max() == pytest.approx(1, abs=1e-6)
        corr = np.corrcoef(before.ravel(), after.ravel())[0, 1]
        assert corr > 0.5
        changed += not np.allclose(before, after, atol=1e-3)
        assert np.all(np.diff(after.ravel()[order]) > -0.5)
    assert changed >= 14


def test_random_monotone_maps_fix_the_ends_and_increase():
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, 501)
    for _ in range(50):
        y = random_monotone_map(x, rng)
        assert y[0] == pytest.approx(0, abs=1e-9) and y[-1] == pytest.approx(1, abs=1e-9)
        assert np.all(np.diff(y) >= -1e-12)


def test_brain_masking_zeroes_the_scalp_and_keeps_the_brain(registered):
    brain = volume_to_slices(template_brain_mask()) > 0.5
    slices, _, _, valid = normalize_slices(registered)
    k = np.nonzero(valid & (brain.mean(axis=(1, 2, 3)) > 0.2))[0][:8]
    out = random_brain_masking(slices[k], brain[k], np.random.default_rng(0), share=1.0,
                               max_shift=0)
    assert np.all(out[~brain[k]] == 0)
    for before, after, mask in zip(slices[k], out, brain[k]):
        inside = mask & (before > 0.05)
        # inside the brain the intensities are only rescaled (by the slice's new maximum)
        ratio = after[inside] / before[inside]
        assert np.allclose(ratio, ratio.mean(), rtol=1e-3) and ratio.mean() >= 1
    untouched = random_brain_masking(slices[k], brain[k], np.random.default_rng(0), share=0.0)
    assert np.array_equal(untouched, slices[k])
