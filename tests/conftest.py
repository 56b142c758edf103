"""Shared pytest fixtures: the BIDS App plumbing tests' here, the library tests' in a plugin.

The library tests' fixtures (names prefixed ``lib_``) live in :mod:`lib_fixtures`,
registered below as a pytest plugin.
"""

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")

# The library tests' fixtures: tests/lib_fixtures.py (tests/ is on sys.path: pytest puts a
# conftest's folder there, as the ``from conftest import ...`` of some test modules needs).
pytest_plugins = ["lib_fixtures"]

DATA_DIR = Path(__file__).parent / "data"


# ---------------------------------------------------------------------------------------
# BIDS App plumbing fixtures (tests/test_cli_*.py, test_workflows.py, test_outputs.py):
# a tiny BIDS dataset, and fakes of the numerical library so workflows run in seconds.
# ---------------------------------------------------------------------------------------

#: Relative paths of the T1w images of :func:`bids_skeleton`.
SKELETON_T1W = {
    "01": [
        "sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz",
        "sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz",
        "sub-01/ses-2/anat/sub-01_ses-2_acq-fast_T1w.nii.gz",
    ],
    "02": ["sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"],
}


def write_nifti(path, shape=(12, 12, 10), *, seed=0, affine=None):
    """A small random (never constant) float32 NIfTI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape).astype("float32") * 100
    nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine).to_filename(
        path
    )
    return path


def make_bids(root, t1w=SKELETON_T1W, *, extra=()):
    """Write a minimal valid BIDS dataset with the given T1w files under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "skeleton", "BIDSVersion": "1.10.0", "Authors": ["A", "B"]})
    )
    (root / "README").write_text("A tiny test dataset.\n")
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in sorted(t1w))
    )
    seed = 0
    for files in t1w.values():
        for rel in files:
            seed += 1
            write_nifti(root / rel, seed=seed)
            sidecar = root / rel.replace(".nii.gz", ".json")
            sidecar.write_text(json.dumps({"RepetitionTime": 2.0, "EchoTime": 0.003}))
    for rel in extra:
        write_nifti(root / rel, seed=99)
    return root


@pytest.fixture
def bids_skeleton(tmp_path):
    """A BIDS dataset: sub-01 (2 sessions, 2 runs, an acq-) and sub-02 (one T1w)."""
    return make_bids(tmp_path / "bids")


@pytest.fixture
def skeleton_files(bids_skeleton):
    """Participant -> absolute T1w paths of :func:`bids_skeleton`."""
    return {s: [str(bids_skeleton / f) for f in files] for s, files in SKELETON_T1W.items()}


class FakeBundle:
    """Stands for :class:`bids_app.flow.bundle.PriorBundle` (no flow inside)."""

    def __init__(self):
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] = [-4, -4, -4]
        data = np.random.default_rng(1).random((8, 8, 6)).astype("float32")
        self.reference = nib.Nifti1Image(data, affine)
        self.space = "MNIColin27"
        self.resolution = 2.0
        self.name = "fake_prior"
        self.sha256 = "0" * 64
        self.software_version = "0.0.test"
        self.harmonization = {}


def fake_harmonize_volume(volume, bundle, *, method=None, params=None, device=None,
                          progress=True):
    """A stand-in for ``harmonize_volume``: doubles the image, identity intensity maps."""
    z = volume.shape[2]
    result = {
        "method": method or "flow-intensity",
        "params": {"knots": 3, "steps": 1, **(params or {})},
        "decision": {"selected": "identity", "gamma": 1.0},
        "lut": np.tile(np.linspace(0, 1, 5), (z, 1)),
        "low": np.zeros(z),
        "high": np.full(z, 100.0),
        "valid": np.ones(z, dtype=bool),
        "metrics": {"NCCToSource": np.float32(0.99), "BitsPerDim": 4.0, "RunTimeSeconds": 0.01},
    }
    return (volume * 2).astype("float32"), result


@pytest.fixture
def fake_library(monkeypatch):
    """Replace the prior loading, registration and harmonization by fast fakes."""
    from bids_app.flow import bundle as bundle_mod
    from bids_app.harmonize import volume as volume_mod
    from bids_app.preprocess import registration as registration_mod

    def fake_load_bundle(path=None, *, device="cpu"):
        return FakeBundle()

    monkeypatch.setattr(bundle_mod, "load_bundle", fake_load_bundle)
    monkeypatch.setattr(volume_mod, "harmonize_volume", fake_harmonize_volume)
    monkeypatch.setattr(
        registration_mod, "register_affine", lambda moving, fixed, **kw: np.eye(4)
    )
    monkeypatch.setattr("shutil.which", _which_without("flirt"))
    return FakeBundle


def _which_without(*names):
    real = shutil.which

    def which(cmd, *args, **kwargs):
        return None if cmd in names else real(cmd, *args, **kwargs)

    return which


@pytest.fixture
def validator():
    """Path of ``bids-validator-deno``; skips the test when it is not installed."""
    path = shutil.which("bids-validator-deno")
    if path is None:
        pytest.skip("bids-validator-deno is not installed")
    return path
