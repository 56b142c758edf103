"""Evaluation helpers: simulated scanner shifts and per-slice PSNR/SSIM."""

import numpy as np
import pytest

from bids_app.evaluation.metrics import slice_scores, summarize
from bids_app.evaluation.shifts import ALL_SHIFTS, SHIFTS, apply_shift, bias_field


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
