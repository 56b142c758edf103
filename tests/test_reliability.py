"""Reliability of the whole app (issue #4): the real command on the real fixture images.

No fakes: the shipped prior, SimpleITK registration, the flow and nipype all run, in
``blindharmony`` processes (``python -m bids_app``, the console script's entry point)
or in-process through :func:`bids_app.cli.run.run`. The full runs are shared between
tests by module-scoped fixtures, so the module harmonizes eight images in all:

- ``header_run``: one participant whose T1w (the fixture after a gamma 0.7 contrast
  change, so that harmonization is not an identity) comes as five acquisitions: the
  fixture's own PSR header (permuted axes), an oblique header, LPS voxel order,
  2 x 2 x 4 mm voxels, int16 with ``scl_slope``/``scl_inter``; one run for all;
- ``concurrent_runs``: three processes started at once, one per participant, writing
  into one output folder with one work folder, with a read-only ``$HOME``;
- ``test_crashed_node_leaves_a_crash_file``: an in-process run whose harmonization node
  raises (stops after the registration).

The bad-input tests fail before any image is harmonized (about a second each).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

from bids_app.__about__ import __packagename__, __version__
from bids_app.cli.run import run
from bids_app.errors import EX_CANTCREAT, EX_CRASH, EX_DATAERR, EX_NOINPUT

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "data" / "ixi-hh-mini"
SUBJECTS = ("IXI052", "IXI094", "IXI146")
SUBJECT = "IXI052"
#: Options of every full run: one job and one thread at a time, no validator.
LEAN = ["--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1"]
#: Outputs of every T1w image, after its ``sub-X[_acq-A]`` stem.
SUFFIXES = (
    "_desc-harmonized_T1w.nii.gz",
    "_desc-harmonized_T1w.json",
    "_space-MNIColin27_res-2_desc-harmonized_T1w.nii.gz",
    "_space-MNIColin27_res-2_desc-harmonized_T1w.json",
    "_from-T1w_to-MNIColin27_mode-image_xfm.txt",
)
#: Parts of a file name that mark temporary or half-written files.
PARTIAL_MARKS = (".tmp", "~", ".part", ".partial", ".lock", ".swp")


# ------------------------------------------------------------------------------ helpers


def _source(subject):
    return FIXTURE / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"


def _copy_dataset(root, subjects=SUBJECTS):
    """A copy of the fixture dataset holding ``subjects`` (T1w images copied as they are)."""
    root.mkdir(parents=True)
    for name in ("dataset_description.json", "README", "T1w.json"):
        shutil.copy(FIXTURE / name, root / name)
    rows = (FIXTURE / "participants.tsv").read_text().splitlines()
    keep = [rows[0]] + [r for r in rows[1:] if r.split("\t")[0][4:] in subjects]
    (root / "participants.tsv").write_text("\n".join(keep) + "\n")
    for subject in subjects:
        anat = root / f"sub-{subject}" / "anat"
        anat.mkdir(parents=True)
        shutil.copy(_source(subject), anat)
    return root


def _files(folder):
    """Every file under ``folder`` (hidden ones included), relative, sorted."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _entries(folder):
    """Every file and folder under ``folder`` (hidden ones included)."""
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*"))


def _snapshot(folder):
    """Path, size and modification time of everything under ``folder``."""
    return sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(folder).rglob("*")
    )


def _partial_files(folder):
    return [
        name
        for name in _files(folder)
        if any(mark in Path(name).name for mark in PARTIAL_MARKS)
        or (Path(name).name.startswith(".") and Path(name).name != ".bidsignore")
    ]


def _corr(a, b):
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _rotation_x(degrees):
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[c, -s], [s, c]]
    return rotation


def _float_image(data, affine):
    img = nb.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _reoriented(img, axcodes):
    """``img`` with its voxels reordered to ``axcodes``: the same image in world space."""
    ornt = nb.orientations.ornt_transform(
        nb.orientations.io_orientation(img.affine), nb.orientations.axcodes2ornt(axcodes)
    )
    out = img.as_reoriented(ornt)
    return _float_image(out.get_fdata(), out.affine)


def _superior_axis(affine):
    """The voxel axis closest to the world's inferior-superior axis."""
    return int(np.argmax(np.abs(affine[2, :3])))


def _shifted(src):
    """The fixture image after a gamma 0.7 contrast change, in 0..1000 (float32).

    The default method returns in-domain images unchanged; a shifted source makes it
    estimate a real intensity map from the registered, resampled image, so the header
    variants test the whole geometry path, not an identity.
    """
    data = src.get_fdata(dtype=np.float32)
    return (1000.0 * (data / data.max()) ** 0.7).astype(np.float32)


def _variants(src):
    """Acquisition label -> image: the shifted fixture under several headers.

    ``plain`` keeps the fixture's own header (PSR voxel order, i.e. permuted axes);
    ``oblique`` has the same voxels under a header rotated 15 degrees about x; ``lps``
    the same world image in LPS voxel order; ``aniso`` every other slice, 2 x 2 x 4 mm;
    ``scaled`` the same image stored as int16 with scl_slope 2.5 and scl_inter 10.
    """
    data = _shifted(src)
    axis = _superior_axis(src.affine)
    every_other = [slice(None)] * 3
    every_other[axis] = slice(None, None, 2)
    stretch = np.eye(4)
    stretch[axis, axis] = 2.0  # 2 mm -> 4 mm slices

    plain = _float_image(data, src.affine)
    scaled = nb.Nifti1Image(np.round((data - 10.0) / 2.5).astype(np.int16), src.affine)
    scaled.header.set_data_dtype(np.int16)
    scaled.header.set_slope_inter(2.5, 10.0)
    return {
        "plain": plain,
        "oblique": _float_image(data, _rotation_x(15) @ src.affine),
        "lps": _reoriented(plain, ("L", "P", "S")),
        "aniso": _float_image(data[tuple(every_other)], src.affine @ stretch),
        "scaled": scaled,
    }


def _stem(subject, acq=None):
    return f"sub-{subject}" + (f"_acq-{acq}" if acq else "")


def _native_output(out, subject, acq=None):
    return out / f"sub-{subject}" / "anat" / f"{_stem(subject, acq)}_desc-harmonized_T1w.nii.gz"


def _last_line(err):
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


def _app_env(home, tmpdir):
    """Environment of a ``blindharmony`` process: fresh, with ``home`` as ``$HOME``."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("XDG_") or name in ("MPLCONFIGDIR", "NIPYPE_CONFIG_DIR"):
            del env[name]
    env.update(
        HOME=str(home),
        TMPDIR=str(tmpdir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _sandbox(root):
    """Empty ``home`` (made read-only by :func:`_read_only`), ``tmp`` and ``cwd`` folders."""
    sandbox = SimpleNamespace(**{name: root / name for name in ("home", "tmp", "cwd")})
    for folder in vars(sandbox).values():
        folder.mkdir()
    return sandbox


def _run_app(sandbox, *argv, wait=True):
    """Start ``blindharmony argv`` in ``sandbox``; the finished process or a Popen."""
    proc = subprocess.Popen(
        _app_command(*argv), env=_app_env(sandbox.home, sandbox.tmp), cwd=sandbox.cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return _finish(proc) if wait else proc


def _finish(proc, timeout=1800):
    """Wait for a process started by :func:`_run_app`: (exit code, stderr)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return SimpleNamespace(code=proc.returncode, err=err)


def _drop_root_override():
    """A command prefix that takes root's power to write into read-only folders, if any.

    Root ignores file permissions (``CAP_DAC_OVERRIDE``); without that capability a
    folder with mode 0o500 is read-only for root too, as for any user.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"] if setpriv else None


def _read_only_enforced():
    return _drop_root_override() is not None


def _app_command(*argv):
    """The console script's entry point (``bids_app.cli.run:main``) as a process.

    At the lowest priority, and unable to write into read-only folders even as root.
    """
    nice = ["nice", "-n", "19"] if shutil.which("nice") else []
    return [*nice, *(_drop_root_override() or []), sys.executable, "-m", "bids_app",
            *(str(a) for a in argv)]


@pytest.fixture(autouse=True)
def _in_process_env(monkeypatch, tmp_path):
    """In-process runs set these for their work folder: undo that after each test."""
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("NIPYPE_CONFIG_DIR", str(tmp_path / "nipype"))


# ------------------------------------------------------------- 1. headers and data types


ACQUISITIONS = ("plain", "oblique", "lps", "aniso", "scaled")


@pytest.fixture(scope="module")
def header_run(tmp_path_factory):
    """One ``blindharmony`` run over the header variants of one participant."""
    root = tmp_path_factory.mktemp("headers")
    bids = _copy_dataset(root / "bids", subjects=())
    (bids / "participants.tsv").write_text(f"participant_id\nsub-{SUBJECT}\n")
    anat = bids / f"sub-{SUBJECT}" / "anat"
    anat.mkdir(parents=True)
    for acq, img in _variants(nb.load(_source(SUBJECT))).items():
        nb.save(img, anat / f"{_stem(SUBJECT, acq)}_T1w.nii.gz")
    out, work = root / "out", root / "work"
    sandbox = _sandbox(root)
    sandbox.home.chmod(0o500)
    try:
        result = _run_app(sandbox, bids, out, "participant", "-w", work, *LEAN)
    finally:
        sandbox.home.chmod(0o700)
    return SimpleNamespace(code=result.code, err=result.err, bids=bids, out=out,
                           sandbox=sandbox)


def _header_pair(header_run, acq):
    """(source image, native harmonized image) of one acquisition."""
    source = nb.load(header_run.bids / f"sub-{SUBJECT}" / "anat" /
                     f"{_stem(SUBJECT, acq)}_T1w.nii.gz")
    return source, nb.load(_native_output(header_run.out, SUBJECT, acq))


def _assert_same_image(ours, plain):
    """Two harmonized images of the same voxels agree.

    The intensity map is estimated from the registered, resampled image, so a header
    that changes the registration or the sampling (4 mm slices) changes it a little:
    about 2 % of the mean intensity at most here, against about 40 % for the
    harmonization itself (see ``test_contrast_change_is_undone``).
    """
    ours, plain = np.asarray(ours, dtype=np.float64), np.asarray(plain, dtype=np.float64)
    assert ours.shape == plain.shape
    assert _corr(ours, plain) > 0.99
    assert np.abs(ours - plain).mean() < 0.05 * np.abs(plain).mean()


@pytest.mark.slow
def test_header_variants_run(header_run):
    assert header_run.code == 0, header_run.err[-3000:]
    names = set(_files(header_run.out))
    for acq in ACQUISITIONS:
        for suffix in SUFFIXES:
            assert f"sub-{SUBJECT}/anat/{_stem(SUBJECT, acq)}{suffix}" in names
    assert not _partial_files(header_run.out)
    assert not list((header_run.out / "logs").iterdir())
    for folder in vars(header_run.sandbox).values():  # read-only $HOME, $TMPDIR, cwd
        assert _entries(folder) == []


@pytest.mark.slow
@pytest.mark.parametrize("acq", ACQUISITIONS)
def test_output_on_the_source_grid(header_run, acq):
    """The native derivative has the source's shape and affine and finite values."""
    assert header_run.code == 0, header_run.err[-3000:]
    source, result = _header_pair(header_run, acq)
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-4)
    assert nb.aff2axcodes(result.affine) == nb.aff2axcodes(source.affine)
    data = result.get_fdata()
    assert np.isfinite(data).all() and data.std() > 0
    sidecar = _native_output(header_run.out, SUBJECT, acq).with_suffix("").with_suffix(".json")
    assert json.loads(sidecar.read_text())["Sources"] == [
        f"bids:raw:sub-{SUBJECT}/anat/{_stem(SUBJECT, acq)}_T1w.nii.gz"
    ]


@pytest.fixture(scope="module")
def plain_result(header_run):
    """The harmonized plain acquisition (the fixture's own PSR header)."""
    assert header_run.code == 0, header_run.err[-3000:]
    source, result = _header_pair(header_run, "plain")
    assert nb.aff2axcodes(source.affine) == ("P", "S", "R")  # permuted axes
    return result


@pytest.mark.slow
def test_contrast_change_is_undone(plain_result):
    """The shifted plain image really is harmonized: closer to the unshifted fixture."""
    original = nb.load(_source(SUBJECT)).get_fdata()
    shifted = _shifted(nb.load(_source(SUBJECT)))
    harmonized = plain_result.get_fdata()
    assert np.isfinite(harmonized).all()
    assert _corr(harmonized, original) > _corr(shifted, original)
    assert np.abs(harmonized - shifted).mean() > 0.1 * shifted.mean()  # not an identity


@pytest.mark.slow
def test_oblique_header(header_run, plain_result):
    """The same voxels under a header rotated by 15 degrees: the same harmonized voxels."""
    _, result = _header_pair(header_run, "oblique")
    _assert_same_image(result.get_fdata(), plain_result.get_fdata())


@pytest.mark.slow
def test_lps_voxel_order(header_run, plain_result):
    """The same world image in LPS voxel order: the same harmonized image in world space."""
    _, result = _header_pair(header_run, "lps")
    assert nb.aff2axcodes(result.affine) == ("L", "P", "S")
    ours, plain = nb.as_closest_canonical(result), nb.as_closest_canonical(plain_result)
    np.testing.assert_allclose(ours.affine, plain.affine, atol=1e-4)
    _assert_same_image(ours.get_fdata(), plain.get_fdata())


@pytest.mark.slow
def test_anisotropic_voxels(header_run, plain_result):
    """Every other slice, 4 mm apart: the harmonized slices match the plain run's."""
    _, result = _header_pair(header_run, "aniso")
    axis = _superior_axis(plain_result.affine)
    every_other = [slice(None)] * 3
    every_other[axis] = slice(None, None, 2)
    assert sorted(result.header.get_zooms()) == pytest.approx([2.0, 2.0, 4.0])
    _assert_same_image(result.get_fdata(), plain_result.get_fdata()[tuple(every_other)])


@pytest.mark.slow
def test_scaled_int16(header_run, plain_result):
    """int16 with scl_slope 2.5 and scl_inter 10: read in real units, written in real units."""
    source, result = _header_pair(header_run, "scaled")
    assert source.get_data_dtype() == np.int16
    assert (source.dataobj.slope, source.dataobj.inter) == (2.5, 10.0)
    plain_source, _ = _header_pair(header_run, "plain")
    # the stored int16 values mean the plain image (up to rounding) once scaled
    np.testing.assert_allclose(source.get_fdata(), plain_source.get_fdata(), atol=1.25 + 1e-3)
    _assert_same_image(result.get_fdata(), plain_result.get_fdata())
    # the output is plain float data: no scaling left in its header
    assert result.get_data_dtype() == np.float32
    slope, inter = result.header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)


# ---------------------------------------- 2 + 3. concurrent runs, read-only $HOME


@pytest.fixture(scope="module")
def concurrent_runs(tmp_path_factory):
    """Three ``blindharmony`` processes at once, one per participant, one output folder.

    They also share one work folder, and each has a read-only, empty ``$HOME``, no
    ``XDG_*`` variables, its own ``$TMPDIR`` and an empty current folder: after the runs
    all of these must still be empty, and the input dataset unchanged.
    """
    root = tmp_path_factory.mktemp("concurrent")
    bids = _copy_dataset(root / "bids")
    sandbox = _sandbox(root)
    before = _snapshot(bids)
    out, work = root / "out", root / "work"
    sandbox.home.chmod(0o500)
    try:
        procs = {
            subject: _run_app(sandbox, bids, out, "participant", "--participant-label",
                              subject, "-w", work, *LEAN, wait=False)
            for subject in SUBJECTS
        }
        results = {subject: _finish(proc) for subject, proc in procs.items()}
    finally:
        sandbox.home.chmod(0o700)
    return SimpleNamespace(results=results, bids=bids, out=out, sandbox=sandbox,
                           before=before)


@pytest.mark.slow
def test_concurrent_runs_succeed(concurrent_runs):
    for subject, result in concurrent_runs.results.items():
        assert result.code == 0, f"sub-{subject}: {result.err[-3000:]}"


@pytest.mark.slow
def test_concurrent_dataset_description(concurrent_runs):
    description = json.loads((concurrent_runs.out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert len(description["GeneratedBy"]) == 1
    assert description["GeneratedBy"][0]["Name"] == __packagename__
    assert description["GeneratedBy"][0]["Version"] == __version__
    lines = (concurrent_runs.out / ".bidsignore").read_text().splitlines()
    assert len(lines) == len(set(lines)) and "logs/" in lines


@pytest.mark.slow
def test_concurrent_outputs_complete(concurrent_runs):
    out = concurrent_runs.out
    names = set(_files(out))
    for subject in SUBJECTS:
        for suffix in SUFFIXES:
            assert f"sub-{subject}/anat/sub-{subject}{suffix}" in names
        assert f"sub-{subject}.html" in names
        source = nb.load(_source(subject))
        for image in out.glob(f"sub-{subject}/anat/*.nii.gz"):
            data = nb.load(image).get_fdata()
            assert np.isfinite(data).all() and data.std() > 0, image
        native = nb.load(_native_output(out, subject))
        assert native.shape == source.shape
        np.testing.assert_allclose(native.affine, source.affine, atol=1e-4)
    for sidecar in out.rglob("*.json"):
        json.loads(sidecar.read_text())  # every sidecar parses
    assert not [p for p in (out / "logs").rglob("*") if p.is_file()]  # no crash file


@pytest.mark.slow
def test_concurrent_no_partial_files(concurrent_runs):
    assert _partial_files(concurrent_runs.out) == []


@pytest.mark.slow
def test_nothing_written_outside_output_and_work(concurrent_runs):
    """Read-only ``$HOME``: the runs succeed and write nothing there, nor anywhere else."""
    sandbox = concurrent_runs.sandbox
    assert _entries(sandbox.home) == []
    assert _entries(sandbox.tmp) == []
    assert _entries(sandbox.cwd) == []
    assert _snapshot(concurrent_runs.bids) == concurrent_runs.before


# ------------------------------------------------------------------- 4. a crashed node


@pytest.mark.slow
def test_crashed_node_leaves_a_crash_file(tmp_path, monkeypatch, capsys):
    """A node that raises: exit 1, one error line naming this run's crash file, which
    holds the node's error; no derivative is written."""
    from bids_app.harmonize import volume

    def broken(*args, **kwargs):
        raise ValueError("injected harmonization failure")

    monkeypatch.setattr(volume, "harmonize_volume", broken)
    bids = _copy_dataset(tmp_path / "bids", subjects=(SUBJECT,))
    out = tmp_path / "out"
    # an old crash file of another run is not reported as this run's
    (out / "logs" / "old-run").mkdir(parents=True)
    (out / "logs" / "old-run" / "crash-old-harmonize.txt").write_text("old\n")

    code = run([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), *LEAN])
    err = capsys.readouterr().err
    assert code == EX_CRASH == 1
    last = _last_line(err)
    assert last.startswith(
        f"{__packagename__}: error: a workflow node failed; crash file(s): {out / 'logs'}"
    ), err[-3000:]
    crashes = last.split("crash file(s): ", 1)[1].split(", ")
    assert len(crashes) == 1 and "old" not in crashes[0]
    crash = Path(crashes[0])
    assert crash.is_file() and crash.parent.parent == out / "logs"
    assert crash.name.startswith("crash-") and "harmonize" in crash.name
    text = crash.read_text()
    assert "ValueError" in text and "injected harmonization failure" in text
    assert not list(out.glob("sub-*")) and not list(out.glob("*.html"))
    assert _partial_files(out) == []


# --------------------------------------------------------------------------- bad input


def _bad_run(capsys, tmp_path, *argv, bids=None):
    """Run the app on a one-participant copy of the fixture; (code, stderr, out, work)."""
    bids = bids or _copy_dataset(tmp_path / "bids", subjects=(SUBJECT,))
    out, work = tmp_path / "out", tmp_path / "work"
    code = run([str(a) for a in (bids, out, "participant", "-w", work, *LEAN, *argv)])
    err = capsys.readouterr().err
    return code, err, out, work


def _assert_one_error_line(err, *fragments):
    """The last stderr line is the only error line and names every fragment."""
    last = _last_line(err)
    assert last.startswith(f"{__packagename__}: error: "), err[-2000:]
    assert [line for line in err.splitlines() if " error: " in line] == [last]
    assert "Traceback" not in err
    for fragment in fragments:
        assert str(fragment) in last, last


def _assert_no_work(work):
    """No nipype work was done: the work folder holds at most matplotlib's font cache.

    Loading the prior imports matplotlib (through nflows), which caches its font list
    in ``MPLCONFIGDIR``: the work folder, never ``$HOME``.
    """
    if work.exists():
        assert {p.split("/")[0] for p in _entries(work)} <= {".matplotlib"}


def _truncated(path):
    data = _source(SUBJECT).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _uncompressed_truncated(path):
    data = gzip.decompress(_source(SUBJECT).read_bytes())
    path.with_suffix("").write_bytes(data[: len(data) // 2])
    path.unlink()
    return path.with_suffix("")


def _array(shape, fill=None, *, bad=False):
    def write(path):
        data = np.random.default_rng(0).random(shape).astype(np.float32) * 100
        if fill is not None:
            data[...] = fill
        if bad:
            data[3, 4, 5], data[6, 7, 8] = np.nan, np.inf
        nb.save(nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)

    return write


def _text(path):
    path.write_text("not an image\n")


def _empty(path):
    path.write_bytes(b"")


#: Case -> (writes a bad T1w at a path, returns its new path or None; the problem named).
BAD_IMAGES = {
    "truncated": (_truncated, "cannot read"),
    "truncated-nii": (_uncompressed_truncated, "cannot read"),
    "not-nifti": (_text, "cannot read"),
    "empty-file": (_empty, "cannot read"),
    "4d": (_array((20, 20, 20, 3)), "expected a 3D image, got 4D"),
    "2d": (_array((20, 20)), "expected a 3D image, got 2D"),
    "nan-inf": (_array((20, 20, 20), bad=True), "2 voxels are NaN or infinite"),
    "constant": (_array((20, 20, 20), fill=7.0), "constant"),
    "zeros": (_array((20, 20, 20), fill=0.0), "constant (or empty)"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image(capsys, tmp_path, case):
    """A bad T1w: exit 65, one line naming the file and the problem, nothing written."""
    bids = _copy_dataset(tmp_path / "bids", subjects=(SUBJECT,))
    path = bids / f"sub-{SUBJECT}" / "anat" / f"sub-{SUBJECT}_T1w.nii.gz"
    make, problem = BAD_IMAGES[case]
    path = make(path) or path
    code, err, out, work = _bad_run(capsys, tmp_path, bids=bids)
    assert code == EX_DATAERR == 65
    _assert_one_error_line(err, path, problem)
    assert not out.exists()
    _assert_no_work(work)


def test_prior_missing(capsys, tmp_path):
    prior = tmp_path / "missing_prior.pt"
    code, err, out, work = _bad_run(capsys, tmp_path, "--prior", prior)
    assert code == EX_NOINPUT == 66
    _assert_one_error_line(err, prior, "prior bundle not found")
    assert not out.exists()
    _assert_no_work(work)


@pytest.mark.parametrize("case", ["random-bytes", "truncated", "empty"])
def test_prior_corrupt(capsys, tmp_path, case):
    from bids_app.flow.bundle import default_prior_path

    prior = tmp_path / f"{case}.pt"
    shipped = default_prior_path().read_bytes()
    prior.write_bytes({
        "random-bytes": np.random.default_rng(0).bytes(4096),
        "truncated": shipped[: len(shipped) // 2],
        "empty": b"",
    }[case])
    code, err, out, work = _bad_run(capsys, tmp_path, "--prior", prior)
    assert code == EX_DATAERR == 65
    _assert_one_error_line(err, prior, "not a readable prior bundle")
    assert not out.exists()
    _assert_no_work(work)


def test_output_dir_cannot_be_created(capsys, tmp_path):
    """The output folder's parent is a file: exit 73, the folder is named."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bids = _copy_dataset(tmp_path / "bids", subjects=(SUBJECT,))
    out, work = blocker / "out", tmp_path / "work"
    code = run([str(bids), str(out), "participant", "-w", str(work), *LEAN])
    err = capsys.readouterr().err
    assert code == EX_CANTCREAT == 73
    _assert_one_error_line(err, out, "cannot create output folder")
    _assert_no_work(work)


def test_output_dir_read_only(tmp_path):
    """An existing output folder without write permission: exit 73, nothing written."""
    if not _read_only_enforced():
        pytest.skip("root without setpriv: permissions do not stop writes")
    bids = _copy_dataset(tmp_path / "bids", subjects=(SUBJECT,))
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = _run_app(_sandbox(tmp_path), bids, out, "participant", "-w", work, *LEAN)
    finally:
        out.chmod(0o700)
    assert result.code == EX_CANTCREAT == 73, result.err[-2000:]
    _assert_one_error_line(result.err, out, "cannot create output folder", "Permission denied")
    assert _entries(out) == []
    _assert_no_work(work)


def test_work_dir_cannot_be_created(capsys, tmp_path):
    """The work folder's parent is a file: exit 73, the folder is named, no derivative."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err, out, _ = _bad_run(capsys, tmp_path, "-w", blocker / "work")
    assert code == EX_CANTCREAT == 73
    _assert_one_error_line(err, blocker / "work", "cannot create work folder")
    assert not list(out.glob("sub-*"))
