"""Preprocessing: loading and checking T1w images, affine registration, resampling."""

import gzip

import nibabel as nb
import numpy as np
import pytest

from bids_app.errors import EX_DATAERR, InputDataError
from bids_app.preprocess.image import load_t1w
from bids_app.preprocess.registration import (
    read_itk_affine,
    register_affine,
    resample_to_grid,
    to_sitk,
    write_itk_affine,
)


def _rotation(axis, degrees):
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _translation(t):
    m = np.eye(4)
    m[:3, 3] = t
    return m


def _unique_volume(shape, seed=0):
    """Float32 data whose voxels all differ (to follow a voxel through reorientation)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) + 1).astype(np.float32)


def _save(tmp_path, data, affine=None, name="img.nii.gz", **header):
    img = nb.Nifti1Image(data, np.eye(4) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    path = tmp_path / name
    img.to_filename(path)
    return path


# --------------------------------------------------------------------------- load_t1w


def test_load_fixture_ras_float32(lib_t1w_path):
    raw = nb.load(lib_t1w_path)
    img = load_t1w(lib_t1w_path)
    assert nb.aff2axcodes(img.affine) == ("R", "A", "S")
    assert nb.aff2axcodes(raw.affine) != ("R", "A", "S")  # the fixture is PSR: really reoriented
    data = np.asanyarray(img.dataobj)
    assert data.dtype == np.float32 and img.get_data_dtype() == np.float32
    assert sorted(img.shape) == sorted(raw.shape)
    expected = nb.as_closest_canonical(raw).get_fdata()
    np.testing.assert_allclose(data, expected, rtol=1e-6)  # scl_slope of the uint8 file applied


def _assert_bad(path, *fragments):
    with pytest.raises(InputDataError) as info:
        load_t1w(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert info.value.exit_code == EX_DATAERR == 65
    for fragment in fragments:
        assert fragment in str(info.value)


def test_rejects_4d(tmp_path):
    path = _save(tmp_path, np.random.default_rng(0).random((10, 10, 10, 2)).astype(np.float32))
    _assert_bad(path, "3D", "4D")


def test_accepts_4d_with_one_volume(tmp_path):
    data = np.random.default_rng(0).random((10, 11, 12, 1)).astype(np.float32)
    img = load_t1w(_save(tmp_path, data))
    assert img.shape == (10, 11, 12)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data[..., 0])


def test_rejects_2d(tmp_path):
    path = _save(tmp_path, np.random.default_rng(0).random((16, 16)).astype(np.float32))
    _assert_bad(path, "2D")


def test_rejects_nan(tmp_path):
    data = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    data[1, 2, 3] = np.nan
    data[4, 4, 4] = np.inf
    _assert_bad(_save(tmp_path, data), "2 voxels are NaN or infinite")


def test_rejects_constant(tmp_path):
    _assert_bad(_save(tmp_path, np.full((10, 10, 10), 7.0, np.float32)), "constant")
    _assert_bad(_save(tmp_path, np.zeros((10, 10, 10), np.float32), name="zero.nii"),
                "constant")


def test_rejects_truncated(tmp_path, lib_t1w_path):
    raw = lib_t1w_path.read_bytes()
    path = tmp_path / "truncated_T1w.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    _assert_bad(path, "cannot read")
    # an uncompressed file cut in half
    full = gzip.decompress(raw)
    path2 = tmp_path / "truncated_T1w.nii"
    path2.write_bytes(full[: len(full) // 2])
    _assert_bad(path2, "cannot read")


def test_rejects_non_nifti(tmp_path):
    path = tmp_path / "notes_T1w.nii.gz"
    path.write_text("this is not an image\n")
    _assert_bad(path, "cannot read")
    path2 = tmp_path / "random.nii"
    path2.write_bytes(np.random.default_rng(0).bytes(2000))
    _assert_bad(path2)


def test_rejects_missing_and_tiny(tmp_path):
    _assert_bad(tmp_path / "missing_T1w.nii.gz", "not found")
    _assert_bad(_save(tmp_path, np.random.default_rng(0).random((20, 20, 4)).astype(np.float32)),
                "too small")


def test_rejects_singular_affine(tmp_path):
    data = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    header = nb.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    header["srow_x"], header["srow_y"], header["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0] * 4
    header["sform_code"], header["qform_code"] = 1, 0
    path = tmp_path / "singular.nii"
    nb.Nifti1Image(data, None, header).to_filename(path)
    assert np.linalg.det(nb.load(path).affine) == 0
    _assert_bad(path, "singular")


def test_scl_slope_and_inter_applied(tmp_path):
    raw = np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14) % 1000
    img = nb.Nifti1Image(raw, np.diag([1.0, 1.0, 1.0, 1.0]))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(2.5, 10.0)
    path = tmp_path / "scaled.nii.gz"
    nb.save(img, path)
    assert nb.load(path).dataobj.slope == 2.5
    out = load_t1w(path)
    np.testing.assert_allclose(np.asanyarray(out.dataobj), raw * 2.5 + 10.0)
    # the header no longer scales the (already scaled) float data
    slope, inter = out.header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)
    path2 = tmp_path / "resaved.nii.gz"
    out.to_filename(path2)
    np.testing.assert_allclose(nb.load(path2).get_fdata(), raw * 2.5 + 10.0)


@pytest.mark.parametrize(
    "name, linear",
    [
        ("LPS", np.diag([-1.0, -1.0, 1.0])),
        ("anisotropic", np.diag([1.0, 1.0, 3.0])),
        ("oblique", (_rotation(2, 20) @ _rotation(0, 10))[:3, :3] @ np.diag([1.0, 1.2, 3.0])),
        ("PIL", np.array([[0, 0, -1.0], [-1.0, 0, 0], [0, -1.0, 0]]) * 1.5),
    ],
)
def test_orientations_are_handled(tmp_path, name, linear):
    shape = (12, 10, 9)
    data = _unique_volume(shape)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [30.0, -20.0, 5.0]
    path = _save(tmp_path, data, affine, name=f"{name}.nii.gz")
    img = load_t1w(path)
    assert nb.aff2axcodes(img.affine) == ("R", "A", "S")
    out = np.asanyarray(img.dataobj)
    assert sorted(img.shape) == sorted(shape)
    np.testing.assert_allclose(sorted(img.header.get_zooms()),
                               sorted(np.linalg.norm(linear, axis=0)), rtol=1e-5)
    # the content of any voxel stays at the same world position
    for ijk in [(0, 0, 0), (3, 5, 2), (11, 9, 8), (7, 1, 6)]:
        value = data[ijk]
        new_ijk = np.argwhere(out == value)
        assert len(new_ijk) == 1
        world_before = affine @ np.array([*ijk, 1.0])
        world_after = img.affine @ np.array([*new_ijk[0], 1.0])
        np.testing.assert_allclose(world_after, world_before, atol=1e-4)


# ------------------------------------------------------------------------- registration


def test_to_sitk_physical_points_match_nibabel():
    linear = (_rotation(2, 20) @ _rotation(0, 10))[:3, :3] @ np.diag([1.0, 1.2, 3.0])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [30.0, -20.0, 5.0]
    data = _unique_volume((6, 7, 8))
    img = nb.Nifti1Image(data, affine)
    sitk_img = to_sitk(img)
    assert sitk_img.GetSize() == (6, 7, 8)
    for ijk in [(0, 0, 0), (5, 6, 7), (2, 3, 4)]:
        ras = affine @ np.array([*ijk, 1.0])
        lps = np.array(sitk_img.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-4)
        assert sitk_img[[int(v) for v in ijk]] == data[ijk]


def test_itk_affine_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + 0.1 * rng.standard_normal((3, 3))
    matrix[:3, 3] = rng.uniform(-20, 20, 3)
    path = write_itk_affine(matrix, tmp_path / "xfm.txt")
    assert "AffineTransform" in (tmp_path / "xfm.txt").read_text()
    back = read_itk_affine(path)
    np.testing.assert_allclose(back, matrix, atol=1e-6)


def test_resample_identity_is_the_same_data():
    data = _unique_volume((9, 8, 7))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-9, -8, -7]
    img = nb.Nifti1Image(data, affine)
    out = resample_to_grid(img, img, np.eye(4))
    assert out.dtype == np.float32 and out.shape == data.shape
    np.testing.assert_allclose(out, data, rtol=1e-6)


def test_resample_translation_and_other_grid():
    data = _unique_volume((9, 8, 7))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nb.Nifti1Image(data, affine)
    # pull from 2 mm (one voxel) further along x: out[i] = data[i + 1]
    out = resample_to_grid(img, img, _translation([2.0, 0, 0]))
    np.testing.assert_allclose(out[:-1], data[1:], rtol=1e-6)
    assert np.all(out[-1] == 0)  # outside the image: cval
    # a grid of half the voxel size, same origin: even voxels are the original ones
    fine = nb.Nifti1Image(np.zeros((17, 15, 13), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    out = resample_to_grid(img, fine, np.eye(4))
    np.testing.assert_allclose(out[::2, ::2, ::2], data, rtol=1e-6)
    np.testing.assert_allclose(out[1, 0, 0], (data[0, 0, 0] + data[1, 0, 0]) / 2, rtol=1e-6)


def test_register_recovers_a_known_affine(lib_t1w_path):
    fixed = load_t1w(lib_t1w_path)
    data = np.asanyarray(fixed.dataobj)
    idx = np.argwhere(data > np.percentile(data, 70))
    lo, hi = idx.min(0), idx.max(0)
    center = (fixed.affine @ np.array([*(lo + hi) / 2, 1.0]))[:3]
    # T maps fixed-world points to where the same content lies in the moving image
    transform = (
        _translation([6.0, -3.0, 2.0])
        @ _translation(center)
        @ _rotation(0, 8.0)
        @ np.diag([1.05, 1.05, 1.05, 1.0])
        @ _translation(-center)
    )
    moving = nb.Nifti1Image(data.copy(), transform @ fixed.affine)
    matrix = register_affine(moving, fixed, num_threads=1)
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(matrix[3], [0, 0, 0, 1], atol=1e-9)
    # mean displacement error over a grid of points in the brain's bounding box
    grid = np.stack(np.meshgrid(*[np.linspace(a, b, 6) for a, b in zip(lo, hi)],
                                indexing="ij"), -1).reshape(-1, 3)
    points = fixed.affine @ np.c_[grid, np.ones(len(grid))].T
    error = np.linalg.norm((matrix @ points - transform @ points)[:3], axis=0)
    assert error.mean() < 1.5, error.mean()
    assert error.max() < 3.0
    # and the resampled moving image lines up with the fixed one
    moved = resample_to_grid(moving, fixed, matrix)
    mask = data > np.percentile(data, 50)
    assert np.corrcoef(moved[mask], data[mask])[0, 1] > 0.97


# ------------------------------------------------------ transform files and nitransforms

#: A RAS pull matrix (6 degree rotation about z, anisotropic scale, shear, translation).
_A = np.array([
    [1.04 * np.cos(np.deg2rad(6.0)), -np.sin(np.deg2rad(6.0)), 0.02, 3.25],
    [np.sin(np.deg2rad(6.0)), 0.97 * np.cos(np.deg2rad(6.0)), 0.01, -12.5],
    [0.0, -0.03, 1.02, 7.75],
    [0.0, 0.0, 0.0, 1.0],
])

#: What the app wrote for ``_A`` before ITK's LPS convention came from nitransforms
#: (SimpleITK's own conversion), and what resampling the IXI052 fixture through it gave.
_A_ITK_PARAMETERS = [1.0343027711830042, -0.10452846326765347, -0.02, 0.10452846326765347,
                     0.964686238507225, -0.01, 0.0, 0.03, 1.02, -3.25, 12.5, 7.75]
_A_RESAMPLED = {"sum": 315193121.1607512, "nonzero": 502962,
                (48, 56, 44): 864.5262451171875, (30, 70, 50): 1123.2406005859375,
                (60, 40, 30): 1444.0291748046875, (20, 56, 44): 1033.741455078125}


def _itk_lines(path):
    return dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)


def _lps(points):
    return np.asarray(points, dtype=float) * [-1.0, -1.0, 1.0]


def test_itk_file_is_what_the_app_wrote_before(tmp_path):
    path = tmp_path / "xfm.txt"
    write_itk_affine(_A, path)
    lines = _itk_lines(path)
    assert lines["Transform"] == "AffineTransform_double_3_3"  # doubles, not nitransforms' %g
    np.testing.assert_allclose([float(v) for v in lines["Parameters"].split()],
                               _A_ITK_PARAMETERS, rtol=1e-15, atol=1e-15)
    assert [float(v) for v in lines["FixedParameters"].split()] == [0.0, 0.0, 0.0]


def test_itk_file_round_trips_through_nitransforms_and_simpleitk(tmp_path):
    import SimpleITK as sitk
    from nitransforms.linear import load as load_linear

    path = tmp_path / "xfm.txt"
    write_itk_affine(_A, path)
    np.testing.assert_allclose(read_itk_affine(path), _A, rtol=0, atol=1e-12)
    # nitransforms parses ITK text as float32
    np.testing.assert_allclose(load_linear(str(path), fmt="itk").matrix, _A, atol=1e-5)
    # SimpleITK maps the same points (in LPS): p_moving = A @ p_fixed
    transform = sitk.ReadTransform(str(path))
    points = np.random.default_rng(0).uniform(-90, 90, (20, 3))
    moved = [transform.TransformPoint(p.tolist()) for p in _lps(points)]
    expected = (_A @ np.c_[points, np.ones(len(points))].T)[:3].T
    np.testing.assert_allclose(_lps(moved), expected, atol=1e-9)


def test_centred_simpleitk_transform_reads_as_the_same_points(tmp_path):
    """A transform with a centre of rotation (as registration returns) maps the same points
    after :func:`read_itk_affine`."""
    import SimpleITK as sitk

    transform = sitk.AffineTransform(3)
    transform.SetMatrix((np.eye(3) + 0.05 * np.arange(9).reshape(3, 3) / 9).ravel().tolist())
    transform.SetTranslation([4.0, -7.5, 2.25])
    transform.SetCenter([-12.3456789, 20.987654, 33.3333333])
    sitk.WriteTransform(transform, str(tmp_path / "centred.txt"))
    matrix = read_itk_affine(tmp_path / "centred.txt")
    points = np.random.default_rng(1).uniform(-90, 90, (20, 3))
    moved = [transform.TransformPoint(p.tolist()) for p in _lps(points)]
    np.testing.assert_allclose((matrix @ np.c_[points, np.ones(20)].T)[:3].T, _lps(moved),
                               atol=1e-9)


@pytest.fixture(scope="module")
def _fixture_on_template(lib_t1w_path):
    from bids_app.utils.templates import template_path

    moving = load_t1w(lib_t1w_path)
    grid = nb.load(template_path("T1w"))
    return moving, grid, resample_to_grid(moving, grid, _A)


def test_resampling_is_what_the_app_computed_before(_fixture_on_template):
    _, grid, out = _fixture_on_template
    assert out.dtype == np.float32 and out.shape == grid.shape
    assert out.sum(dtype=np.float64) == pytest.approx(_A_RESAMPLED["sum"], rel=1e-6)
    assert int((out > 0).sum()) == _A_RESAMPLED["nonzero"]
    for ijk in [(48, 56, 44), (30, 70, 50), (60, 40, 30), (20, 56, 44)]:
        assert out[ijk] == pytest.approx(_A_RESAMPLED[ijk], rel=1e-6)


def test_nitransforms_resampling_gives_the_same_image(_fixture_on_template):
    """nitransforms' resampling agrees (the app keeps scipy's, 4-5 times faster)."""
    from nitransforms.linear import Affine
    from nitransforms.resampling import apply

    moving, grid, out = _fixture_on_template
    floats = nb.Nifti1Image(np.asanyarray(moving.dataobj, dtype=np.float32), moving.affine)
    theirs = apply(Affine(_A, reference=grid), floats, order=1, mode="constant", cval=0.0,
                   prefilter=False, output_dtype=np.float32)
    np.testing.assert_allclose(np.asanyarray(theirs.dataobj), out, rtol=0,
                               atol=2e-6 * float(out.max()))
