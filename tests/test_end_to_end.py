"""The real app on real data: the shipped prior harmonizing the shipped IXI fixture.

No fakes here: the default prior bundle, SimpleITK registration, the flow, nipype and
the BIDS validator (when installed) all run. One subject of tests/data/ixi-hh-mini is
harmonized as it is (it is target-domain data: it must come back nearly unchanged) and
after a gamma 0.7 contrast change (the harmonized image must be closer to the original
than the shifted source is), and under a smooth +-40 % field (the default divides it out).
"""

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_app.cli.run import run
from bids_app.evaluation.metrics import summarize
from bids_app.evaluation.shifts import apply_shift
from bids_app.flow.bundle import load_bundle

FIXTURE = Path(__file__).parent / "data" / "ixi-hh-mini"
SUBJECT = "IXI052"


@pytest.fixture(scope="module")
def default_prior():
    return load_bundle()


def test_default_prior_loads_and_samples(default_prior):
    assert default_prior.space == "MNIColin27"
    assert default_prior.resolution == pytest.approx(2.0)
    assert 3.0 < default_prior.bits_per_dim < 9.0
    samples = default_prior.sample(3, seed=0)
    assert samples.shape == (3, 1, *default_prior.flow.config["shape"])
    assert np.isfinite(samples.numpy()).all()
    calibration = default_prior.harmonization["flow-intensity"]
    assert calibration["gate_bits"] > 0 and calibration["gamma_bias"] > 0


@pytest.fixture(scope="module")
def shifted_dataset(tmp_path_factory):
    """The fixture subject as it is (run-1), with a gamma 0.7 contrast change (run-2) and
    under a smooth +-40 % field (run-3)."""
    root = tmp_path_factory.mktemp("bids")
    for name in ("dataset_description.json", "README", "T1w.json"):
        shutil.copy(FIXTURE / name, root / name)
    anat = root / f"sub-{SUBJECT}" / "anat"
    anat.mkdir(parents=True)
    src = nb.load(FIXTURE / f"sub-{SUBJECT}" / "anat" / f"sub-{SUBJECT}_T1w.nii.gz")
    shutil.copy(src.get_filename(), anat / f"sub-{SUBJECT}_run-1_T1w.nii.gz")
    shifted = apply_shift(src.get_fdata(), "gamma0.7") * 1000.0
    nb.save(nb.Nifti1Image(shifted, src.affine), anat / f"sub-{SUBJECT}_run-2_T1w.nii.gz")
    shaded = apply_shift(src.get_fdata(), "bias40", seed=52) * 1000.0
    nb.save(nb.Nifti1Image(shaded, src.affine), anat / f"sub-{SUBJECT}_run-3_T1w.nii.gz")
    return root


@pytest.fixture(scope="module")
def participant_run(shifted_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "blindharmony"
    work = tmp_path_factory.mktemp("work")
    code = run([str(shifted_dataset), str(out), "participant", "--participant-label", SUBJECT,
                "-w", str(work), "--nprocs", "2", "--omp-nthreads", "2"])
    return code, out


def _derivative(out, run_label, space=""):
    return (out / f"sub-{SUBJECT}" / "anat" /
            f"sub-{SUBJECT}_run-{run_label}{space}_desc-harmonized_T1w.nii.gz")


def test_participant_run_writes_derivatives(participant_run, shifted_dataset):
    code, out = participant_run
    assert code == 0
    for run_label in ("1", "2"):
        native = _derivative(out, run_label)
        assert native.is_file() and native.with_name(
            native.name.replace(".nii.gz", ".json")).is_file()
        assert _derivative(out, run_label, "_space-MNIColin27_res-2").is_file()
        source = nb.load(shifted_dataset / f"sub-{SUBJECT}" / "anat" /
                         f"sub-{SUBJECT}_run-{run_label}_T1w.nii.gz")
        result = nb.load(native)
        assert result.shape == source.shape
        np.testing.assert_allclose(result.affine, source.affine, atol=1e-4)
        assert np.isfinite(result.get_fdata()).all()
    sidecar = json.loads(_derivative(out, "2").with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Prior"]["SHA256"] == load_bundle().sha256
    assert sidecar["SkullStripped"] is False
    harmonization = sidecar["Harmonization"]
    assert harmonization["Method"] == "flow-intensity"  # the shipped prior's own method
    assert harmonization["Decision"]["Selected"] in ("identity", "power", "quantile")
    assert "Population" not in harmonization and "Population" not in harmonization["Decision"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"


def test_in_domain_image_comes_back_unchanged(participant_run, shifted_dataset):
    _, out = participant_run
    source = nb.load(
        shifted_dataset / f"sub-{SUBJECT}" / "anat" / f"sub-{SUBJECT}_run-1_T1w.nii.gz"
    )
    result = nb.load(_derivative(out, "1"))
    assert summarize(result.get_fdata(), source.get_fdata())["psnr"] >= 40.0


def test_contrast_change_is_undone(participant_run, shifted_dataset):
    _, out = participant_run
    clean = nb.load(shifted_dataset / f"sub-{SUBJECT}" / "anat" /
                    f"sub-{SUBJECT}_run-1_T1w.nii.gz").get_fdata()
    shifted = nb.load(shifted_dataset / f"sub-{SUBJECT}" / "anat" /
                      f"sub-{SUBJECT}_run-2_T1w.nii.gz").get_fdata()
    harmonized = nb.load(_derivative(out, "2")).get_fdata()
    before = summarize(shifted, clean)
    after = summarize(harmonized, clean)
    assert after["psnr"] > before["psnr"] + 5.0
    assert after["ssim"] > before["ssim"]


def test_a_smooth_field_is_divided_out_by_default(participant_run, shifted_dataset):
    # the field travels from the reference space to the native voxels through the
    # workflow's files (the Harmonize npz, ToNative), not only through the library call
    _, out = participant_run
    anat = shifted_dataset / f"sub-{SUBJECT}" / "anat"

    def ras(path):  # scored per axial slice, as the quality benchmark scores
        return nb.as_closest_canonical(nb.load(path)).get_fdata()

    clean = ras(anat / f"sub-{SUBJECT}_run-1_T1w.nii.gz")
    shaded = ras(anat / f"sub-{SUBJECT}_run-3_T1w.nii.gz")
    harmonized = ras(_derivative(out, "3"))
    sidecar = json.loads(_derivative(out, "3").with_suffix("").with_suffix(".json").read_text())
    field = sidecar["Harmonization"]["Decision"]["BiasField"]
    assert sidecar["Harmonization"]["BiasField"] == "auto"
    assert field["corrected"] and field["distance"] > field["threshold"], field
    assert summarize(harmonized, clean)["psnr"] > summarize(shaded, clean)["psnr"] + 2.0


def test_output_passes_bids_validator(participant_run):
    validator = shutil.which("bids-validator-deno")
    if validator is None:
        pytest.skip("bids-validator-deno is not installed")
    _, out = participant_run
    proc = subprocess.run([validator, str(out), "--format", "json"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_group_report(participant_run, shifted_dataset):
    _, out = participant_run
    code = run([str(shifted_dataset), str(out), "group"])
    assert code == 0
    assert (out / "group_T1w.tsv").is_file()
    html = (out / "group_T1w.html").read_text()
    assert "data:image" in html
