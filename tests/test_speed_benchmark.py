"""Smoke test of benchmarks/speed.py's core on the example data (no timing assertions)."""

import json
from pathlib import Path

import numpy as np
import pytest
from lib_fixtures import lib_load_benchmark

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "data" / "ixi-hh-mini"


@pytest.fixture(scope="module")
def speed():
    return lib_load_benchmark("speed")


def _t1w(sub):
    return MINI / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"


def test_missing_data_exits_66(speed, tmp_path, capsys):
    assert speed.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 66
    assert "IXI-HH data not found" in capsys.readouterr().err
    assert not (tmp_path / "speed.md").exists()


#: Stages run on each example volume (registration skipped: its matrix is given).
STAGES = ["load", "resample", "slices", "hm", "nyul", "lowfreq"]
#: The fields every measured stage's record carries (speed.md's columns: wall s, CPU s,
#: imports MiB, peak MiB).
FIELDS = {"seconds", "cpu_seconds", "rss_before_mb", "peak_rss_mb"}
KIND = "IXI-HH 2 mm"


def _table(text, title):
    """The rows of the markdown table under ``## title``, each as its list of cells."""
    lines = text.split(f"## {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


def test_core_on_the_example_data(speed, tmp_path):
    """What the benchmark records and writes, on two example volumes and one training step
    (no timing assertions: only which records, fields, counts and rows it produces)."""
    from bids_app.evaluation.baselines import LEVELS, nyul_available
    from bids_app.flow.model import SliceFlow, count_parameters, flow_config

    opts = speed.parse_args([
        "--in-process", "--stages", *STAGES, "--batch", "4",
        "--train-steps", json.dumps({"tiny": [0, 1]}), "--out", str(tmp_path / "out")])
    shared = tmp_path / "shared"
    shared.mkdir()
    speed.prepare_shared(shared, opts, [_t1w("IXI094"), _t1w("IXI146")])
    fit = speed.measure("fit-baselines", tmp_path, shared, opts)
    assert fit["subjects"] == 2
    assert {"load_seconds", "histogram_matching_seconds", "peak_rss_mb"} <= set(fit)
    assert ("nyul_seconds" in fit) == nyul_available()
    population = np.load(shared / "population.npy")
    assert population.shape == np.shape(LEVELS) and np.all(np.diff(population) >= 0)

    # the header already puts the head near the grid: skip registration (identity)
    labels = ["IXI052", "IXI094"]
    volumes = [speed.time_volume(label, _t1w(label), KIND, tmp_path, shared, opts,
                                 matrix=np.eye(4)) for label in labels]
    measured = [s for s in STAGES if s != "nyul" or nyul_available()]
    for label, volume in zip(labels, volumes):
        assert volume["label"] == label and volume["kind"] == KIND
        assert list(volume["stages"]) == STAGES  # every stage asked, in order
        for stage in measured:
            row = volume["stages"][stage]
            assert FIELDS <= set(row), (stage, sorted(row))
            assert all(np.isfinite(row[k]) for k in FIELDS), stage
        if not nyul_available():
            assert "skipped" in volume["stages"]["nyul"]
        assert volume["stages"]["load"]["shape"] == volume["shape"] == [90, 120, 120]
        assert volume["stages"]["load"]["zooms"] == [2.0, 2.0, 2.0]
        slices = volume["stages"]["slices"]
        assert slices["normalize_seconds"] == slices["seconds"]
        assert {"reassemble_seconds", "reassemble_cpu_seconds"} <= set(slices)
        # a method has a total only when all its stages ran: no registration, no prior
        totals = volume["totals"]
        assert set(totals) == {"histogram matching"} | ({"Nyul"} if nyul_available() else set())
        hm, stages = totals["histogram matching"], volume["stages"]
        assert hm["seconds"] == pytest.approx(stages["load"]["seconds"] + stages["hm"]["seconds"])
        assert hm["peak_rss_mb"] == max(stages["load"]["peak_rss_mb"], stages["hm"]["peak_rss_mb"])
        assert hm["ratio_to_hm"] == pytest.approx(1.0)

    training = speed.measure("train:tiny", tmp_path, shared, opts)
    assert training["batch"] == 4 and training["shape"] == [96, 112]
    assert training["warm_steps"] == 0 and training["timed_steps"] == 1
    assert training["parameters"] == count_parameters(SliceFlow(flow_config("tiny",
                                                                            shape=(96, 112))))
    assert training["slices_per_second"] == pytest.approx(4 / training["seconds"])

    report = {"command": "python benchmarks/speed.py --test", "seconds": 1.0,
              "machine": speed.machine_info(2), "load_average_before": (1.0, 1.0, 1.0),
              "load_average_after": (1.0, 1.0, 1.0), "fit_baselines": fit,
              "volumes": volumes, "end_to_end": [], "training": {"tiny": training}}
    report["summary"] = speed.summarize(report)
    summary = report["summary"]
    assert list(summary) == [KIND] and summary[KIND]["volumes"] == labels
    for stage in measured:  # one mean over both volumes
        seconds = summary[KIND]["stages"][stage]["seconds"]
        assert seconds["n"] == 2
        assert seconds["mean"] == pytest.approx(np.mean([v["stages"][stage]["seconds"]
                                                         for v in volumes]))
    assert summary[KIND]["methods"]["histogram matching"]["seconds"]["n"] == 2

    text = speed.markdown(report)
    methods = _table(text, "Methods: total per volume")
    assert methods[0][0] == "method" and len(methods) == 2 + len(speed.METHOD_STAGES)
    assert [row[0] for row in methods[2:]] == list(speed.METHOD_STAGES)
    assert all(len(row) == len(methods[0]) == 6 for row in methods)
    for row in methods[2:]:
        shown = row[0] in totals
        assert ("n/a" not in row[1:]) == shown, row
    stage_rows = _table(text, "Stages per volume")
    names = {row[0]: row for row in stage_rows[2:]}
    assert list(names) == [*speed.STAGE_NAMES.values()][:4] + ["reassembly (`reassemble`)"] + [
        *speed.STAGE_NAMES.values()][4:]
    assert all(len(row) == len(stage_rows[0]) == 5 for row in stage_rows)
    for stage, name in speed.STAGE_NAMES.items():
        assert ("n/a" in names[name]) == (stage not in measured), name
    assert f"- {KIND}: IXI052, IXI094 (90 x 120 x 120 voxels)" in text
    assert "loading 2 training images" in text
    train_rows = _table(text, "Training throughput")
    assert len(train_rows) == 3 and train_rows[2][0] == "tiny"
    assert "a batch of 4 slices of 96 x 112" in text
    assert "mean of tiny: 1 steps after 0 warm-up steps." in text

    # speed.json holds everything speed.md is made of: --render rewrites the same page
    saved = tmp_path / "speed.json"
    saved.write_text(json.dumps(report, default=float))
    assert speed.main(["--render", str(saved), "--out", str(tmp_path / "render")]) == 0
    assert (tmp_path / "render" / "speed.md").read_text() == text
