"""``blindharmony`` end to end: exit codes, and no partial output on bad input.

The numerical library is replaced by fast fakes (``fake_library`` in conftest.py), so a
whole participant-level run takes a few seconds.
"""

import json
import os
import shutil

import pytest

from bids_app.cli.run import main, plugin_settings, run
from bids_app.cli.parser import parse_args
from conftest import make_bids, write_nifti


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _run(capsys, *argv):
    code = run([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "out", tmp_path / "work"


def test_main_exits_with_code(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"])
    assert exc.value.code == 66


def test_missing_bids_dir(capsys, tmp_path, dirs):
    out, work = dirs
    code, err = _run(capsys, tmp_path / "nope", out, "participant", "-w", work)
    assert code == 66
    assert err.strip().splitlines()[-1].startswith("blindharmony: error: BIDS dataset not found")
    assert _files(out) == [] and not work.exists()


def test_not_bids(capsys, tmp_path, dirs):
    out, work = dirs
    (tmp_path / "raw").mkdir()
    code, err = _run(capsys, tmp_path / "raw", out, "participant", "-w", work)
    assert code == 65 and "not a BIDS dataset (no dataset_description.json)" in err
    assert _files(out) == []


def test_output_is_bids_dir(capsys, bids_skeleton, dirs):
    before = _files(bids_skeleton)
    code, err = _run(capsys, bids_skeleton, bids_skeleton, "participant", "-w", dirs[1])
    assert code == 64 and "usage:" in err and "blindharmony: error:" in err
    assert _files(bids_skeleton) == before


def test_work_dir_in_bids_dir(capsys, bids_skeleton, dirs):
    out, _ = dirs
    code, _ = _run(capsys, bids_skeleton, out, "participant", "-w", bids_skeleton / "work")
    assert code == 64
    assert not (bids_skeleton / "work").exists() and _files(out) == []


def test_unknown_participant(capsys, bids_skeleton, dirs):
    out, work = dirs
    code, err = _run(capsys, bids_skeleton, out, "participant", "-w", work,
                     "--participant-label", "05")
    assert code == 66 and "sub-05" in err
    assert _files(out) == []


def test_no_t1w(capsys, tmp_path, dirs, fake_library):
    out, work = dirs
    bids = make_bids(tmp_path / "bids", t1w={}, extra=["sub-01/anat/sub-01_T2w.nii.gz"])
    code, err = _run(capsys, bids, out, "participant", "-w", work, "--skip-bids-validation")
    assert code == 18 and "no T1w image matched" in err
    assert _files(out) == []


def test_session_without_t1w(capsys, bids_skeleton, dirs, fake_library):
    out, work = dirs
    code, _ = _run(capsys, bids_skeleton, out, "participant", "-w", work,
                   "--skip-bids-validation", "--session-label", "7")
    assert code == 18 and _files(out) == []


def test_bad_image_leaves_no_output(capsys, bids_skeleton, dirs, fake_library):
    out, work = dirs
    write_nifti(bids_skeleton / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz", shape=(12, 12, 10, 3))
    code, err = _run(capsys, bids_skeleton, out, "participant", "-w", work,
                     "--skip-bids-validation")
    assert code == 65 and "sub-02_ses-1_T1w.nii.gz" in err and "3D" in err
    assert _files(out) == []


def test_bids_validation_error(capsys, bids_skeleton, dirs, validator, fake_library):
    out, work = dirs
    bad = bids_skeleton / "sub-01/ses-1/anat/sub-01_ses-1_badname.nii.gz"
    shutil.copy(bids_skeleton / "sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz", bad)
    code, err = _run(capsys, bids_skeleton, out, "participant", "-w", work)
    assert code == 16 and "BIDS validator found errors" in err
    assert _files(out) == []
    # only the selected participants are validated
    code, _ = _run(capsys, bids_skeleton, out, "participant", "-w", work,
                   "--participant-label", "02", "--nprocs", "1")
    assert code == 0


def test_validator_missing_is_a_warning(capsys, bids_skeleton, dirs, fake_library):
    from bids_app.cli import validation

    assert validation.validate_bids(bids_skeleton, executable=None) in (True, False)
    os_path = os.environ.get("PATH", "")
    try:
        os.environ["PATH"] = ""
        assert validation.validate_bids(bids_skeleton) is False
    finally:
        os.environ["PATH"] = os_path


def test_participant_run(capsys, bids_skeleton, dirs, fake_library, validator):
    """Full run with fake numerics: every T1w gets its derivatives; outputs validate."""
    out, work = dirs
    before = sorted((p, p.stat().st_mtime) for p in bids_skeleton.rglob("*"))
    code, err = _run(capsys, bids_skeleton, out, "participant", "-w", work, "--nprocs", "1",
                     "--participant-label", "01", "--device", "cpu")
    assert code == 0, err
    assert sorted((p, p.stat().st_mtime) for p in bids_skeleton.rglob("*")) == before
    names = {p.relative_to(out).as_posix() for p in _files(out)}
    for stem in ("sub-01/ses-1/anat/sub-01_ses-1_run-1", "sub-01/ses-1/anat/sub-01_ses-1_run-2",
                 "sub-01/ses-2/anat/sub-01_ses-2_acq-fast"):
        for suffix in ("_desc-harmonized_T1w.nii.gz", "_desc-harmonized_T1w.json",
                       "_space-MNIColin27_res-2_desc-harmonized_T1w.nii.gz",
                       "_space-MNIColin27_res-2_desc-harmonized_T1w.json",
                       "_from-T1w_to-MNIColin27_mode-image_xfm.txt"):
            assert stem + suffix in names
    assert not any(n.startswith("sub-02") for n in names)
    assert {"dataset_description.json", ".bidsignore", "README.md"} <= names
    meta = json.loads((out / "sub-01/ses-1/anat/"
                       "sub-01_ses-1_run-2_space-MNIColin27_res-2_desc-harmonized_T1w.json")
                      .read_text())
    assert meta["Sources"] == [
        "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz",
        "bids::sub-01/ses-1/anat/sub-01_ses-1_run-2_from-T1w_to-MNIColin27_mode-image_xfm.txt",
    ]
    assert meta["Prior"] == {"Name": "fake_prior", "Version": "0.0.test", "SHA256": "0" * 64}
    assert meta["Harmonization"]["Method"] == "flow-intensity"
    assert meta["Harmonization"]["Device"] == "cpu"
    # hyperparameters flat, what the method decided for this image apart
    assert meta["Harmonization"]["Knots"] == 3 and "Selected" not in meta["Harmonization"]
    assert meta["Harmonization"]["Decision"] == {"Selected": "identity", "Gamma": 1.0}
    assert meta["Metrics"]["NCCToSource"] == pytest.approx(0.99)
    assert not any(".tmp" in n for n in names)

    proc = __import__("subprocess").run([validator, str(out), "--format", "json"],
                                        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]

    # a re-run replaces the outputs (sinks always run, even from a warm work folder)
    victim = out / "sub-01/ses-2/anat/sub-01_ses-2_acq-fast_desc-harmonized_T1w.nii.gz"
    victim.unlink()
    code, err = _run(capsys, bids_skeleton, out, "participant", "-w", work, "--nprocs", "1",
                     "--participant-label", "01", "--device", "cpu",
                     "--skip-bids-validation")
    assert code == 0, err
    assert victim.exists()


def test_node_crash(capsys, bids_skeleton, dirs, fake_library, monkeypatch):
    from bids_app.harmonize import volume

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(volume, "harmonize_volume", broken)
    out, work = dirs
    code, err = _run(capsys, bids_skeleton, out, "participant", "-w", work, "--nprocs", "1",
                     "--participant-label", "02", "--skip-bids-validation")
    assert code == 1
    assert "crash file" in err and str(out / "logs") in err
    assert not list(out.glob("sub-*"))


def test_plugin_settings(bids_skeleton, tmp_path):
    base = [str(bids_skeleton), str(tmp_path / "o"), "participant", "-w", str(tmp_path / "w")]
    assert plugin_settings(parse_args(base + ["--nprocs", "1"])) == ("Linear", {})
    # room for one job at a time: Linear, the job gets all threads
    assert plugin_settings(parse_args(base + ["--nprocs", "2"]))[0] == "Linear"
    name, args = plugin_settings(parse_args(base + ["--nprocs", "4", "--omp-nthreads", "2",
                                                    "--mem-gb", "3"]))
    assert name == "MultiProc"
    assert args["n_procs"] == 4 and args["memory_gb"] == 3 and args["poll_sleep_duration"] == 0.05
    assert args["mp_context"] == "forkserver"


def test_a_cluster_plugin_file_sets_nipypes_polling_and_job_owner(bids_skeleton, tmp_path,
                                                                  monkeypatch):
    """nipype's SLURM plugin polls at execution.poll_sleep_duration (not its plugin args)
    and names jobs after LOGNAME: the shipped plugin file's 10 s must reach the former, and
    a missing LOGNAME must not crash the run."""
    from pathlib import Path

    from nipype import config

    from bids_app.cli.run import configure_nipype

    plugin = Path(__file__).parents[1] / "docker" / "plugins" / "slurm.yml"
    monkeypatch.delenv("LOGNAME", raising=False)
    monkeypatch.setenv("NIPYPE_CONFIG_DIR", str(tmp_path / "nipype"))
    opts = parse_args([str(bids_skeleton), str(tmp_path / "o"), "participant",
                       "-w", str(tmp_path / "w"), "--use-plugin", str(plugin)])
    configure_nipype(opts, tmp_path / "logs")
    try:
        assert float(config.get("execution", "poll_sleep_duration")) == 10
        assert os.environ["LOGNAME"]
        local = parse_args([str(bids_skeleton), str(tmp_path / "o"), "participant",
                            "-w", str(tmp_path / "w")])
        configure_nipype(local, tmp_path / "logs")
        assert float(config.get("execution", "poll_sleep_duration")) == 0.05
    finally:
        config.set("execution", "poll_sleep_duration", "0.05")
