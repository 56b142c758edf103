"""Smoke test of benchmarks/speed.py's core on the example data (no timing assertions)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "data" / "ixi-hh-mini"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("bh_speed", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _t1w(sub):
    return MINI / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"


def test_missing_data_exits_66(speed, tmp_path, capsys):
    assert speed.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 66
    assert "IXI-HH data not found" in capsys.readouterr().err
    assert not (tmp_path / "speed.md").exists()


def test_core_on_the_example_data(speed, tmp_path):
    opts = speed.parse_args([
        "--in-process", "--stages", "load", "resample", "slices", "hm", "nyul", "lowfreq",
        "--train-steps", json.dumps({"tiny": [0, 1]}), "--out", str(tmp_path / "out")])
    shared = tmp_path / "shared"
    shared.mkdir()
    speed.prepare_shared(shared, opts, [_t1w("IXI094"), _t1w("IXI146")])
    fit = speed.measure("fit-baselines", tmp_path, shared, opts)
    assert fit["subjects"] == 2 and (shared / "population.npy").exists()
    # the header already puts the head near the grid: skip registration (identity)
    volume = speed.time_volume("IXI052", _t1w("IXI052"), "IXI-HH 2 mm", tmp_path, shared, opts,
                               matrix=np.eye(4))
    assert set(volume["stages"]) == set(opts.stages)
    for stage in ("load", "resample", "slices", "hm", "lowfreq"):
        row = volume["stages"][stage]
        assert row["seconds"] >= 0 and row["peak_rss_mb"] > 0
    assert volume["shape"] == [90, 120, 120]
    totals = volume["totals"]
    assert totals["histogram matching"]["ratio_to_hm"] == pytest.approx(1.0)
    assert "low-frequency replacement" not in totals  # its registration stage did not run
    training = speed.measure("train:tiny", tmp_path, shared, opts)
    assert training["batch"] == 16 and training["shape"] == [96, 112]
    assert training["slices_per_second"] > 0

    report = {"command": "python benchmarks/speed.py --test", "seconds": 1.0,
              "machine": speed.machine_info(2), "load_average_before": (1.0, 1.0, 1.0),
              "load_average_after": (1.0, 1.0, 1.0), "fit_baselines": fit,
              "volumes": [volume], "end_to_end": [], "training": {"tiny": training}}
    report["summary"] = speed.summarize(report)
    text = speed.markdown(report)
    assert "| histogram matching | " in text and "| tiny | " in text
    assert "| load (`load_t1w`) | " in text
    json.dumps(report, default=float)
