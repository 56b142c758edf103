"""Derivative names, sidecars, atomic writes of the output dataset, and its validity."""

import json
import multiprocessing
import subprocess

import pytest

from bids_app.errors import OutputError
from bids_app.utils.derivatives import (
    dataset_description,
    derivative_path,
    init_output_dir,
    merge_bidsignore,
    resolution_label,
    save_derivative,
    t1w_sidecar,
)
from conftest import write_nifti

SRC = "/data/sub-01/ses-1/anat/sub-01_ses-1_acq-mp2_ce-gd_rec-norm_run-02_T1w.nii.gz"


@pytest.mark.parametrize(
    "source,entities,expected",
    [
        ("/data/sub-01/anat/sub-01_T1w.nii.gz", {"desc": "harmonized"},
         "sub-01/anat/sub-01_desc-harmonized_T1w.nii.gz"),
        (SRC, {"desc": "harmonized"},
         "sub-01/ses-1/anat/"
         "sub-01_ses-1_acq-mp2_ce-gd_rec-norm_run-02_desc-harmonized_T1w.nii.gz"),
        ("/data/sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii",
         {"space": "MNIColin27", "res": "2", "desc": "harmonized"},
         "sub-01/ses-1/anat/sub-01_ses-1_run-1_space-MNIColin27_res-2_desc-harmonized_T1w.nii.gz"),
    ],
)
def test_t1w_names(source, entities, expected):
    assert derivative_path(source, suffix="T1w", extension=".nii.gz", **entities).as_posix() \
        == expected


def test_xfm_name():
    path = derivative_path("/data/sub-01/ses-1/anat/sub-01_ses-1_acq-fast_run-3_T1w.nii.gz",
                           suffix="xfm", extension=".txt", from_="T1w", to="MNIColin27",
                           mode="image")
    assert path.as_posix() == (
        "sub-01/ses-1/anat/"
        "sub-01_ses-1_acq-fast_run-3_from-T1w_to-MNIColin27_mode-image_xfm.txt")


def test_unknown_entity_is_an_error():
    with pytest.raises(ValueError):
        derivative_path(SRC, suffix="T1w", extension=".nii.gz", echo="1")


@pytest.mark.parametrize("mm,label", [(2, "2"), (2.0, "2"), (1.5, "1p5"), (0.75, "0p75")])
def test_resolution_label(mm, label):
    assert resolution_label(mm) == label


def test_sidecar_keys(tmp_path):
    bids = tmp_path / "bids"
    source = bids / "sub-01/anat/sub-01_run-1_T1w.nii.gz"
    xfm = tmp_path / "out/sub-01/anat/sub-01_run-1_from-T1w_to-X_mode-image_xfm.txt"
    meta = t1w_sidecar(source_file=source, bids_dir=bids, output_dir=tmp_path / "out",
                       sources=[xfm], prior={"Name": "p", "Version": "1", "SHA256": "ab"},
                       harmonization={"Method": "paper", "Alpha": 0.1},
                       metrics={"NCCToSource": 0.9}, space="MNIColin27", resolution=2.0)
    assert meta["Sources"] == ["bids:raw:sub-01/anat/sub-01_run-1_T1w.nii.gz",
                               "bids::sub-01/anat/sub-01_run-1_from-T1w_to-X_mode-image_xfm.txt"]
    assert meta["SkullStripped"] is False
    assert meta["Resolution"] == {"2": "2 mm isotropic on the prior's slice grid"}
    assert set(meta) == {"Sources", "SkullStripped", "SpatialReference", "Resolution", "Prior",
                         "Harmonization", "Metrics"}
    native = t1w_sidecar(source_file=source, bids_dir=bids)
    assert native["SpatialReference"] == "bids:raw:sub-01/anat/sub-01_run-1_T1w.nii.gz"
    assert "Resolution" not in native


def test_dataset_description(tmp_path, monkeypatch):
    monkeypatch.setenv("BLINDHARMONY_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("BLINDHARMONY_CONTAINER_TAG", "blindharmony/blindharmony:0.1.0")
    desc = dataset_description(tmp_path / "bids")
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"] == "1.10.0"
    assert desc["GeneratedBy"][0]["Name"] == "blindharmony"
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker",
                                                   "Tag": "blindharmony/blindharmony:0.1.0"}
    assert desc["DatasetLinks"]["raw"] == (tmp_path / "bids").as_uri()
    assert desc["SourceDatasets"] == [{"URL": (tmp_path / "bids").as_uri()}]
    monkeypatch.delenv("BLINDHARMONY_CONTAINER_TYPE")
    assert "Container" not in dataset_description(tmp_path)["GeneratedBy"][0]


def test_bidsignore_merge(tmp_path):
    path = tmp_path / ".bidsignore"
    path.write_text("extra/\n*_xfm.*\n")
    merge_bidsignore(path, ["*_xfm.*", "logs/"])
    assert path.read_text().splitlines() == ["extra/", "*_xfm.*", "logs/"]


def test_other_pipeline_output_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.10.0", "GeneratedBy": [{"Name": "fmriprep"}]}))
    with pytest.raises(OutputError) as exc:
        init_output_dir(out, tmp_path)
    assert exc.value.exit_code == 73


def _init_many(args):
    out, bids, n = args
    for _ in range(n):
        init_output_dir(out, bids)
    return True


def test_concurrent_writers(tmp_path):
    out = tmp_path / "out"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        assert all(pool.map(_init_many, [(out, tmp_path / "bids", 20)] * 8))
    assert json.loads((out / "dataset_description.json").read_text()) == \
        dataset_description(tmp_path / "bids")
    assert (out / ".bidsignore").read_text().splitlines() == ["*_xfm.*", "logs/"]
    assert (out / "logs").is_dir()
    assert sorted(p.name for p in out.iterdir()) == [
        ".bidsignore", "README.md", "dataset_description.json", "logs"]


def test_save_derivative_replaces_atomically(tmp_path):
    bids = tmp_path / "bids"
    source = write_nifti(bids / "sub-01/anat/sub-01_T1w.nii.gz")
    one = write_nifti(tmp_path / "a.nii.gz", seed=1)
    two = write_nifti(tmp_path / "b.nii.gz", seed=2)
    kwargs = dict(output_dir=tmp_path / "out", bids_dir=bids, source_file=source,
                  suffix="T1w", extension=".nii.gz", entities={"desc": "harmonized"})
    out_file, meta = save_derivative(one, **kwargs)
    out_file2, _ = save_derivative(two, **kwargs, metrics={"NCCToSource": 1.0})
    assert out_file == out_file2 and out_file.read_bytes() == two.read_bytes()
    assert json.loads(meta.read_text())["Metrics"] == {"NCCToSource": 1.0}
    assert sorted(p.name for p in out_file.parent.iterdir()) == [
        "sub-01_desc-harmonized_T1w.json", "sub-01_desc-harmonized_T1w.nii.gz"]


def test_fake_derivatives_validate(tmp_path, validator):
    """A derivative dataset of every kind of output passes bids-validator-deno."""
    bids = tmp_path / "bids"
    out = tmp_path / "out"
    init_output_dir(out, bids)
    sources = [
        "sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz",
        "sub-01/ses-2/anat/sub-01_ses-2_acq-fast_rec-norm_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
    ]
    prior = {"Name": "p", "Version": "0.1.0", "SHA256": "ab" * 32}
    harm = {"Method": "paper", "Alpha": 0.001, "Beta1": 651.0, "Beta2": 0.001,
            "Iterations": 10, "Device": "cpu"}
    for i, rel in enumerate(sources):
        src = write_nifti(bids / rel, seed=i)
        xfm_in = tmp_path / f"xfm{i}.txt"
        xfm_in.write_text("#Insight Transform File V1.0\n")
        xfm, _ = save_derivative(xfm_in, output_dir=out, bids_dir=bids, source_file=src,
                                 suffix="xfm", extension=".txt", sidecar=False,
                                 entities={"from_": "T1w", "to": "MNIColin27", "mode": "image"})
        common = dict(output_dir=out, bids_dir=bids, source_file=src, suffix="T1w",
                      extension=".nii.gz", prior=prior, harmonization=harm,
                      metrics={"NCCToSource": 0.97})
        save_derivative(src, entities={"desc": "harmonized"}, **common)
        save_derivative(src, entities={"space": "MNIColin27", "res": "2", "desc": "harmonized"},
                        resolution=2.0, sources=[xfm], **common)
    proc = subprocess.run([validator, str(out), "--format", "json"], capture_output=True,
                          text=True)
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert proc.returncode == 0 and errors == []
