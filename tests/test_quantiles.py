"""Population quantiles in the reference space and the flow-intensity map selection.

Real data: the three IXI-HH fixture subjects registered to the shipped prior's reference
(IXI052, IXI094 and IXI146 are test subjects: never used to train or calibrate the prior).
"""

import nibabel as nb
import numpy as np
import pytest

from bids_app.evaluation.metrics import summarize
from bids_app.evaluation.shifts import apply_shift
from bids_app.flow.bundle import load_bundle
from bids_app.preprocess.intensity_maps import apply_global_map
from bids_app.harmonize.quantiles import (
    consistency,
    population_statistics,
    quantile_map,
    reference_mask,
    volume_quantiles,
)
from bids_app.harmonize.selection import select_map
from bids_app.harmonize.volume import harmonize_volume
from bids_app.preprocess.registration import register_affine, resample_to_grid

SUBJECTS = ("IXI052", "IXI094", "IXI146")


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture(scope="module")
def volumes(bundle, lib_bids_dir):
    out = {}
    for sub in SUBJECTS:
        img = nb.as_closest_canonical(
            nb.load(str(lib_bids_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")))
        matrix = register_affine(img, bundle.reference, num_threads=1)
        out[sub] = np.asarray(resample_to_grid(img, bundle.reference, matrix), dtype=np.float64)
    return out


@pytest.fixture(scope="module")
def mask(bundle):
    return reference_mask(bundle.reference)


def _harmonize_with_quantiles(volume, mask, population):
    values = quantile_map(volume_quantiles(volume, mask), population, 65)
    return apply_global_map(volume, values, volume.max())


def test_quantile_map_keeps_the_anchor_and_is_not_pinned_at_the_maximum(volumes, mask, bundle):
    population = bundle.harmonization["flow-intensity"]["population"]
    target = np.asarray(population["relative_quantiles"])
    source = volume_quantiles(volumes["IXI094"], mask)
    values = quantile_map(source, target, 257)
    knots = np.linspace(0, 1, 257)
    assert values[0] == 0 and np.all(np.diff(values) > 0)
    anchor = int(np.argmin(np.abs(np.asarray(population["levels"]) - population["anchor"])))
    # the source's anchor quantile is a fixed point
    assert np.interp(source[anchor], knots, values) == pytest.approx(source[anchor], rel=1e-3)
    # above the source's highest quantile the map is a straight line with the slope of
    # the population's top quantiles over the source's (not bent to reach g(1) = 1)
    top = knots > source[-1] + 0.01
    slopes = np.diff(values[top]) / np.diff(knots[top])
    expected = (target[-1] - target[anchor]) * source[anchor] / (source[-1] - source[anchor])
    np.testing.assert_allclose(slopes, expected, rtol=1e-6)


def test_mask_is_the_template_head(bundle, mask):
    data = np.asanyarray(bundle.reference.dataobj)
    assert mask.shape == data.shape
    assert 0.2 < mask.mean() < 0.7  # a head inside a field of view with background
    assert data[mask].min() > 0.2 * data.max()


def test_population_statistics_are_in_spread_units(volumes, mask):
    stats = population_statistics(list(volumes.values()), mask)
    assert len(stats["quantiles"]) == len(stats["levels"]) == len(stats["scale"]) == 100
    # every level but the anchor (1 by construction) has a spread of its own
    assert sum(s == 0 for s in stats["scale"]) == 1
    assert np.all(np.diff(stats["quantiles"]) >= 0)
    distances = [consistency(np.linspace(0, 1, 5), volume_quantiles(v, mask), stats)
                 for v in volumes.values()]
    # by construction the members of the population are one spread away on average
    assert np.mean(distances) == pytest.approx(1.0, rel=1e-3)
    assert stats["threshold"] == pytest.approx(np.percentile(distances, 80), rel=1e-3)
    assert stats["identity_threshold"] == pytest.approx(np.percentile(distances, 95), rel=1e-3)


@pytest.mark.parametrize("shift", ["exp", "gamma0.7", "gamma1.5"])
def test_quantile_map_ignores_any_monotone_change(volumes, mask, bundle, shift):
    population = np.asarray(
        bundle.harmonization["flow-intensity"]["population"]["relative_quantiles"])
    clean = volumes["IXI052"]
    shifted = apply_shift(clean, shift, seed=0).astype(np.float64)
    a = _harmonize_with_quantiles(clean, mask, population)
    b = _harmonize_with_quantiles(shifted, mask, population)
    # the same image comes out whatever monotone change went in (up to the change's
    # curvature over the brightest 0.5 %, where the map is a straight line)
    assert summarize(b, a)["psnr"] > 37.0
    # and it is close to the unshifted source (the population is the same scanner)
    assert summarize(b, clean)["psnr"] > summarize(shifted, clean)["psnr"] + 5.0


def test_consistency_separates_shifted_from_in_domain(volumes, mask, bundle):
    population = bundle.harmonization["flow-intensity"]["population"]
    target = np.asarray(population["relative_quantiles"])
    identity = np.linspace(0, 1, 33)
    for sub, clean in volumes.items():
        # held-out target-domain subjects are consistent with the identity
        in_domain = consistency(identity, volume_quantiles(clean, mask), population)
        assert in_domain < population["threshold"], sub
        for shift in ("exp", "log", "gamma0.7", "gamma1.5"):
            source = volume_quantiles(apply_shift(clean, shift, seed=0).astype(np.float64), mask)
            # the mild Exp and Log are caught too; power shifts by a wide margin
            margin = 3.0 if shift.startswith("gamma") else 1.0
            assert consistency(identity, source, population) > margin * population["threshold"], (
                sub, shift)
            # the quantile map sends the source onto the population
            assert consistency(quantile_map(source, target, 65), source, population) < 0.3


def test_shipped_prior_records_its_population(bundle):
    population = bundle.harmonization["flow-intensity"]["population"]
    assert population["n_volumes"] >= 100  # the IXI-HH training subjects
    assert 0 < population["threshold"] < 10
    assert population["mask_threshold"] == 0.2


def _info(in_domain, gamma_hat):
    return {"gamma_hat": gamma_hat, "gamma": 1.0 if in_domain else gamma_hat,
            "gain_bits": 0.0, "in_domain": in_domain}


def test_select_map_order(volumes, bundle):
    population = bundle.harmonization["flow-intensity"]["population"]
    clean = volumes["IXI094"]
    # in domain and consistent: the identity
    values, info = select_map(clean, bundle.reference, _info(True, 1.0), population, n_knots=65)
    assert info["selected"] == "identity"
    np.testing.assert_allclose(values, np.linspace(0, 1, 65))
    # a power shift with the right power estimate: the power map
    shifted = apply_shift(clean, "gamma1.5", seed=0).astype(np.float64)
    values, info = select_map(shifted, bundle.reference, _info(False, 1 / 1.5), population,
                              n_knots=65)
    assert info["selected"] == "power" and info["gamma"] == pytest.approx(1 / 1.5, rel=1e-3)
    # a wrong power estimate is caught by the population: the quantile map
    values, info = select_map(shifted, bundle.reference, _info(True, 1.0), population,
                              n_knots=65)
    assert info["selected"] == "quantile" and info["gamma"] is None
    assert info["consistency"]["identity"] > info["consistency_threshold"]
    assert info["consistency"]["power"] > info["consistency_threshold"]
    # forcing a candidate (ablation) skips the test
    _, info = select_map(clean, bundle.reference, _info(True, 1.0), population, n_knots=65,
                         selection="quantile")
    assert info["selected"] == "quantile"
    with pytest.raises(ValueError, match="selection"):
        select_map(clean, bundle.reference, _info(True, 1.0), population, n_knots=65,
                   selection="nonsense")


def test_flow_intensity_undoes_a_contrast_change_outside_the_power_family(volumes, bundle):
    clean = volumes["IXI146"]
    u = clean / clean.max()
    shifted = (3 * u**2 - 2 * u**3) * 1000.0  # smoothstep: not a power of the source
    harmonized, result = harmonize_volume(shifted.astype(np.float32), bundle, progress=False)
    assert result["decision"]["selected"] == "quantile"
    before, after = summarize(shifted, clean), summarize(harmonized, clean)
    assert after["psnr"] > before["psnr"] + 8.0
    assert after["ssim"] > before["ssim"]


def test_prior_veto(volumes, bundle):
    import torch

    from bids_app.harmonize.selection import prior_veto
    from bids_app.preprocess.slices import normalize_slices, volume_to_slices

    clean = volumes["IXI052"].astype(np.float32)
    _, _, _, valid = normalize_slices(clean)
    u = torch.from_numpy(volume_to_slices(clean) / float(clean.max()))[valid]
    knots = np.linspace(0, 1, 33)
    identity = {"in_domain": True, "gamma": 1.0}
    # a strong brightening of an in-domain image: the prior finds it far worse
    values, info = prior_veto(bundle.flow, u, knots, identity, knots**0.3,
                              {"selected": "quantile"}, 0.25)
    assert info["prior_veto"] and info["selected"] == "identity"
    assert info["bits_quantile"] > info["bits_prior"] + 0.25
    np.testing.assert_array_equal(values, knots)
    # with a margin larger than the difference, the quantile map stands
    values, info = prior_veto(bundle.flow, u, knots, identity, knots**0.3,
                              {"selected": "quantile"}, 100.0)
    assert not info["prior_veto"] and info["selected"] == "quantile"
    np.testing.assert_array_equal(values, knots**0.3)


def test_veto_applies_only_to_a_nearly_consistent_prior_answer():
    from bids_app.harmonize.selection import veto_applies

    threshold = 1.5
    # the prior's identity is a little off the population: its likelihood may decide
    near = {"consistency": {"identity": 2.0, "power": 9.0, "quantile": 0.0},
            "consistency_threshold": threshold}
    assert veto_applies(near, 3.0)
    # the prior's answer (identity if it was tried, else the power map) is far off
    far = {"consistency": {"power": 49.0, "quantile": 0.0}, "consistency_threshold": threshold}
    assert not veto_applies(far, 3.0)
    assert veto_applies(far, 40.0)
    assert not veto_applies({"consistency": {"identity": 17.3, "power": 1.0},
                             "consistency_threshold": threshold}, 3.0)


def test_identity_has_its_own_looser_threshold(volumes, bundle):
    population = dict(bundle.harmonization["flow-intensity"]["population"])
    assert population["identity_threshold"] > population["threshold"]
    clean = volumes["IXI094"]
    # an image a little further from the population than the strict threshold allows
    # keeps the identity as long as it is within the identity's threshold
    _, info = select_map(clean, bundle.reference, _info(True, 1.0), population, n_knots=65)
    distance = info["consistency"]["identity"]
    population["threshold"] = 0.5 * distance
    population["identity_threshold"] = 2.0 * distance
    _, info = select_map(clean, bundle.reference, _info(True, 1.0), population, n_knots=65)
    assert info["selected"] == "identity" and info["identity_threshold"] == 2.0 * distance
    population["identity_threshold"] = 0.5 * distance
    _, info = select_map(clean, bundle.reference, _info(True, 1.0), population, n_knots=65)
    assert info["selected"] != "identity"


def test_population_needs_two_distinct_images(volumes, mask):
    with pytest.raises(ValueError, match="at least two"):
        population_statistics([volumes["IXI052"]], mask)
