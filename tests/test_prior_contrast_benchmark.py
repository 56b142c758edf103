"""benchmarks/prior_contrast.py: the changes and their true inverses, image and signal."""

import numpy as np
import pytest
from lib_fixtures import lib_load_benchmark

from bids_app.evaluation.metrics import minmax, summarize
from bids_app.evaluation.shifts import split_noise


@pytest.fixture(scope="module")
def bench():
    return lib_load_benchmark("prior_contrast")


@pytest.fixture(scope="module")
def volume(lib_t1w_path):
    import nibabel as nb

    return minmax(nb.as_closest_canonical(nb.load(str(lib_t1w_path))).get_fdata())


def test_missing_cache_exits_66(bench, tmp_path, capsys):
    assert bench.main(["--cache", str(tmp_path / "none.npz"), "--prior", "x=y.pt"]) == 66
    assert "no such slice cache" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["gamma0.7", "exp", "bias40"])
def test_the_true_inverse_of_a_signal_shift(bench, volume, change):
    """With no residual the signal shift is the image shift; with the image's own residual
    the inverse gives the image back up to the reshaped noise: far above the source, below
    the image shift's exact inverse."""
    image = bench.shifted(volume, change, 0)
    same = bench.shifted(volume, change, 0, (volume, np.zeros_like(volume)))
    assert np.allclose(image[0], same[0])
    signal = bench.shifted(volume, change, 0, split_noise(volume))
    field = signal[3]
    exact = summarize(image[1](image[0], field), volume)["psnr"]
    back = summarize(signal[1](signal[0], field), volume)["psnr"]
    source = summarize(signal[0], volume)["psnr"]
    assert exact > 60.0
    assert source + 3.0 < back < exact
