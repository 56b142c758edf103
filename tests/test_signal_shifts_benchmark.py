"""benchmarks/signal_shifts.py: the ceiling of a global map under image and signal shifts."""

import numpy as np
import pytest
from lib_fixtures import lib_load_benchmark

from bids_app.evaluation.metrics import summarize
from bids_app.evaluation.shifts import apply_shift


@pytest.fixture(scope="module")
def bench():
    return lib_load_benchmark("signal_shifts")


def test_missing_data_exits_66(bench, tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "none"), "--cache", "x.npz"]) == 66
    assert "IXI-HH data not found" in capsys.readouterr().err


def test_the_best_monotone_map_inverts_an_image_shift_but_not_a_signal_shift(
        bench, lib_t1w_path):
    """Under an image shift the truth's monotone fit is the inverse (the benchmark's 100 dB);
    under a signal shift it is not (the inverse reshapes the noise), yet it beats the source."""
    import nibabel as nb

    volume = nb.as_closest_canonical(nb.load(str(lib_t1w_path))).get_fdata()
    clean = apply_shift(volume, "identity").astype(np.float64)
    image = apply_shift(volume, "gamma0.7").astype(np.float64)
    signal = apply_shift(volume, "gamma0.7@signal").astype(np.float64)
    assert summarize(bench.best_monotone(image, clean), clean)["psnr"] > 60.0
    fitted = summarize(bench.best_monotone(signal, clean), clean)["psnr"]
    assert summarize(signal, clean)["psnr"] + 5.0 < fitted < 55.0
    # monotone: equal inputs stay equal, order is kept
    out = bench.best_monotone(signal, clean).ravel()
    order = np.argsort(signal.ravel(), kind="stable")
    assert np.all(np.diff(out[order]) >= -1e-12)
