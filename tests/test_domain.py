"""Out-of-domain flag on real data: the shipped prior, a held-out IXI-HH fixture subject."""

import numpy as np
import pytest

from bids_app.harmonize.domain import calibrate_domain, image_latent_norm, out_of_domain
from bids_app.harmonize.volume import harmonize_volume


@pytest.fixture(scope="module")
def bundle(lib_shipped_bundle):
    return lib_shipped_bundle


@pytest.fixture(scope="module")
def volume(lib_reference_volume):
    return lib_reference_volume


def _inverted(volume):
    head = volume > 0.02 * volume.max()
    return np.where(head, volume.max() - volume, 0.0).astype(np.float32)


def test_shipped_prior_records_the_threshold(bundle):
    record = bundle.harmonization["out_of_domain"]
    assert len(record["validation_latent_norm"]) == len(bundle.training["validation_subjects"])
    assert record["latent_norm_threshold"] == pytest.approx(
        1.25 * max(record["validation_latent_norm"]), abs=1e-3)


def test_in_domain_image_is_not_flagged_and_inverted_contrast_is(bundle, volume):
    _, result = harmonize_volume(volume, bundle, progress=False)
    assert result["metrics"]["OutOfDomain"] is False
    threshold = result["metrics"]["OutOfDomainThreshold"]
    assert result["metrics"]["LatentNorm"] < threshold
    _, result = harmonize_volume(_inverted(volume), bundle, progress=False)
    assert result["metrics"]["OutOfDomain"] is True
    assert result["metrics"]["LatentNorm"] > threshold


def test_calibration_and_flag(bundle, volume):
    record = calibrate_domain(bundle.flow, [volume])
    norm = image_latent_norm(bundle.flow, volume)
    assert record["validation_latent_norm"] == [pytest.approx(norm, abs=1e-4)]
    assert out_of_domain(norm, record) is False
    assert out_of_domain(image_latent_norm(bundle.flow, _inverted(volume)), record) is True
    assert out_of_domain(norm, None) is None


def test_a_fallback_records_the_field_left_alone_only_where_it_is_measured(bundle, volume):
    # an image the method will not change keeps its field: the sidecar says so when the
    # bundle could have measured it, and says nothing of a field when it could not
    import copy

    _, result = harmonize_volume(_inverted(volume), bundle, progress=False)
    assert result["decision"]["fallback"] is True
    assert result["decision"]["bias_field"] == {"corrected": False}
    assert "field" not in result["global_map"]
    unfielded = copy.copy(bundle)
    unfielded.harmonization = {
        **bundle.harmonization,
        "flow-intensity": {k: v for k, v in bundle.harmonization["flow-intensity"].items()
                           if k != "population_field"}}
    _, result = harmonize_volume(_inverted(volume), unfielded, progress=False)
    assert result["decision"]["fallback"] is True
    assert "bias_field" not in result["decision"]
