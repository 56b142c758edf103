"""Command-line parsing: options, aliases, defaults and every usage error."""

import json
from pathlib import Path

import pytest

from bids_app import errors
from bids_app.__about__ import __version__
from bids_app.cli.parser import get_parser, parse_args


@pytest.fixture
def base(bids_skeleton, tmp_path):
    """Positional arguments and a work folder that pass every check."""
    return [str(bids_skeleton), str(tmp_path / "out"), "participant",
            "-w", str(tmp_path / "work")]


def test_defaults(base, bids_skeleton, tmp_path):
    opts = parse_args(base)
    assert opts.bids_dir == bids_skeleton
    assert opts.output_dir == tmp_path / "out"
    assert opts.work_dir == tmp_path / "work"
    assert opts.analysis_level == "participant"
    assert opts.participant_label is None and opts.session_label is None
    assert opts.bids_filters == {}
    assert opts.method is None  # the prior's own method
    assert opts.device == "auto" and opts.registration_engine == "auto"
    assert opts.overrides == {}
    assert opts.prior is None and opts.plugin is None
    assert 1 <= opts.omp_nthreads <= opts.nprocs


@pytest.mark.parametrize("flag", ["--participant-label", "--participant_label"])
def test_participant_label_aliases_and_prefix(base, flag):
    opts = parse_args(base + [flag, "sub-02", "01", "sub-01"])
    assert opts.participant_label == ["01", "02"]


@pytest.mark.parametrize("flag", ["--session-label", "--session_label"])
def test_session_label(base, flag):
    assert parse_args(base + [flag, "ses-1", "2"]).session_label == ["1", "2"]


@pytest.mark.parametrize("flag", ["--nprocs", "--nthreads", "--n_cpus"])
def test_nprocs_aliases(base, flag):
    opts = parse_args(base + [flag, "3", "--omp-nthreads", "2"])
    assert (opts.nprocs, opts.omp_nthreads) == (3, 2)


def test_harmonization_options(base, tmp_path):
    prior = tmp_path / "p.pt"
    prior.write_bytes(b"x")
    opts = parse_args(base + [
        "--method", "paper", "--alpha", "0.01", "--beta1", "500", "--beta2", "0",
        "--iterations", "5", "--slice-smoothing", "0", "--device", "cpu", "--prior", str(prior),
        "--registration-engine", "simpleitk", "--mem-gb", "4", "-vv",
        "--skip_bids_validation", "--stop-on-first-crash", "--notrack", "--write-graph",
    ])
    # typed once, here: a beta1 given is a beta1 fixed, and "auto" is the switch alone
    assert opts.overrides == {"alpha": 0.01, "beta1": 500.0, "auto_beta1": False,
                              "beta2": 0.0, "iterations": 5, "slice_sigma": 0.0}
    assert opts.method == "paper" and opts.device == "cpu" and opts.prior == prior
    assert parse_args(base + ["--intensity-model", "quantile"]).overrides == {
        "selection": "quantile"}
    assert parse_args(base + ["--bias-field", "off"]).overrides == {"bias_field": "off"}
    assert parse_args(base + ["--method", "paper", "--beta1", "auto"]).overrides == {
        "auto_beta1": True}
    assert opts.mem_gb == 4.0 and opts.verbose == 2
    assert opts.skip_bids_validation and opts.stop_on_first_crash and opts.write_graph


def test_output_under_derivatives_is_allowed(bids_skeleton, tmp_path):
    out = bids_skeleton / "derivatives" / "blindharmony"
    opts = parse_args([str(bids_skeleton), str(out), "participant", "-w", str(tmp_path / "w")])
    assert opts.output_dir == out


def test_bids_filter_file(base, tmp_path):
    filt = tmp_path / "filters.json"
    filt.write_text(json.dumps({"t1w": {"session": "1", "run": [1, 2], "acquisition": None},
                                "bold": {"task": "rest"}}))
    opts = parse_args(base + ["--bids-filter-file", str(filt)])
    assert opts.bids_filters == {"session": "1", "run": [1, 2], "acquisition": None}


def test_plugin_file(base, tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 2\n")
    assert parse_args(base + ["--use-plugin", str(plugin)]).plugin == {
        "plugin": "MultiProc", "plugin_args": {"n_procs": 2}}


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        get_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"blindharmony v{__version__}"


def _error(argv):
    with pytest.raises(errors.BlindHarmonyError) as exc:
        parse_args(argv)
    return exc.value


@pytest.mark.parametrize("extra", [
    ["--method", "nope"],
    ["--device", "tpu"],
    ["--alpha", "-1"],
    ["--beta1", "automatic"],
    ["--beta1", "-5"],
    ["--iterations", "0"],
    ["--nprocs", "two"],
    ["--nprocs", "2", "--omp-nthreads", "4"],
    ["--participant-label", "sub-0_1"],
    ["--unknown-option"],
])
def test_bad_option_values(base, extra):
    err = _error(base + extra)
    assert isinstance(err, errors.UsageError) and err.exit_code == 64


def test_bad_analysis_level(bids_skeleton, tmp_path):
    assert _error([str(bids_skeleton), str(tmp_path / "o"), "subject"]).exit_code == 64


def test_output_equal_to_bids_dir(bids_skeleton, tmp_path):
    err = _error([str(bids_skeleton), str(bids_skeleton), "participant", "-w", str(tmp_path)])
    assert err.exit_code == 64 and "differ" in str(err)


def test_output_inside_bids_dir_not_derivatives(bids_skeleton, tmp_path):
    err = _error([str(bids_skeleton), str(bids_skeleton / "out"), "participant",
                  "-w", str(tmp_path / "w")])
    assert err.exit_code == 64 and "derivatives" in str(err)


@pytest.mark.parametrize("where", ["bids", "output"])
def test_work_dir_inside_inputs_or_outputs(bids_skeleton, tmp_path, where):
    out = tmp_path / "out"
    work = (bids_skeleton if where == "bids" else out) / "work"
    err = _error([str(bids_skeleton), str(out), "participant", "-w", str(work)])
    assert err.exit_code == 64 and "work folder" in str(err)


def test_missing_bids_dir(tmp_path):
    err = _error([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"])
    assert isinstance(err, errors.MissingInputError) and err.exit_code == 66


def test_not_a_bids_dataset(tmp_path):
    (tmp_path / "raw").mkdir()
    err = _error([str(tmp_path / "raw"), str(tmp_path / "out"), "participant"])
    assert isinstance(err, errors.InputDataError) and err.exit_code == 65
    assert "no dataset_description.json" in str(err) and str(tmp_path / "raw") in str(err)


def test_unknown_participant(base):
    err = _error(base + ["--participant-label", "01", "07", "sub-09"])
    assert isinstance(err, errors.MissingInputError) and err.exit_code == 66
    assert "sub-07" in str(err) and "sub-09" in str(err) and "sub-01" not in str(err)


def test_filter_file_not_json(base, tmp_path):
    filt = tmp_path / "filters.json"
    filt.write_text("{'t1w': }")
    err = _error(base + ["--bids-filter-file", str(filt)])
    assert err.exit_code == 64 and "not valid JSON" in str(err)


@pytest.mark.parametrize("content", [
    [1, 2], {"t1w": []}, {"t1w": {"subject": "01"}}, {"t1w": {"flavour": "x"}},
    {"t1w": {"run": {"a": 1}}},
])
def test_filter_file_bad_shape(base, tmp_path, content):
    filt = tmp_path / "filters.json"
    filt.write_text(json.dumps(content))
    assert _error(base + ["--bids-filter-file", str(filt)]).exit_code == 64


@pytest.mark.parametrize("option", ["--bids-filter-file", "--prior", "--use-plugin"])
def test_missing_files(base, tmp_path, option):
    err = _error(base + [option, str(tmp_path / "missing")])
    assert err.exit_code == 66


def test_bad_plugin_file(base, tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin_args: {n_procs: 2}\n")
    assert _error(base + ["--use-plugin", str(plugin)]).exit_code == 64


def test_flirt_requested_but_missing(base, monkeypatch):
    monkeypatch.setattr("bids_app.cli.parser.shutil.which", lambda name: None)
    err = _error(base + ["--registration-engine", "flirt"])
    assert err.exit_code == 64 and "flirt" in str(err)


def test_parse_writes_nothing(base, tmp_path):
    parse_args(base)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
    assert Path(base[0]).exists()
