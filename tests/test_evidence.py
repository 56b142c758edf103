"""Skull-stripped and non-T1w input on real data: detection, registration, the safe result."""

import nibabel as nb
import numpy as np
import pytest

from bids_app.evaluation.shifts import skull_strip
from bids_app.flow.bundle import load_bundle
from bids_app.harmonize.evidence import tissue_order
from bids_app.harmonize.quantiles import reference_mask
from bids_app.harmonize.volume import harmonize_volume
from bids_app.preprocess.masks import shell_fraction, skull_stripped, template_brain_mask
from bids_app.preprocess.registration import (register_affine, register_to_reference,
                                              resample_to_grid)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture(scope="module")
def native(lib_t1w_path):
    return nb.as_closest_canonical(nb.load(str(lib_t1w_path)))


@pytest.fixture(scope="module")
def matrix(native, bundle):
    return register_affine(native, bundle.reference, num_threads=1)


@pytest.fixture(scope="module")
def volume(native, bundle, matrix):
    return np.asarray(resample_to_grid(native, bundle.reference, matrix), dtype=np.float32)


@pytest.fixture(scope="module")
def stripped(native, bundle, matrix):
    """The fixture image brain-extracted in its own space, then registered as the app does."""
    image = skull_strip(native, matrix, dilation=1)
    moved, found = register_to_reference(image, bundle.reference, num_threads=1)
    return image, moved, found


def _t2_like(volume):
    head = volume > 0.02 * volume.max()
    return np.where(head, volume.max() - volume, 0.0).astype(np.float32)


def test_whole_head_fills_the_scalp_and_a_stripped_image_does_not(bundle, volume, stripped):
    head, brain = reference_mask(bundle.reference), template_brain_mask()
    assert shell_fraction(volume, head, brain) > 0.8
    assert skull_stripped(volume, head, brain)[0] is False
    image, moved, found = stripped
    assert found is True
    out = resample_to_grid(image, bundle.reference, moved)
    assert skull_stripped(out, head, brain) == (True, pytest.approx(0.0, abs=0.1))


def test_a_stripped_image_is_registered_to_the_brain(bundle, matrix, stripped):
    """Brain points land within 1.5 mm of the whole-head registration (2-6 mm without the
    second pass against the template's brain)."""
    _, moved, _ = stripped
    points = np.argwhere(template_brain_mask())[::40]
    ras = bundle.reference.affine @ np.vstack([points.T, np.ones(len(points))])
    shift = np.linalg.norm((matrix @ ras - moved @ ras)[:3], axis=0)
    assert shift.mean() < 1.5


def test_tissue_order_ignores_monotone_changes_and_sees_inversion(bundle, volume):
    template, brain = np.asarray(bundle.reference.dataobj), template_brain_mask()
    order = tissue_order(volume, template, brain)
    assert order > 0.6
    assert tissue_order(np.exp(volume / volume.max()), template, brain) == pytest.approx(
        order, abs=1e-6)
    assert tissue_order(_t2_like(volume), template, brain) < -0.6
    threshold = bundle.harmonization["out_of_domain"]["tissue_order_threshold"]
    assert order > threshold > 0


def test_skull_stripped_input_is_harmonized_in_the_brain(bundle, stripped):
    image, moved, _ = stripped
    out, result = harmonize_volume(resample_to_grid(image, bundle.reference, moved), bundle,
                                   progress=False)
    metrics, decision = result["metrics"], result["decision"]
    assert metrics["SkullStripped"] is True
    assert decision["selected"] in ("identity", "quantile")
    assert decision["fallback"] is False and metrics["OutOfDomain"] is False
    # the population of brain intensities is the yardstick: the map's distance is small
    assert (decision["consistency"][decision["selected"]]
            <= decision["consistency_threshold"] * 2.5)


def test_t2_like_input_is_flagged_and_left_unchanged(bundle, volume):
    source = _t2_like(volume)
    out, result = harmonize_volume(source, bundle, progress=False)
    assert result["metrics"]["OutOfDomain"] is True
    assert any("tissue order" in r for r in result["metrics"]["OutOfDomainReasons"])
    assert result["decision"]["fallback"] is True
    assert result["decision"]["selected"] == "identity"
    np.testing.assert_allclose(out, source, atol=1e-3 * source.max())


def test_in_domain_input_is_not_flagged(bundle, volume):
    _, result = harmonize_volume(volume, bundle, progress=False)
    assert result["metrics"]["OutOfDomain"] is False
    assert result["metrics"]["OutOfDomainReasons"] == []
    assert result["metrics"]["SkullStripped"] is False
