"""The reference template through TemplateFlow, offline (bids_app.utils.templates)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_app.utils.templates import PACKAGE_HOME, packaged_file

ROOT = Path(__file__).resolve().parents[1]

#: Run in a fresh interpreter (TemplateFlow reads its home once, at import) with every
#: network connection refused; prints what ``template_path`` resolved, as JSON.
_RESOLVE = """
import json, os, socket, sys

ATTEMPTS = []

def _refuse(*args, **kwargs):
    ATTEMPTS.append(args[1:2])
    raise OSError("network access attempted")

socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
from bids_app.utils.templates import template_path

print(json.dumps({
    "T1w": str(template_path("T1w")),
    "mask": str(template_path("mask", desc="brain")),
    "home": os.environ.get("TEMPLATEFLOW_HOME"),
    "templateflow": sys.modules.get("templateflow") is not None,
    "network_attempts": len(ATTEMPTS),
}))
"""


def _resolve(tmp_path, *, home=None, prelude="", offline=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPLATEFLOW_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    if home is not None:
        env["TEMPLATEFLOW_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-c", prelude + _RESOLVE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if offline:
        assert found["network_attempts"] == 0, proc.stderr
    found["stderr"] = proc.stderr
    return found


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_package_tree_is_a_templateflow_tree():
    folder = PACKAGE_HOME / "tpl-MNIColin27"
    description = json.loads((folder / "template_description.json").read_text())
    assert description["Identifier"] == "MNIColin27"
    assert "BSD-3-Clause" in description["License"]
    for path in (packaged_file("T1w"), packaged_file("mask", desc="brain")):
        assert path.parent == folder and path.stat().st_size > 0
        img = nb.load(path)
        assert img.shape == tuple(description["res"]["2"]["shape"])
        np.testing.assert_allclose(img.header.get_zooms(), description["res"]["2"]["zooms"])
        np.testing.assert_allclose(img.affine[:3, 3], description["res"]["2"]["origin"])
    license_text = (ROOT / "bids_app" / "data" / "LICENSE-templates.md").read_text()
    assert "tpl-MNIColin27_res-2_T1w.nii.gz" in license_text and "BSD-3-Clause" in license_text


def test_resolves_the_packaged_files_offline(tmp_path):
    pytest.importorskip("templateflow")
    found = _resolve(tmp_path)
    assert found["templateflow"]  # looked up through TemplateFlow, not around it
    assert Path(found["T1w"]) == packaged_file("T1w")
    assert Path(found["mask"]) == packaged_file("mask", desc="brain")
    assert Path(found["home"]) == PACKAGE_HOME
    # TemplateFlow wrote no skeleton into the user's cache or home
    assert not (tmp_path / "cache").exists() and not (tmp_path / "home").exists()


def test_a_populated_templateflow_home_is_used(tmp_path):
    pytest.importorskip("templateflow")
    home = tmp_path / "templateflow"
    proc = subprocess.run([sys.executable, "-m", "bids_app.utils.templates", str(home)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    found = _resolve(tmp_path, home=home)
    assert Path(found["T1w"]) == home / "tpl-MNIColin27" / packaged_file("T1w").name
    assert _sha(found["T1w"]) == _sha(packaged_file("T1w"))
    assert _sha(found["mask"]) == _sha(packaged_file("mask", desc="brain"))


def test_a_home_without_the_grid_falls_back_to_the_package(tmp_path):
    """A TemplateFlow home of one's own that lacks this 2 mm grid (TemplateFlow's own
    MNIColin27 is 1 mm): the package's files, still without network."""
    pytest.importorskip("templateflow")
    home = tmp_path / "templateflow"
    (home / "tpl-MNIColin27").mkdir(parents=True)
    (home / "tpl-MNIColin27" / "template_description.json").write_text(
        json.dumps({"Identifier": "MNIColin27"}))
    found = _resolve(tmp_path, home=home)
    assert Path(found["T1w"]) == packaged_file("T1w")
    assert Path(found["mask"]) == packaged_file("mask", desc="brain")


def test_an_empty_placeholder_is_not_waited_for(tmp_path):
    """TemplateFlow's skeleton holds empty placeholders that it downloads on demand: with
    no network the package's file is used, with a warning."""
    pytest.importorskip("templateflow")
    home = tmp_path / "templateflow"
    (home / "tpl-MNIColin27").mkdir(parents=True)
    (home / "tpl-MNIColin27" / "template_description.json").write_text(
        json.dumps({"Identifier": "MNIColin27"}))
    (home / "tpl-MNIColin27" / packaged_file("T1w").name).touch()
    found = _resolve(tmp_path, home=home, offline=False)
    assert found["network_attempts"] >= 1  # refused by the test, before any packet
    assert Path(found["T1w"]) == packaged_file("T1w")
    assert "using the package's file" in found["stderr"]


def test_without_templateflow_the_package_files(tmp_path):
    found = _resolve(tmp_path, prelude="import sys\nsys.modules['templateflow'] = None\n")
    assert not found["templateflow"]
    assert Path(found["T1w"]) == packaged_file("T1w")
    assert Path(found["mask"]) == packaged_file("mask", desc="brain")


def test_masks_and_training_use_the_resolved_template():
    from bids_app.cli.train import _load_reference
    from bids_app.preprocess import masks
    from bids_app.utils.templates import template_path

    brain = masks.template_brain_mask()
    assert brain.shape == (96, 112, 88) and int(brain.sum()) == 217269  # LICENSE-templates.md
    path, reference = _load_reference()
    assert path == template_path("T1w")
    assert reference.shape == brain.shape and nb.aff2axcodes(reference.affine) == ("R", "A", "S")
