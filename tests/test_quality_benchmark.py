"""benchmarks/quality.py: the app it runs is the app a user runs, with the prior asked for."""

from pathlib import Path

import pytest
from lib_fixtures import lib_load_benchmark


@pytest.fixture(scope="module")
def quality():
    return lib_load_benchmark("quality")


def test_missing_data_exits_66(quality, tmp_path, capsys):
    assert quality.main(["--data", str(tmp_path / "none")]) == 66
    assert "IXI-HH data not found" in capsys.readouterr().err


@pytest.mark.parametrize("prior", [None, Path("/priors/ixihh_8mm.pt")])
def test_the_app_runs_with_the_benchmarked_prior(quality, tmp_path, monkeypatch, prior):
    """--prior reaches the app's command line (it once scored the shipped prior instead)."""
    calls = []
    monkeypatch.setattr(quality.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    quality.run_app(tmp_path / "bids", tmp_path / "out", tmp_path / "work",
                    "flow-intensity:quantile", ["IXI052"], 1, 1, prior)
    (cmd,) = calls
    assert cmd[cmd.index("--intensity-model") + 1] == "quantile"
    assert cmd[cmd.index("--participant-label") + 1] == "IXI052"
    if prior is None:
        assert "--prior" not in cmd
    else:
        assert cmd[cmd.index("--prior") + 1] == str(prior)


@pytest.mark.parametrize("method, overrides", [
    ("flow-intensity:quantile", {"selection": "quantile"}),
    ("flow-intensity:bias-field=auto", {"bias_field": "auto"}),
    ("paper:beta1=auto", {"auto_beta1": True}),
    ("paper:beta1=500", {"beta1": 500.0, "auto_beta1": False}),
])
def test_a_benchmark_variant_is_the_app_option_it_names(quality, bids_skeleton, tmp_path, method,
                                                        overrides):
    """The fast mode's parameters and the app mode's flags of a variant agree: the app's own
    parser turns the flags into the same parameters."""
    from bids_app.cli.parser import parse_args

    name, params, flags = quality.parse_method(method)
    opts = parse_args([str(bids_skeleton), str(tmp_path / "out"), "participant", *flags])
    assert opts.method == name
    assert opts.overrides == params == overrides
