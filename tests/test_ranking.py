"""The contrast-ranking term: its negatives, their change of variables, and what it teaches."""

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from bids_app.cli import train as train_cli
from bids_app.flow.bundle import load_bundle
from bids_app.flow.model import SliceFlow, flow_config
from bids_app.flow.ranking import (Ranking, negatives, random_negative, ranking_loss,
                                   validation_pairs)
from bids_app.flow.training import evaluate_ranking, train_flow
from bids_app.preprocess.image import load_t1w
from bids_app.preprocess.slices import head_fraction, normalize_slices


@pytest.fixture(scope="module")
def real_slices(lib_t1w_path):
    """Axial slices of one fixture subject on a 32 x 32 grid, min-max normalized."""
    data = load_t1w(lib_t1w_path).get_fdata(dtype=np.float32)
    small = zoom(data, (32 / data.shape[0], 32 / data.shape[1], 40 / data.shape[2]), order=1)
    slices, _, _, valid = normalize_slices(small)
    slices = slices[valid & (head_fraction(slices) > 0.2)]
    return slices[0::2], slices[1::2]


def test_negative_log_slope_is_the_maps_derivative(real_slices):
    """Moving one pixel moves its negative by exp(log_slope) times as much: the recorded
    change of variables is the derivative of the map actually applied (field and the
    renormalization included)."""
    x = real_slices[0][3, 0].astype(np.float64)
    inside = np.argwhere((x > 0.2) & (x < 0.8))
    for seed in range(12):
        y, log_slope = random_negative(x, np.random.default_rng(seed))
        assert y.min() == pytest.approx(0) and y.max() == pytest.approx(1)
        i, j = inside[seed * 7 % len(inside)]
        moved = x.copy()
        moved[i, j] += 1e-7
        y2, _ = random_negative(moved, np.random.default_rng(seed))
        assert (y2[i, j] - y[i, j]) / 1e-7 == pytest.approx(np.exp(log_slope[i, j]), rel=1e-3)
        # the map is increasing where the field is flat enough to tell: never reversed
        assert np.all(np.isfinite(log_slope))


def test_negatives_count_only_non_background_pixels(real_slices):
    batch = real_slices[0][:6].copy()
    batch[:, :, :, :10] = 0.0  # a brain extraction's zeros
    rng = np.random.default_rng(1)
    y, jacobian = negatives(batch, rng)
    assert y.shape == batch.shape and y.dtype == np.float32
    # same draws, in the same order: the jacobian is the sum over x > 0 only
    rng = np.random.default_rng(1)
    for k in range(len(batch)):
        _, log_slope = random_negative(batch[k, 0].astype(np.float64), rng)
        assert jacobian[k] == pytest.approx(log_slope[batch[k, 0] > 0].sum())
        assert jacobian[k] != pytest.approx(log_slope.sum())
        assert np.all(y[k, 0][:, :10] == 0)  # zeros stay zeros


def test_soft_hinge_costs_nothing_for_wide_margins():
    margins = torch.tensor([0.5, 0.2, 0.0, -0.2])
    costs = [float(ranking_loss(m[None], 0.01)) for m in margins]
    assert costs[0] < 1e-12 and costs[1] < 1e-9
    assert costs[2] == pytest.approx(0.01 * np.log(2))
    assert costs[3] == pytest.approx(0.2, rel=1e-6)  # a wrong ranking costs its margin


def test_ranking_teaches_the_prior_to_prefer_target_slices(real_slices):
    """The same tiny flow, data and seed, trained 40 steps with and without the ranking
    term: with it, more held-out pairs rank the unchanged slice above its random contrast
    change, with the change of variables."""
    train, val = real_slices
    pairs = validation_pairs(val, n=32, seed=5)
    shares = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        flow = SliceFlow(flow_config("tiny", shape=(32, 32)))
        ranking = Ranking(weight=weight, temperature=0.05) if weight else None
        state = train_flow(flow, train, val, steps=40, batch_size=8, lr=3e-3, seed=0,
                           validate_every=20, progress=False, ranking=ranking)
        _, share, median = evaluate_ranking(flow, pairs, temperature=0.05)
        shares[weight] = (share, median)
        if ranking is not None:
            assert {"val_ranking_share", "val_ranking_hinge"} <= set(state.history[-1])
            best = min(state.history, key=lambda r: r["val_bits_per_dim"]
                       + weight * r["val_ranking_hinge"])
            assert state.best_step == best["step"]
    assert shares[5.0][1] > shares[0.0][1], shares
    assert shares[5.0][0] >= shares[0.0][0], shares


def test_train_cli_ranking_from_a_prior(lib_bids_dir, tmp_path, capsys):
    """--contrast-ranking fine-tunes the weights of --init-from (soft 4 mm masks), records
    what it did, resumes its own checkpoint with the same command, and refuses a companion
    or a prior of another grid (exit 64)."""
    out = tmp_path / "out"

    def command(bundle, *extra, steps=2, downsample=2):
        return [str(lib_bids_dir), str(out / bundle), "--participant-label", "IXI052",
                "IXI094", "--preset", "tiny", "--downsample", str(downsample), "--nthreads",
                "1", "--batch-size", "4", "--validate-every", "2", "--steps", str(steps),
                *extra]

    assert train_cli.main(command("ml.pt")) == 0
    ranked = ["--contrast-ranking", "1", "--init-from", str(out / "ml.pt"),
              "--mask-augmentation", "0.5", "--mask-edges", "soft", "--resume"]
    assert train_cli.main(command("ranked.pt", *ranked)) == 0
    assert "Starting from the weights of" in capsys.readouterr().err
    bundle = load_bundle(out / "ranked.pt")
    assert bundle.training["contrast_ranking"]["weight"] == 1.0
    assert bundle.training["initialized_from"] == "ml.pt"
    assert bundle.training["mask_edges"] == "soft"
    assert "val_ranking_share" in bundle.training["history"][-1]
    # its checkpoint now exists, and beats --init-from: the same command goes on
    assert train_cli.main(command("ranked.pt", *ranked, steps=4)) == 0
    assert "Resuming at step 2" in capsys.readouterr().err
    assert load_bundle(out / "ranked.pt").training["steps"] == 4
    assert train_cli.main(command("c.pt", "--contrast-ranking", "1",
                                  "--contrast-augmentation")) == 64
    assert train_cli.main(command("x.pt", "--init-from", str(out / "ml.pt"),
                                  downsample=1)) == 64
    assert "--downsample" in capsys.readouterr().err
