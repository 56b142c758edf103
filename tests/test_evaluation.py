"""Evaluation helpers: simulated scanner shifts and per-slice PSNR/SSIM."""

import numpy as np
import pytest

from bids_app.evaluation.metrics import slice_scores, summarize
from bids_app.evaluation.shifts import ALL_SHIFTS, EXTRA_SHIFTS, SHIFTS, apply_shift, bias_field


def _head(shape=(24, 28, 10), seed=0):
    """A smooth positive 'head' on a dark background, with some texture."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids)
    head = np.clip(1.2 - r2, 0, None) * (300 + 50 * rng.random(shape))
    return (head + 5 * rng.random(shape)).astype(np.float32)


@pytest.mark.parametrize("name", ALL_SHIFTS)
def test_shift_range(name):
    out = apply_shift(_head(), name)
    assert out.dtype == np.float32 and out.shape == _head().shape
    assert out.min() == pytest.approx(0.0, abs=1e-6)
    assert out.max() == pytest.approx(1.0, abs=1e-6)


def test_identity_is_minmax():
    vol = _head() * 3 - 40
    out = apply_shift(vol, "identity")
    expected = (vol - vol.min()) / (vol.max() - vol.min())
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in SHIFTS if n != "identity"])
def test_shifts_are_monotone_and_change_contrast(name):
    vol = _head(seed=1)
    out = apply_shift(vol, name).ravel().astype(np.float64)
    base = apply_shift(vol, "identity").ravel().astype(np.float64)
    order = np.argsort(base, kind="stable")
    assert np.all(np.diff(out[order]) >= -1e-6)  # rank preserving
    assert np.abs(out - base).max() > 0.02  # but not the identity


def test_gamma_shift_values():
    vol = _head(seed=2)
    base = apply_shift(vol, "identity").astype(np.float64)
    np.testing.assert_allclose(apply_shift(vol, "gamma0.7"), base**0.7, atol=1e-6)
    log = np.log1p(base)
    np.testing.assert_allclose(apply_shift(vol, "log"), log / log.max(), atol=1e-6)
    exp = np.exp(base)
    np.testing.assert_allclose(apply_shift(vol, "exp"), (exp - 1) / (np.e - 1), atol=1e-6)


def test_bias_shift_is_spatial_and_seeded():
    vol = _head(seed=3)
    a = apply_shift(vol, "bias+gamma0.8", seed=0)
    b = apply_shift(vol, "bias+gamma0.8", seed=0)
    c = apply_shift(vol, "bias+gamma0.8", seed=1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.01
    # not a global intensity map: the gamma 0.8 alone differs
    plain = apply_shift(vol, "identity") ** 0.8
    assert np.abs(a - plain).max() > 0.02
    field = bias_field(vol.shape, strength=0.35, seed=0)
    assert field.min() >= 0.65 - 1e-9 and field.max() <= 1.35 + 1e-9
    assert np.abs(field - 1).max() == pytest.approx(0.35)


def test_unknown_shift():
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(_head(), "gamma2")


def test_identical_volumes_score_perfectly():
    vol = _head(seed=4)
    psnr, ssim = slice_scores(vol, vol.copy())
    assert len(psnr) == len(ssim) > 0
    assert np.all(np.isinf(psnr))
    np.testing.assert_allclose(ssim, 1.0)
    summary = summarize(vol, vol)
    assert summary == {"psnr": 100.0, "ssim": pytest.approx(1.0)}


def test_scores_are_per_slice_minmax_invariant():
    vol = _head(seed=5)
    scaled = vol * 7.0 + 100.0  # per-slice min-max removes this
    psnr, ssim = slice_scores(scaled, vol)
    assert np.all(np.isinf(psnr) | (psnr > 80))
    np.testing.assert_allclose(ssim, 1.0, atol=1e-6)


def test_shifted_volume_scores_lower():
    vol = _head(seed=6)
    psnr_small, ssim_small = slice_scores(apply_shift(vol, "gamma1.5") ** (1 / 1.2), vol)
    psnr_big, ssim_big = slice_scores(apply_shift(vol, "exp") ** 3, vol)
    assert np.all(np.isfinite(psnr_big)) and np.all(psnr_big < 100)
    assert np.all(ssim_big < 1.0)
    assert np.mean(psnr_big) < np.mean(psnr_small)
    gamma = summarize(apply_shift(vol, "gamma0.7"), vol)
    assert 5 < gamma["psnr"] < 60 and gamma["ssim"] < 1.0


def test_only_slices_with_head_count():
    vol = _head(seed=7)
    vol[..., :3] = 0.0  # no head in the first 3 slices
    psnr, ssim = slice_scores(vol, vol)
    n_counted = sum(
        ((vol[..., k] - vol[..., k].min()) / max(np.ptp(vol[..., k]), 1e-12) > 0.05).mean() >= 0.1
        for k in range(vol.shape[2])
    )
    assert len(psnr) == n_counted <= vol.shape[2] - 3
    assert len(slice_scores(vol, vol, min_fraction=0.0)[0]) == vol.shape[2]


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        slice_scores(np.zeros((4, 4, 2)), np.zeros((4, 4, 3)))


def test_striping_sees_slice_wise_gain_changes(lib_bids_dir):
    import nibabel as nb

    from bids_app.evaluation.metrics import striping, white_matter_mask

    img = nb.as_closest_canonical(nb.load(str(
        lib_bids_dir / "sub-IXI146" / "anat" / "sub-IXI146_T1w.nii.gz")))
    clean = img.get_fdata()
    mask = white_matter_mask(clean)
    assert 0.02 < mask.mean() < 0.3
    base = striping(clean, mask)
    # one global contrast change keeps the slice profile (up to the change's curvature)
    assert striping(clean**0.8, mask) == pytest.approx(base, rel=0.3)
    # a gain that alternates from slice to slice is striping
    gains = 1 + 0.03 * (-1) ** np.arange(clean.shape[2])
    striped = clean * gains[None, None, :]
    assert striping(striped, mask) > base + 3.0
    with pytest.raises(ValueError, match="shapes differ"):
        striping(clean[:, :, :-1], mask)


# ---------------------------------------------------------------------------------------
# The quality benchmark's extra shifts, on a real fixture image
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_t1w(lib_t1w_path):
    import nibabel as nb

    img = nb.as_closest_canonical(nb.load(str(lib_t1w_path)))
    return img.get_fdata(dtype=np.float32), img.header.get_zooms()[:3]


MONOTONE_EXTRA = ["sigmoid", "gmwm0.5", "gmwm1.5"]


def _extra(volume, zooms, name, seed=0):
    return apply_shift(volume, name, seed=seed, voxel_size=zooms).astype(np.float64)


@pytest.mark.parametrize("name", EXTRA_SHIFTS)
def test_extra_shifts_change_the_image_keep_its_range_and_background(fixture_t1w, name):
    from scipy.ndimage import maximum_filter

    volume, zooms = fixture_t1w
    out = _extra(volume, zooms, name)
    base = apply_shift(volume, "identity").astype(np.float64)
    assert out.shape == volume.shape
    assert out.min() == pytest.approx(0.0, abs=1e-6) and out.max() == pytest.approx(1.0)
    # the background far from the head (nothing but zeros within 5 voxels) stays 0
    far = maximum_filter(base, size=11) == 0
    assert far.mean() > 0.05 and out[far].max() == 0.0
    assert out[base == 0].mean() < 1e-3  # and the rest of it nearly so (the blur's edge)
    # a real change of the image: the per-slice scores say so
    assert summarize(out, base)["psnr"] < 45.0


@pytest.mark.parametrize("name", MONOTONE_EXTRA)
def test_extra_contrast_shifts_are_monotone(fixture_t1w, name):
    volume, zooms = fixture_t1w
    out = _extra(volume, zooms, name).ravel()
    base = apply_shift(volume, "identity").astype(np.float64).ravel()
    order = np.argsort(base, kind="stable")
    steps = np.diff(out[order])
    assert np.all(steps >= -1e-6)  # rank preserving
    # a voxel-wise map: equal intensities stay equal
    same = np.diff(base[order]) == 0
    assert np.abs(steps[same]).max() < 1e-6


def test_grey_white_matter_shifts_compress_and_expand_its_contrast(fixture_t1w):
    from bids_app.evaluation.metrics import white_matter_mask
    from bids_app.evaluation.shifts import GM_WM

    volume, zooms = fixture_t1w
    base = apply_shift(volume, "identity").astype(np.float64)
    wm = white_matter_mask(volume)
    grey = (base > GM_WM[0]) & (base < 0.5 * sum(GM_WM)) & ~wm

    def contrast(x):
        return x[wm].mean() - x[grey].mean()

    assert contrast(_extra(volume, zooms, "gmwm0.5")) < 0.7 * contrast(base)
    assert contrast(_extra(volume, zooms, "gmwm1.5")) > 1.3 * contrast(base)
    assert contrast(_extra(volume, zooms, "sigmoid")) > 1.3 * contrast(base)


def test_the_b1_like_field_is_spatial_not_an_intensity_map(fixture_t1w):
    """``bias40`` is not monotone in the intensity: equal voxels come out unequal."""
    volume, zooms = fixture_t1w
    base = apply_shift(volume, "identity").astype(np.float64)
    out = _extra(volume, zooms, "bias40")
    head = base > 0.1
    ratio = out[head] / base[head] * base.max() / out.max()
    ratio /= np.median(ratio)
    assert 0.55 < ratio.min() < 0.8 and 1.2 < ratio.max() < 1.5  # the +-40 % field
    level = np.isclose(base, np.median(base[head]))
    assert np.ptp(out[level]) > 0.05


def test_the_blur_softens_edges_and_needs_the_voxel_size(fixture_t1w):
    volume, zooms = fixture_t1w
    base = apply_shift(volume, "identity").astype(np.float64) ** 0.8
    out = _extra(volume, zooms, "blur+gamma0.8")
    head = base > 0.1

    def sharpness(x):  # mean step between neighbours, in units of the head's mean
        return np.mean([np.abs(np.diff(x, axis=a)).mean() for a in range(3)]) / x[head].mean()

    assert sharpness(out) < 0.98 * sharpness(base)  # mild: 0.75 voxel FWHM
    with pytest.raises(ValueError, match="voxel size"):
        apply_shift(volume, "blur+gamma0.8")


@pytest.mark.parametrize("name", EXTRA_SHIFTS)
def test_extra_shifts_are_deterministic_with_their_seed(fixture_t1w, name):
    volume, zooms = fixture_t1w
    a = _extra(volume, zooms, name, seed=4)
    np.testing.assert_array_equal(a, _extra(volume, zooms, name, seed=4))
    other = _extra(volume, zooms, name, seed=5)
    if name == "bias40":
        assert np.abs(a - other).max() > 0.01
    else:  # the seed is the bias fields' only
        np.testing.assert_array_equal(a, other)


def test_existing_shifts_are_unchanged_by_the_extra_ones(fixture_t1w):
    volume, _ = fixture_t1w
    assert ALL_SHIFTS == ["identity", "exp", "log", "gamma0.7", "gamma1.5", "bias+gamma0.8"]
    assert not set(ALL_SHIFTS) & set(EXTRA_SHIFTS)
    base = apply_shift(volume, "identity").astype(np.float64)
    np.testing.assert_allclose(apply_shift(volume, "gamma1.5"), base**1.5, atol=1e-6)


def _phantom(seed=0, sigma=0.02):
    """Three flat tissues (0.2, 0.5, 0.9) in nested blocks on a zero background, plus
    Gaussian noise of ``sigma``; returns the noisy volume and each tissue's core mask."""
    from scipy.ndimage import binary_erosion

    rng = np.random.default_rng(seed)
    clean = np.zeros((40, 40, 24))
    clean[4:36, 4:36, 2:22] = 0.2
    clean[10:30, 10:30, 5:19] = 0.5
    clean[15:25, 15:25, 8:16] = 0.9
    cores = [binary_erosion(np.isclose(clean, level), iterations=2) for level in (0.2, 0.5, 0.9)]
    noisy = np.clip(clean + sigma * rng.standard_normal(clean.shape), 0, None)
    noisy[0, 0, 0] = 1.0  # a fixed maximum, as min-max normalization needs
    return noisy, cores


def test_signal_domain_identity_gives_the_image_back(fixture_t1w):
    volume, _ = fixture_t1w
    base = apply_shift(volume, "identity").astype(np.float64)
    out = apply_shift(volume, "identity@signal").astype(np.float64)
    assert np.abs(out - base).max() < 1e-4


def test_signal_domain_shift_keeps_the_noise_stationary():
    """On the image, Exp stretches the noise of bright tissue (slope e^x); on the signal
    the noise keeps one level in every tissue, as on another scanner."""
    noisy, (dark, mid, bright) = _phantom()

    def ratio(out):
        return out[bright].std() / out[dark].std()

    image, signal = apply_shift(noisy, "exp"), apply_shift(noisy, "exp@signal")
    assert ratio(image) > 1.8  # e^(0.9 - 0.2) = 2.01
    assert 0.8 < ratio(signal) < 1.25
    # the contrast change itself is the same: the tissue means move alike
    for region in (dark, mid, bright):
        assert abs(image[region].mean() - signal[region].mean()) < 0.02


def test_signal_domain_rejects_unknown_shifts():
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(_head(), "gamma2@signal")
