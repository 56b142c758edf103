"""Group level and subject reports, on a small fake output dataset of two sites."""

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.cli.run import run
from bids_app.reports.group import inherited_metadata
from bids_app.reports.stats import flag_outliers, out_of_domain_slices, robust_z
from bids_app.workflows.group import run_group

SHAPE = (20, 20, 20)
#: subject -> (site, relative folder); sub-04 has a session
SUBJECTS = {"01": "A", "02": "A", "03": "A", "04": "B", "05": "B", "06": "B"}
OUTLIER = "06"  # NCCToSource far below the others
OOD_SUBJECT, OOD_SLICE = "02", 11  # one slice with a high bits/dim


def _phantom(seed, gamma=1.0):
    """A noisy ellipsoid 'head' with a brighter core, never constant."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(float) - 9.5
    r = np.sqrt((grid[0] / 8) ** 2 + (grid[1] / 9) ** 2 + (grid[2] / 8) ** 2)
    data = np.where(r < 1, 60.0, 0.0) + np.where(r < 0.6, 40.0, 0.0)
    data = np.clip(data + rng.normal(0, 5, SHAPE) * (r < 1), 0, None)
    return (100 * (data / 100) ** gamma).astype("float32")


def _save(data, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])).to_filename(path)
    return path


def _stem(subject):
    return f"sub-{subject}_ses-1" if subject == "04" else f"sub-{subject}"


def _folder(subject):
    return f"sub-{subject}/ses-1/anat" if subject == "04" else f"sub-{subject}/anat"


def make_dataset(root):
    """A BIDS dataset (site A via the top-level T1w.json, site B overrides per subject)
    and its BlindHarmony outputs: native and reference-space images with sidecars."""
    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "two sites", "BIDSVersion": "1.10.0"}))
    (bids / "T1w.json").write_text(json.dumps(
        {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma",
         "MagneticFieldStrength": 3, "InstitutionName": "Site A", "RepetitionTime": 2.3}))
    (out / "logs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (subject, site) in enumerate(SUBJECTS.items()):
        gamma = 1.0 if site == "A" else 1.6
        src = _save(_phantom(i, gamma), bids / _folder(subject) / f"{_stem(subject)}_T1w.nii.gz")
        if site == "B":
            src.with_name(f"{_stem(subject)}_T1w.json").write_text(json.dumps(
                {"Manufacturer": "GE", "ManufacturersModelName": "Signa",
                 "MagneticFieldStrength": 1.5, "InstitutionName": "Site B"}))
        harmonized = _phantom(i, 1.0) * 0.9
        slices = [None] + [round(3.0 + rng.normal(0, 0.05), 4) for _ in range(18)] + [None]
        if subject == OOD_SUBJECT:
            slices[OOD_SLICE] = 6.5
        meta = {
            "Sources": [f"bids:raw:{_folder(subject)}/{_stem(subject)}_T1w.nii.gz"],
            "SkullStripped": False,
            "Prior": {"Name": "fake_prior", "Version": "0.0.test", "SHA256": "0" * 64},
            "Harmonization": {"Method": "flow-intensity", "Device": "cpu", "Knots": 8,
                              "IntensityMap": list(np.linspace(0, 1, 12).round(3)),
                              "Decision": {"Selected": "power", "BiasField": {
                                  "distance": 30.0 if site == "B" else 4.0,
                                  "threshold": 17.4, "corrected": site == "B"}}},
            "Metrics": {
                "NCCToSource": 0.5 if subject == OUTLIER else round(0.95 + rng.normal(0, .005), 4),
                "LatentNorm": round(1.0 + rng.normal(0, 0.02), 4),
                "BitsPerDim": round(3.0 + rng.normal(0, 0.03), 4),
                "SourceBitsPerDim": 3.2 if site == "A" else 3.6,
                "SliceBitsPerDim": slices,
                "HarmonizedSlices": 18,
                "Device": "cpu",
                "RunTimeSeconds": 1.5,
            },
        }
        for name in (f"{_stem(subject)}_desc-harmonized_T1w",
                     f"{_stem(subject)}_space-MNIColin27_res-2_desc-harmonized_T1w"):
            _save(harmonized, out / _folder(subject) / f"{name}.nii.gz")
            (out / _folder(subject) / f"{name}.json").write_text(json.dumps(meta))
    return bids, out


@pytest.fixture(scope="module")
def group_run(tmp_path_factory):
    """The fake dataset after ``run_group`` (target reference: an unscaled phantom)."""
    bids, out = make_dataset(tmp_path_factory.mktemp("reports"))
    reference = nib.Nifti1Image(_phantom(99), np.eye(4))
    assert run_group(out, bids, reference=reference) == 0
    return bids, out


def _tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_group_tsv(group_run):
    _, out = group_run
    rows = _tsv(out / "group_T1w.tsv")
    assert len(rows) == len(SUBJECTS)  # the space- images are not counted
    header = list(rows[0])
    for column in ("bids_name", "subject", "session", "Manufacturer", "ManufacturersModelName",
                   "MagneticFieldStrength", "InstitutionName", "StationName", "group",
                   "NCCToSource", "LatentNorm", "BitsPerDim", "SourceBitsPerDim",
                   "HarmonizedSlices", "Device", "RunTimeSeconds", "OutOfDomainSlices",
                   "Outliers"):
        assert column in header
    assert "SliceBitsPerDim" not in header and "run" not in header
    by_subject = {r["subject"]: r for r in rows}
    assert by_subject["01"]["Manufacturer"] == "Siemens"  # inherited from /T1w.json
    assert by_subject["01"]["StationName"] == "n/a"
    assert by_subject["04"]["Manufacturer"] == "GE" and by_subject["04"]["session"] == "1"
    assert by_subject["04"]["bids_name"] == "sub-04_ses-1_T1w"
    assert by_subject["05"]["group"] == "Site B · GE Signa 1.5T"
    assert by_subject["01"]["session"] == "n/a"
    assert by_subject[OOD_SUBJECT]["OutOfDomainSlices"] == "1"
    assert by_subject["01"]["OutOfDomainSlices"] == "0"
    # what the method decided: its map, and whether a smooth field was divided out
    assert {r["IntensityModel"] for r in rows} == {"power"}
    assert by_subject["05"]["BiasFieldCorrected"] == "True"
    assert by_subject["01"]["BiasFieldCorrected"] == "False"
    # the planted outlier, and only it, is flagged on NCCToSource
    flagged = {s for s, r in by_subject.items() if "NCCToSource" in r["Outliers"]}
    assert flagged == {OUTLIER}


def test_group_html(group_run):
    _, out = group_run
    text = (out / "group_T1w.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', text)
    # 3 group figures (histograms, metrics, slice overview) + mosaic and profile per image
    assert len(images) == 3 + 2 * len(SUBJECTS)
    assert all(src.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,"))
               for src in images)
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")
    for subject in SUBJECTS:
        assert f'href="sub-{subject}.html' in text
        assert (out / f"sub-{subject}.html").exists()
    assert "target domain" in text
    assert "sub-06" in text and "outlier" in text


def test_subject_report(group_run):
    _, out = group_run
    text = (out / "sub-04.html").read_text()
    figures = re.findall(r'<img src="([^"]+)"', text)
    assert figures == ["sub-04/figures/sub-04_ses-1_desc-mosaic_T1w.png",
                       "sub-04/figures/sub-04_ses-1_desc-sliceprofile_T1w.svg"]
    assert all((out / f).stat().st_size > 1000 for f in figures)
    assert "NCCToSource" in text and "flow-intensity" in text and "(12 values)" in text
    assert "IntensityMap" in text and "GE" in text
    lines = (out / ".bidsignore").read_text().splitlines()
    assert {"*.html", "figures", "group_*.tsv"} <= set(lines)
    assert not list(out.rglob("*.tmp"))


def test_bids_inheritance(tmp_path):
    bids, _ = make_dataset(tmp_path)
    a = inherited_metadata(bids / "sub-01/anat/sub-01_T1w.nii.gz", bids)
    b = inherited_metadata(bids / "sub-04/ses-1/anat/sub-04_ses-1_T1w.nii.gz", bids)
    assert a["Manufacturer"] == "Siemens" and a["RepetitionTime"] == 2.3
    assert b["Manufacturer"] == "GE" and b["RepetitionTime"] == 2.3
    # a sidecar with an entity the file does not have does not apply
    (bids / "acq-other_T1w.json").write_text(json.dumps({"Manufacturer": "Philips"}))
    assert inherited_metadata(bids / "sub-01/anat/sub-01_T1w.nii.gz", bids)["Manufacturer"] \
        == "Siemens"


def test_robust_flags():
    values = [0.95, 0.951, 0.949, 0.95, 0.952, 0.5]
    assert flag_outliers(values, -1).tolist() == [False] * 5 + [True]
    assert not flag_outliers(values, 1).any()
    assert not flag_outliers([1.0, 9.0, 1.0], 1).any()  # too few values to judge
    assert np.isnan(robust_z([np.nan, 1.0, 2.0])[0])
    assert out_of_domain_slices([None, None]) == []
    noise = np.random.default_rng(1).normal(0, 0.02, 40)
    # a smooth U-shaped profile (edges higher) is in domain; a spike over it is not
    profile = 3.0 + 0.5 * np.linspace(-1, 1, 40) ** 4 + noise
    assert out_of_domain_slices(profile.tolist()) == []
    profile[20] += 0.6
    assert out_of_domain_slices([None] + profile.tolist() + [None]) == [21]


def test_group_without_outputs_exits_18(tmp_path, capsys):
    bids, _ = make_dataset(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    code = run([str(bids), str(empty), "group"])
    assert code == 18
    err = capsys.readouterr().err
    assert "no participant outputs" in err and str(empty) in err
    assert list(empty.iterdir()) == []


def test_report_is_wired_per_subject(skeleton_files, tmp_path, monkeypatch):
    from bids_app.workflows.base import init_blindharmony_wf

    monkeypatch.setattr("shutil.which", lambda name: None)
    workflow = init_blindharmony_wf(
        subject_files=skeleton_files, bids_dir=str(tmp_path), output_dir=str(tmp_path / "o"),
        work_dir=str(tmp_path / "w"), prior_path=None, space="MNIColin27", resolution=2.0)
    names = {n.fullname for n in workflow._create_flat_graph().nodes()}
    for subject in skeleton_files:
        prefix = f"blindharmony_wf.single_subject_{subject}_wf."
        assert {prefix + "merge_t1w", prefix + "ds_report_wf.ds_report"} <= names
    sub_wf = workflow.get_node("single_subject_01_wf")
    merge = sub_wf.get_node("merge_t1w")
    assert merge.interface._numinputs == len(skeleton_files["01"])
    working = {n for n in names if not n.endswith(("inputnode", "outputnode"))}
    # 8 per T1w, 3 per subject (prior_reference, merge_t1w, ds_report)
    assert len(working) == 8 * 4 + 3 * 2


def test_subject_report_interface(group_run, tmp_path):
    from bids_app.interfaces.reports import SubjectReport

    bids, out = group_run
    (out / "sub-01.html").unlink()
    result = SubjectReport(output_dir=str(out), bids_dir=str(bids), subject_id="01",
                           wait_for=["x"]).run(cwd=str(tmp_path))
    assert Path(result.outputs.out_report) == out / "sub-01.html"
    assert (out / "sub-01.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_group_report_renders_in_chromium(group_run, tmp_path):
    _, out = group_run
    shot = tmp_path / "group.png"
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            ["nice", "-n", "19", CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             f"--screenshot={shot}", "--window-size=1280,2000",
             (out / "group_T1w.html").as_uri()],
            capture_output=True, text=True, timeout=50, env={**os.environ, "HOME": profile},
        )
    assert shot.exists(), proc.stderr[-2000:]
    image = np.asarray(__import__("matplotlib.image", fromlist=["imread"]).imread(shot))
    assert image.shape[:2] == (2000, 1280) and image.std() > 0.05


def test_participant_run_writes_subject_report(bids_skeleton, tmp_path, fake_library):
    """End to end through nipype (fake numerics, whose metrics have no per-slice list)."""
    out, work = tmp_path / "out", tmp_path / "work"
    code = run([str(bids_skeleton), str(out), "participant", "-w", str(work), "--nprocs", "1",
                "--participant-label", "02", "--skip-bids-validation"])
    assert code == 0
    text = (out / "sub-02.html").read_text()
    assert "sub-02_ses-1_T1w" in text and "NCCToSource" in text
    assert sorted(p.name for p in (out / "sub-02" / "figures").iterdir()) == [
        "sub-02_ses-1_desc-mosaic_T1w.png", "sub-02_ses-1_desc-sliceprofile_T1w.svg"]
    assert "figures" in (out / ".bidsignore").read_text().splitlines()
    assert run([str(bids_skeleton), str(out), "group"]) == 0
    assert len(_tsv(out / "group_T1w.tsv")) == 1
