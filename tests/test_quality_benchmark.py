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
