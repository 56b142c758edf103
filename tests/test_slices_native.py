"""The slice grid (normalize/reassemble) and carrying harmonization back to native space."""

import nibabel as nb
import numpy as np
import pytest

from bids_app.preprocess.image import load_t1w
from bids_app.preprocess.intensity_maps import apply_global_map, apply_slice_map, interp_extended
from bids_app.preprocess.native import to_native
from bids_app.preprocess.registration import resample_to_grid
from bids_app.preprocess.slices import (
    head_fraction,
    normalize_slices,
    reassemble,
    scoring_slice_indices,
    slices_to_volume,
    volume_to_slices,
)

GRID_AFFINE = np.array(
    [[2.0, 0, 0, -95.0], [0, 2.0, 0, -127.0], [0, 0, 2.0, -73.0], [0, 0, 0, 1.0]]
)
NZ = 88


def _matrix():
    """A non-trivial RAS pull matrix (rotation about z and x, 4% scale) that maps the grid's
    centre to (0, 0, -5) mm of the fixture: its head then spans most reference slices."""
    a, b = np.deg2rad(7.0), np.deg2rad(-5.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    linear = rz @ rx * 1.04
    grid_centre = (GRID_AFFINE @ np.array([47.5, 55.5, 43.5, 1.0]))[:3]
    native_centre = np.array([0.0, 0.0, -5.0])
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = native_centre - linear @ grid_centre
    return m


@pytest.fixture(scope="module")
def native(lib_t1w_path):
    return load_t1w(lib_t1w_path)


def test_volume_slices_layout():
    vol = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    stack = volume_to_slices(vol)
    assert stack.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(stack[2, 0], vol[:, :, 2])
    np.testing.assert_array_equal(slices_to_volume(stack), vol)


def test_normalize_reassemble_round_trip():
    rng = np.random.default_rng(0)
    vol = (rng.random((12, 10, 7)) * 300 + 50).astype(np.float32)
    vol[..., 3] *= 4  # slices on different scales
    slices, low, high, valid = normalize_slices(vol)
    assert slices.shape == (7, 1, 12, 10) and slices.dtype == np.float32
    assert valid.all()
    np.testing.assert_allclose(slices.min(axis=(1, 2, 3)), 0.0, atol=1e-7)
    np.testing.assert_allclose(slices.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
    np.testing.assert_allclose(low, vol.min(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(high, vol.max(axis=(0, 1)), rtol=1e-6)
    back = reassemble(slices, low, high)
    assert back.shape == vol.shape and back.dtype == np.float32
    np.testing.assert_allclose(back, vol, rtol=1e-5, atol=1e-3)


def test_empty_slices_are_invalid():
    rng = np.random.default_rng(1)
    vol = (rng.random((8, 8, 6)) * 100).astype(np.float32)
    vol[..., 0] = 0.0  # empty
    vol[..., 5] = 3.0 + 1e-4 * rng.random((8, 8))  # range far below 1e-3 of the volume's
    vol[..., 2] = vol[..., 2] * 0.01  # dim but not empty (range ~ 1 > 0.1)
    slices, low, high, valid = normalize_slices(vol)
    assert valid.tolist() == [False, True, True, True, True, False]
    assert np.all(slices[~valid] == 0)
    assert slices[2].max() == pytest.approx(1.0)
    # reassembling invalid slices gives back their (constant) low value
    back = reassemble(slices, low, high)
    np.testing.assert_allclose(back[..., 0], 0.0)
    np.testing.assert_allclose(back[..., 5], low[5], atol=1e-3)


def test_head_fraction():
    slices = np.zeros((2, 1, 4, 5), np.float32)
    slices[0, 0, :2] = 0.5
    slices[1, 0, 0, 0] = 0.04
    np.testing.assert_allclose(head_fraction(slices), [0.5, 0.0])


@pytest.fixture(scope="module")
def reference_slices(native):
    """The fixture resampled onto the reference grid, as normalized slices."""
    grid = nb.Nifti1Image(np.zeros((96, 112, NZ), np.float32), GRID_AFFINE)
    slices, _, _, valid = normalize_slices(resample_to_grid(native, grid, _matrix()))
    return slices, valid


def test_scoring_slices_hold_the_most_head(reference_slices):
    slices, valid = reference_slices
    chosen = scoring_slice_indices(slices, valid, 24)
    assert len(chosen) == 24 and np.all(np.diff(chosen) > 0) and valid[chosen].all()
    fraction = head_fraction(slices)
    others = np.setdiff1d(np.nonzero(valid)[0], chosen)
    assert fraction[chosen].min() >= fraction[others].max()
    # the head's middle, not its ends: the chosen slices are contiguous here
    assert chosen[-1] - chosen[0] == 23
    # no more than the valid slices; invalid ones are never chosen
    few = valid.copy()
    few[np.nonzero(valid)[0][5:]] = False
    assert list(scoring_slice_indices(slices, few, 24)) == list(np.nonzero(few)[0])


def test_intensity_maps_extend_linearly_and_keep_order(native):
    data = np.asanyarray(native.dataobj, dtype=np.float64)
    identity = np.linspace(0.0, 1.0, 9)
    np.testing.assert_allclose(apply_global_map(data, identity, data.max() / 2), data,
                               rtol=1e-6)  # voxels above half the maximum lie beyond [0, 1]
    gamma = np.linspace(0.0, 1.0, 33) ** 0.7
    low, high = np.percentile(data, [20, 80])
    mapped = apply_slice_map(data.ravel(), gamma, low, high)
    order = np.argsort(data.ravel(), kind="stable")
    assert np.all(np.diff(mapped[order]) >= -1e-9)  # monotone
    inside = (data.ravel() >= low) & (data.ravel() <= high)
    assert np.all(mapped[inside] >= low - 1e-9) and np.all(mapped[inside] <= high + 1e-9)
    # beyond the slice's range the map goes on with its last segment's slope
    above = np.array([high, high + 10.0, high + 20.0])
    steps = np.diff(apply_slice_map(above, gamma, low, high))
    assert steps[0] == pytest.approx(steps[1])
    assert steps[0] / 10.0 == pytest.approx((gamma[-1] - gamma[-2]) * 32, rel=1e-9)
    np.testing.assert_allclose(interp_extended([0.0, 1.0], gamma), [0.0, 1.0])


def _random_scales(seed=0):
    rng = np.random.default_rng(seed)
    low = rng.uniform(-10, 10, NZ)
    high = low + rng.uniform(50, 500, NZ)
    return low, high


def test_identity_maps_leave_native_unchanged(native):
    lut = np.tile(np.linspace(0, 1, 33), (NZ, 1))
    low, high = _random_scales()
    valid = np.ones(NZ, dtype=bool)
    valid[:5] = False
    out = to_native(native, lut, low, high, valid, _matrix(), GRID_AFFINE)
    assert isinstance(out, nb.Nifti1Image)
    assert out.shape == native.shape
    np.testing.assert_array_equal(out.affine, native.affine)
    assert out.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asanyarray(out.dataobj), np.asanyarray(native.dataobj),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("gamma", [1.5, 0.8])
def test_same_gamma_map_everywhere(native, gamma):
    data = np.asanyarray(native.dataobj, dtype=np.float64)
    low_value, high_value = float(data.min()) - 1.0, float(data.max()) + 1.0
    knots = np.linspace(0, 1, 257)
    lut = np.tile(knots**gamma, (NZ, 1))
    low, high = np.full(NZ, low_value), np.full(NZ, high_value)
    out = to_native(native, lut, low, high, np.ones(NZ, bool), _matrix(), GRID_AFFINE)
    span = high_value - low_value
    expected = low_value + span * ((data - low_value) / span) ** gamma
    got = np.asanyarray(out.dataobj, dtype=np.float64)
    # piecewise-linear interpolation of the gamma curve on 257 knots (steepest near 0)
    error = np.abs(got - expected)
    assert error.max() < 5e-3 * span
    assert error[(data - low_value) / span > 0.01].max() < 1e-3 * span
    assert np.abs(got - data).max() > 0.05 * span  # and the map did change the image


def test_values_outside_the_slice_range_extend_linearly():
    data = np.linspace(-50, 150, 10 * 10 * 10).reshape(10, 10, 10).astype(np.float32)
    img = nb.Nifti1Image(data, GRID_AFFINE)
    nz = 10
    knots = np.linspace(0, 1, 5)
    lut = np.tile(knots**2, (nz, 1))
    low, high = np.zeros(nz), np.full(nz, 100.0)
    out = np.asanyarray(to_native(img, lut, low, high, np.ones(nz, bool), np.eye(4),
                                  GRID_AFFINE).dataobj)
    t = data / 100.0
    inside = np.interp(t, knots, knots**2) * 100
    slope_lo = (knots[1] ** 2 - 0) / knots[1]
    slope_hi = (1 - knots[-2] ** 2) / (1 - knots[-2])
    above = 100 + (t - 1) * slope_hi * 100
    expected = np.where(t < 0, t * slope_lo * 100, np.where(t > 1, above, inside))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    assert np.all(np.diff(out.ravel()) >= -1e-4)  # still monotone across the range


def _slice_coordinate(img, matrix):
    ijk = np.indices(img.shape).reshape(3, -1)
    world = img.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    ref = np.linalg.inv(GRID_AFFINE) @ np.linalg.inv(matrix) @ world
    return ref[2].reshape(img.shape)


def test_maps_are_interpolated_along_the_slice_axis(native):
    gammas = np.linspace(0.6, 1.6, NZ)
    knots = np.linspace(0, 1, 129)
    lut = knots[None, :] ** gammas[:, None]
    data = np.asanyarray(native.dataobj, dtype=np.float64)
    low_value, high_value = float(data.min()), float(data.max())
    span = high_value - low_value
    low, high = np.full(NZ, low_value), np.full(NZ, high_value)
    matrix = _matrix()
    out = np.asanyarray(to_native(native, lut, low, high, np.ones(NZ, bool), matrix,
                                  GRID_AFFINE).dataobj, dtype=np.float64)
    coord = np.clip(_slice_coordinate(native, matrix), 0, NZ - 1)
    assert coord.min() < 10 and coord.max() > NZ - 10  # the head spans many slices
    k0 = np.minimum(np.floor(coord).astype(int), NZ - 2)
    w = coord - k0
    t = (data - low_value) / span
    expected = low_value + span * ((1 - w) * t ** gammas[k0] + w * t ** gammas[k0 + 1])
    foreground = t > 0.02  # away from the steep part of x**0.6 at 0
    error = np.abs(out - expected)[foreground]
    assert error.max() < 3e-3 * span
    # native voxels far apart along the slice axis really got different maps
    mid = (t > 0.45) & (t < 0.55)
    low_slices, high_slices = mid & (coord < 25), mid & (coord > 60)
    assert low_slices.any() and high_slices.any()
    ratio_low = ((out[low_slices] - low_value) / span / t[low_slices]).mean()
    ratio_high = ((out[high_slices] - low_value) / span / t[high_slices]).mean()
    assert ratio_low > ratio_high + 0.1  # small gamma brightens mid-range values


def test_invalid_slices_borrow_the_nearest_valid_map(native):
    knots = np.linspace(0, 1, 33)
    lut = np.tile(knots**1.3, (NZ, 1))
    garbage = np.tile(np.sqrt(knots), (NZ, 1))
    valid = np.ones(NZ, bool)
    valid[:30] = False
    valid[70:] = False
    mixed = lut.copy()
    mixed[~valid] = garbage[~valid]
    low, high = np.zeros(NZ), np.full(NZ, float(np.asanyarray(native.dataobj).max()))
    reference = to_native(native, lut, low, high, np.ones(NZ, bool), np.eye(4), GRID_AFFINE)
    borrowed = to_native(native, mixed, low, high, valid, np.eye(4), GRID_AFFINE)
    np.testing.assert_allclose(np.asanyarray(borrowed.dataobj),
                               np.asanyarray(reference.dataobj), rtol=1e-6, atol=1e-4)
    none_valid = to_native(native, mixed, low, high, np.zeros(NZ, bool), np.eye(4), GRID_AFFINE)
    np.testing.assert_array_equal(np.asanyarray(none_valid.dataobj),
                                  np.asanyarray(native.dataobj))


def test_global_map_is_applied_to_every_voxel(native):
    data = np.asanyarray(native.dataobj, dtype=np.float64)
    scale = float(data.max())
    knots = np.linspace(0, 1, 65)
    garbage = np.tile(np.sqrt(knots), (NZ, 1))  # per-slice maps are ignored
    low, high = np.zeros(NZ), np.full(NZ, scale)
    args = (garbage, low, high, np.ones(NZ, bool), _matrix(), GRID_AFFINE)
    same = to_native(native, *args, global_map={"values": knots, "scale": scale})
    assert same.shape == native.shape
    np.testing.assert_array_equal(same.affine, native.affine)
    np.testing.assert_allclose(np.asanyarray(same.dataobj), data, rtol=1e-5, atol=1e-3)
    gamma = to_native(native, *args, global_map={"values": knots**1.5, "scale": scale})
    expected = scale * (data / scale) ** 1.5
    assert np.abs(np.asanyarray(gamma.dataobj) - expected).max() < 1e-3 * scale
