"""Collecting the T1w images of the selected participants with pybids."""

import json

import pytest

from bids_app import errors
from bids_app.utils.bids import collect_t1w, list_participants, load_bids_filters
from conftest import SKELETON_T1W, make_bids, write_nifti


def _rel(found, root):
    return {s: [str(p).replace(str(root) + "/", "") for p in files] for s, files in found.items()}


def test_every_session_acq_and_run(bids_skeleton):
    found = collect_t1w(bids_skeleton)
    assert _rel(found, bids_skeleton) == {s: sorted(f) for s, f in SKELETON_T1W.items()}


def test_nothing_written_into_bids_dir(bids_skeleton):
    before = sorted(p for p in bids_skeleton.rglob("*"))
    collect_t1w(bids_skeleton, ["01"])
    assert sorted(p for p in bids_skeleton.rglob("*")) == before


def test_participant_and_session_selection(bids_skeleton):
    found = collect_t1w(bids_skeleton, ["01"], ["2"])
    assert _rel(found, bids_skeleton) == {
        "01": ["sub-01/ses-2/anat/sub-01_ses-2_acq-fast_T1w.nii.gz"]}


def test_filters(bids_skeleton, tmp_path):
    filt = tmp_path / "f.json"
    filt.write_text(json.dumps({"t1w": {"acquisition": None, "run": [2]}}))
    found = collect_t1w(bids_skeleton, bids_filters=load_bids_filters(filt))
    assert _rel(found, bids_skeleton) == {
        "01": ["sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz"]}
    filt.write_text(json.dumps({"t1w": {"acquisition": "*"}}))
    found = collect_t1w(bids_skeleton, bids_filters=load_bids_filters(filt))
    assert list(found) == ["01"] and len(found["01"]) == 1


def test_derivatives_folder_ignored(bids_skeleton):
    write_nifti(bids_skeleton / "derivatives/x/sub-01/anat/sub-01_desc-x_T1w.nii.gz")
    assert len(collect_t1w(bids_skeleton)["01"]) == 3


def test_unknown_participant(bids_skeleton):
    with pytest.raises(errors.MissingInputError) as exc:
        collect_t1w(bids_skeleton, ["01", "03"])
    assert exc.value.exit_code == 66 and "sub-03" in str(exc.value)


def test_participant_without_t1w_is_skipped(tmp_path, caplog):
    root = make_bids(tmp_path / "bids", extra=["sub-03/anat/sub-03_T2w.nii.gz"])
    assert list_participants(root) == ["01", "02", "03"]
    assert sorted(collect_t1w(root)) == ["01", "02"]
    assert "sub-03 has no T1w" in caplog.text
    with pytest.raises(errors.NoMatchError) as exc:
        collect_t1w(root, ["03"])
    assert exc.value.exit_code == 18


def test_same_entities_twice(tmp_path):
    root = make_bids(tmp_path / "bids", t1w={"01": ["sub-01/anat/sub-01_T1w.nii.gz"]})
    write_nifti(root / "sub-01/anat/sub-01_T1w.nii")
    with pytest.raises(errors.InputDataError) as exc:
        collect_t1w(root)
    assert exc.value.exit_code == 65 and "same BIDS entities" in str(exc.value)
