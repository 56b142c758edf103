"""Classical baselines on real example data: Nyul standardization, low-frequency replacement."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.evaluation.baselines import (
    LEVELS,
    NYUL_PERCENTILES,
    histogram_match,
    low_frequency_harmonize,
    low_frequency_mask,
    low_frequency_replace,
    nyul_available,
    nyul_standardize,
    nyul_train,
    population_quantiles,
)
from bids_app.evaluation.metrics import summarize
from bids_app.evaluation.shifts import apply_shift

MINI = Path(__file__).parent / "data" / "ixi-hh-mini"


def _t1w(sub):
    path = MINI / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
    return nib.as_closest_canonical(nib.load(str(path)))


@pytest.fixture(scope="module")
def source():
    return _t1w("IXI052")


@pytest.fixture(scope="module")
def targets():
    return [_t1w(s).get_fdata(dtype=np.float32) for s in ("IXI094", "IXI146")]


def _minmax(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / (x.max() - x.min())


needs_nyul = pytest.mark.skipif(not nyul_available(), reason="intensity-normalization absent")


@needs_nyul
def test_nyul_standard_scale_spans_the_targets_percentiles(targets):
    normalizer = nyul_train(targets)
    scale = np.asarray(normalizer.standard_scale)
    np.testing.assert_allclose(normalizer.percentiles, NYUL_PERCENTILES)
    assert scale.shape == NYUL_PERCENTILES.shape and np.all(np.diff(scale) > 0)
    ends = []
    for v in targets:
        x = _minmax(v)
        ends.append(np.percentile(x[x > 0.05], [1, 99]))
    np.testing.assert_allclose(scale[[0, -1]], np.mean(ends, axis=0), rtol=1e-6)


@needs_nyul
def test_nyul_maps_source_landmarks_onto_the_trained_ones(source, targets):
    normalizer = nyul_train(targets)
    data = source.get_fdata(dtype=np.float32)
    out = nyul_standardize(data, normalizer)
    assert out.dtype == np.float32 and out.shape == data.shape
    foreground = _minmax(data) > 0.05
    landmarks = np.percentile(out[foreground], NYUL_PERCENTILES)
    np.testing.assert_allclose(landmarks, normalizer.standard_scale, atol=2e-3)
    # monotone: the voxels' order is kept
    order = np.argsort(data.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-5)


@needs_nyul
@pytest.mark.parametrize("shift", ["gamma0.7", "gamma1.5"])
def test_nyul_undoes_much_of_a_gamma_shift(source, targets, shift):
    clean = source.get_fdata(dtype=np.float32)
    shifted = apply_shift(clean, shift)
    before = summarize(shifted, clean)["psnr"]
    after = summarize(nyul_standardize(shifted, nyul_train(targets)), clean)["psnr"]
    assert after > before + 3.0


def test_nyul_without_the_package_says_how_to_install(monkeypatch, targets):
    monkeypatch.setitem(sys.modules, "intensity_normalization", None)
    assert not nyul_available()
    with pytest.raises(ImportError, match=r"blindharmony\[benchmarks\]"):
        nyul_train(targets)


def test_histogram_match_sends_the_foreground_quantiles_to_the_population(source, targets):
    data = source.get_fdata(dtype=np.float32)
    population = population_quantiles(targets)
    out = histogram_match(data, population)
    assert out.dtype == np.float32 and out.shape == data.shape
    foreground = _minmax(data) > 0.05
    error = np.abs(np.percentile(out[foreground], LEVELS) - population)
    # (the fixture is 8-bit: a quantile that falls on a run of tied voxels may jump a step)
    assert np.median(error) < 1e-3 and error.max() < 1e-2
    assert out[data == data.min()].max() == 0.0  # the background stays 0
    order = np.argsort(data.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)  # monotone
    # not pinned at the maximum: the brightest voxels follow the top quantiles' slope
    assert 0.9 < out.max() < 1.5


@pytest.mark.parametrize("shift", ["gamma0.7", "gamma1.5", "exp"])
def test_histogram_match_undoes_much_of_a_contrast_change(source, targets, shift):
    clean = source.get_fdata(dtype=np.float32)
    shifted = apply_shift(clean, shift)
    population = population_quantiles(targets)
    before = summarize(shifted, clean)["psnr"]
    after = summarize(histogram_match(shifted, population), clean)["psnr"]
    assert after > before + 2.0
    with pytest.raises(ValueError, match="anchor"):
        histogram_match(shifted, population[1::2], LEVELS[1::2])


def test_low_frequency_mask_is_a_centered_symmetric_window():
    mask = low_frequency_mask((96, 112), wavelength=80.0, voxel_size=(2.0, 2.0))
    assert mask[0, 0]
    # bins 0..2 each way (periods 192/2 = 96 mm and 224/2 = 112 mm, 64 and 74.7 mm too short)
    assert mask.sum() == 5 * 5
    assert np.array_equal(mask, np.roll(mask[::-1, ::-1], 1, axis=(0, 1)))


@pytest.mark.parametrize("mode", ["amplitude", "complex"])
def test_low_frequency_replacement_keeps_the_sources_high_frequencies(source, targets, mode):
    data = source.get_fdata(dtype=np.float32)
    reference = _minmax(targets[0])[: data.shape[0], : data.shape[1], : data.shape[2]]
    reference = np.pad(reference, [(0, n - m) for n, m in zip(data.shape, reference.shape)])
    zooms = source.header.get_zooms()[:2]
    out = low_frequency_replace(data, reference, voxel_size=zooms, mode=mode, wavelength=40.0)
    assert out.dtype == np.float32 and out.shape == data.shape
    low = low_frequency_mask(data.shape[:2], wavelength=40.0, voxel_size=zooms)
    assert 1 < low.sum() < low.size
    f_out = np.fft.fft2(out.astype(np.float64), axes=(0, 1))
    f_src = np.fft.fft2(_minmax(data), axes=(0, 1))
    f_ref = np.fft.fft2(reference, axes=(0, 1))
    scale = np.abs(f_src).max()
    np.testing.assert_allclose(f_out[~low], f_src[~low], atol=1e-5 * scale)  # high: source
    if mode == "amplitude":
        np.testing.assert_allclose(np.abs(f_out[low]), np.abs(f_ref[low]), atol=1e-5 * scale)
    else:
        np.testing.assert_allclose(f_out[low], f_ref[low], atol=1e-5 * scale)
    assert np.abs(out - _minmax(data)).max() > 0.01  # and the low ones did change


def test_low_frequency_replacement_with_itself_is_the_identity(source):
    data = source.get_fdata(dtype=np.float32)
    out = low_frequency_replace(data, _minmax(data), axis=1)
    np.testing.assert_allclose(out, _minmax(data), atol=1e-5)


def test_low_frequency_replacement_checks_its_input(source):
    data = source.get_fdata(dtype=np.float32)
    with pytest.raises(ValueError, match="shapes differ"):
        low_frequency_replace(data, data[:-1])
    with pytest.raises(ValueError, match="mode"):
        low_frequency_replace(data, data, mode="phase")


def test_low_frequency_harmonize_changes_only_low_frequencies_in_the_grid(source):
    from bids_app.flow.bundle import load_bundle
    from bids_app.preprocess.slices import slices_to_volume

    bundle = load_bundle()
    template = slices_to_volume(bundle.x0.numpy())
    # the header puts the head near the grid's field of view: identity registration
    out = low_frequency_harmonize(source, np.eye(4), template, bundle.reference.affine)
    data = source.get_fdata(dtype=np.float32)
    assert out.dtype == np.float32 and out.shape == data.shape
    change = out - data
    assert np.abs(change).max() > 0.01 * np.ptp(data)
    # outside the grid's field of view the source is untouched
    world = nib.affines.apply_affine(
        np.linalg.inv(bundle.reference.affine) @ source.affine,
        np.argwhere(np.ones(data.shape, dtype=bool)),
    ).reshape(*data.shape, 3)
    outside = np.any((world < -1) | (world > np.array(bundle.reference.shape)), axis=-1)
    assert outside.any() and np.abs(change[outside]).max() == 0.0
    # the change is smooth: little energy at high in-plane frequencies
    spectrum = np.abs(np.fft.fft2(change, axes=(0, 1))) ** 2
    low = low_frequency_mask(data.shape[:2], wavelength=20.0,
                             voxel_size=source.header.get_zooms()[:2])
    assert spectrum[low].sum() > 0.9 * spectrum.sum()


# ---------------------------------------------------------------------------------------
# N4 bias-field correction (the first step of the n4-nyul baseline)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def n4_case():
    """IXI094 (2 mm), the same image under a smooth +-40 % field, and what N4 makes of both."""
    from bids_app.evaluation.baselines import n4_bias_field, n4_correct, otsu_head_mask
    from bids_app.evaluation.shifts import bias_field

    img = _t1w("IXI094")
    clean = img.get_fdata(dtype=np.float32)
    field = bias_field(clean.shape, strength=0.4, seed=3)
    biased = (clean * field).astype(np.float32)
    zooms = img.header.get_zooms()[:3]
    return {"clean": clean, "biased": biased, "field": field, "mask": otsu_head_mask(clean),
            "n4_clean": n4_bias_field(clean, voxel_size=zooms),
            "corrected": n4_correct(biased, voxel_size=zooms)}


def _log_spread(a, b, mask):
    """Spread (SD) of the log intensity ratio of two images in a mask: a residual field."""
    return float(np.std(np.log(a[mask] / b[mask])))


def test_n4_takes_a_synthetic_bias_field_off(n4_case):
    """N4 removes most of the field: its result is near what it makes of the clean image.

    N4 also removes the fixture's own inhomogeneity, so the corrected biased image is
    compared with the corrected clean one.
    """
    c = n4_case
    mask = c["mask"] & (c["clean"] > 0)
    corrected = c["corrected"]
    assert corrected.dtype == np.float32 and corrected.shape == c["clean"].shape
    reference = c["clean"] / c["n4_clean"]
    before = _log_spread(c["biased"], c["clean"], mask)
    after = _log_spread(corrected, reference, mask)
    assert before > 0.05  # the field is there
    assert after < 0.6 * before
    # what N4 takes off the biased image beyond what it takes off the clean one is the field
    extra = np.log(c["biased"][mask] / corrected[mask] / c["n4_clean"][mask])
    assert np.corrcoef(extra, np.log(c["field"][mask]))[0, 1] > 0.8


def test_n4_makes_white_matter_homogeneous_again(n4_case):
    from bids_app.evaluation.metrics import white_matter_mask

    c = n4_case
    wm = white_matter_mask(c["clean"])

    def cov(x):
        return float(np.std(x[wm]) / np.mean(x[wm]))

    added = cov(c["biased"]) - cov(c["clean"])
    assert added > 0.005  # the field spreads the white matter's intensities
    # at least half of that spread is gone again
    assert cov(c["corrected"]) < cov(c["biased"]) - 0.5 * added
    field = c["n4_clean"]
    assert field.dtype == np.float32 and field.shape == c["clean"].shape and field.min() > 0


def test_n4_checks_its_input(n4_case):
    from bids_app.evaluation.baselines import n4_bias_field

    with pytest.raises(ValueError, match="3D"):
        n4_bias_field(n4_case["clean"][..., 0])
    with pytest.raises(ValueError, match="shapes differ"):
        n4_bias_field(n4_case["clean"], mask=n4_case["mask"][:-1])
    with pytest.raises(ValueError, match="positive"):
        n4_bias_field(np.zeros((8, 8, 8), dtype=np.float32))
