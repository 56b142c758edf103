"""Training: the loop learns, checkpoints and resumes; blindharmony-train end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from bids_app.cli import train as train_cli
from bids_app.errors import EX_NO_MATCH, EX_NOINPUT, NoMatchError
from bids_app.flow.bundle import load_bundle
from bids_app.flow.model import SliceFlow, dequantize, flow_config
from bids_app.flow.training import TrainState, evaluate_bpd, make_optimizer, train_flow
from bids_app.preprocess.image import load_t1w
from bids_app.preprocess.slices import head_fraction, normalize_slices


@pytest.fixture(scope="module")
def real_slices(lib_t1w_path):
    """Axial slices of one fixture subject on a 32 x 32 grid, min-max normalized."""
    data = load_t1w(lib_t1w_path).get_fdata(dtype=np.float32)
    small = zoom(data, (32 / data.shape[0], 32 / data.shape[1], 40 / data.shape[2]), order=1)
    slices, _, _, valid = normalize_slices(small)
    keep = valid & (head_fraction(slices) > 0.2)
    assert keep.sum() >= 20
    slices = slices[keep]
    return slices[0::2], slices[1::2]


def test_validation_loss_decreases(real_slices):
    train, val = real_slices
    torch.manual_seed(0)
    flow = SliceFlow(flow_config("tiny", shape=(32, 32)))
    flow.train()
    with torch.no_grad():  # actnorm data-dependent init, as train_flow does at step 0
        flow(dequantize(torch.from_numpy(train), generator=torch.Generator().manual_seed(0)))
    before = evaluate_bpd(flow, val)
    assert evaluate_bpd(flow, val) == before  # fixed dequantization noise
    checkpoints, bests = [], []
    state = train_flow(
        flow, train, val, steps=60, batch_size=8, lr=3e-3, validate_every=20,
        checkpoint_every=25, progress=False,
        on_checkpoint=lambda f, o, s, st: checkpoints.append(st.step),
        on_best=lambda f, st: bests.append((st.step, st.best_bpd)),
    )
    after = evaluate_bpd(flow, val)
    assert not flow.training
    assert state.step == 60
    assert [r["step"] for r in state.history] == [20, 40, 60]
    assert checkpoints == [25, 50, 60]
    assert after < before - 0.5, (before, after)
    assert state.history[-1]["val_bits_per_dim"] == pytest.approx(after, abs=1e-3)
    best = min(state.history, key=lambda r: r["val_bits_per_dim"])
    assert state.best_bpd == pytest.approx(best["val_bits_per_dim"], abs=1e-4)
    assert state.best_step == best["step"]
    assert bests and bests[-1][0] == state.best_step
    assert [b for _, b in bests] == sorted((b for _, b in bests), reverse=True)


def test_resume_continues_schedule_and_step(real_slices):
    train, val = real_slices
    torch.manual_seed(1)
    flow = SliceFlow(flow_config("tiny", shape=(32, 32)))
    optimizer, scheduler = make_optimizer(flow, lr=1e-3, steps=8)
    state = train_flow(flow, train, val, steps=4, batch_size=4, optimizer=optimizer,
                       scheduler=scheduler, validate_every=100, progress=False)
    assert state.step == 4 and [r["step"] for r in state.history] == [4]
    state = train_flow(flow, train, val, steps=8, batch_size=4, optimizer=optimizer,
                       scheduler=scheduler, state=state, validate_every=100, progress=False)
    assert state.step == 8
    assert [r["step"] for r in state.history] == [4, 8]
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_stretch_cosine_after_a_finished_schedule():
    """--resume with more --steps must follow the cosine schedule of the new length."""
    optimizer, scheduler = make_optimizer(torch.nn.Linear(2, 1), lr=5e-4, steps=6)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    train_cli._stretch_cosine(optimizer, scheduler, 10)
    rates = []
    for _ in range(6, 10):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    expected = [5e-4 * (1 + math.cos(math.pi * k / 10)) / 2 for k in range(7, 11)]
    np.testing.assert_allclose(rates, expected, atol=1e-12)
    assert rates[0] > 5e-5


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "blindharmony-train" in out and "--resume" in out and "--preset" in out


def test_missing_bids_dir(tmp_path, capsys):
    rc = train_cli.main([str(tmp_path / "nowhere"), str(tmp_path / "p.pt"), "--nthreads", "1"])
    assert rc == EX_NOINPUT == 66
    assert "nowhere" in capsys.readouterr().err


def test_not_a_bids_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    rc = train_cli.main([str(tmp_path / "empty"), str(tmp_path / "p.pt"), "--nthreads", "1"])
    assert rc == EX_NOINPUT


def test_unknown_participant(lib_bids_dir, tmp_path, capsys):
    rc = train_cli.main([str(lib_bids_dir), str(tmp_path / "p.pt"), "--participant-label",
                         "IXI052", "sub-NOPE", "--nthreads", "1"])
    assert rc == EX_NO_MATCH == 18
    assert "NOPE" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()


def test_collect_and_split(lib_bids_dir):
    images = train_cli.collect_images(lib_bids_dir, participant_label=["sub-IXI052", "IXI094",
                                                                       "IXI146"],
                                      exclude=["IXI146"])
    assert [s for s, _ in images] == ["IXI052", "IXI094"]
    assert all(p.endswith("_T1w.nii.gz") for _, p in images)
    train, val = train_cli.split_subjects(images, 0.1, seed=0)
    assert len(val) == 1 and len(train) == 1
    assert {s for s, _ in train}.isdisjoint({s for s, _ in val})
    assert train_cli.split_subjects(images[:1], 0.5, seed=0) == (images[:1], [])


def test_selection_is_checked_as_the_app_checks_it(lib_bids_dir, tmp_path, capsys):
    """Labels and --bids-filter-file go through bids_app.utils.bids: a bad label or filter
    is a usage error (64), a missing filter file exit 66, an empty selection exit 18; all
    before any registration."""
    common = [str(lib_bids_dir), str(tmp_path / "p.pt"), "--nthreads", "1"]
    assert train_cli.main(common + ["--participant-label", "IXI_052"]) == 64
    assert "IXI_052" in capsys.readouterr().err
    assert train_cli.main(common + ["--exclude-label", "sub-IXI052", "IXI094", "IXI146"]) == 18
    filters = tmp_path / "filters.json"
    assert train_cli.main(common + ["--bids-filter-file", str(filters)]) == EX_NOINPUT
    filters.write_text(json.dumps({"t1w": {"sesion": "1"}}))
    assert train_cli.main(common + ["--bids-filter-file", str(filters)]) == 64
    assert "unknown BIDS entity 'sesion'" in capsys.readouterr().err
    filters.write_text(json.dumps({"t1w": {"session": "9"}}))
    assert train_cli.main(common + ["--bids-filter-file", str(filters)]) == EX_NO_MATCH
    assert not (tmp_path / "p.pt").exists() and not (tmp_path / "p_slices.npz").exists()


def test_collect_images_with_filters(lib_bids_dir, tmp_path):
    """``filters`` are the t1w query's (``null``: files without the entity)."""
    everything = train_cli.collect_images(lib_bids_dir)
    assert [s for s, _ in everything] == ["IXI052", "IXI094", "IXI146"]
    assert train_cli.collect_images(lib_bids_dir, filters={"run": None}) == everything
    with pytest.raises(NoMatchError):
        train_cli.collect_images(lib_bids_dir, filters={"acquisition": "fast"})


def _params(state_dict):
    return {k: v for k, v in state_dict.items() if v.is_floating_point() and "running" not in k}


def test_train_cli_end_to_end_and_resume(lib_bids_dir, tmp_path, capsys):
    bundle_path = tmp_path / "out" / "prior.pt"
    common = [str(lib_bids_dir), str(bundle_path), "--participant-label", "IXI052", "IXI094",
              "--preset", "tiny", "--validate-every", "3", "--checkpoint-every", "3",
              "--nthreads", "1", "--batch-size", "4"]
    assert train_cli.main(common + ["--steps", "6"]) == 0
    ckpt_path = bundle_path.with_name("prior.pt.ckpt")
    assert bundle_path.is_file() and ckpt_path.is_file()
    assert (tmp_path / "out" / "prior_slices.npz").is_file()

    bundle = load_bundle(bundle_path)
    reference = bundle.reference
    assert reference.shape == (96, 112, 88)
    assert bundle.flow.config["preset"] == "tiny"
    assert bundle.flow.config["shape"] == [96, 112]
    assert bundle.x0.shape == (88, 1, 96, 112)
    assert 0 <= float(bundle.x0.min()) and float(bundle.x0.max()) <= 1.001
    assert bundle.space == "MNIColin27" and bundle.resolution == 2.0
    assert bundle.training["train_subjects"] + bundle.training["validation_subjects"] in (
        ["IXI052", "IXI094"], ["IXI094", "IXI052"])
    assert bundle.training["steps"] == bundle.metrics["best_step"] in (3, 6)
    assert math.isfinite(bundle.metrics["val_bits_per_dim"])
    assert bundle.harmonization["method"] in ("flow-intensity", "paper")
    # a new calibration records the criterion it was measured with
    assert bundle.harmonization["flow-intensity"]["span_pixels"] == "counted"

    first = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert first["train_state"]["step"] == 6
    assert [r["step"] for r in first["train_state"]["history"]] == [3, 6]
    capsys.readouterr()

    assert train_cli.main(common + ["--steps", "10", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "Resuming at step 6" in err
    assert "Using registered slices cached" in err  # no second registration
    second = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = second["train_state"]
    assert state["step"] == 10
    assert [r["step"] for r in state["history"]] == [3, 6, 9, 10]
    assert state["history"][:2] == first["train_state"]["history"]
    # the resumed run really trained (a non-zero learning rate after the first schedule)
    before, after = _params(first["state_dict"]), _params(second["state_dict"])
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 1e-6
    assert second["scheduler"]["T_max"] == 10
    resumed = load_bundle(bundle_path)
    assert resumed.training["history"][: len(bundle.training["history"])] == \
        bundle.training["history"]
    assert resumed.metrics["best_step"] in (3, 6, 9, 10)
    # one training image has no population of fields to compare with: a clear refusal
    # (exit 65), the bundle as it was
    capsys.readouterr()
    assert train_cli.main(common + ["--recalibrate-field"]) == 65
    assert "need more than 9 training images (1 given)" in capsys.readouterr().err
    assert "population_field" not in load_bundle(bundle_path).harmonization["flow-intensity"]


def test_resume_without_checkpoint(lib_bids_dir, tmp_path, monkeypatch):
    # no registration needed to find out that there is nothing to resume: fake the data
    from bids_app.flow.data import SliceSet

    def fake_prepare(opts, images, reference, cache):
        n = 4
        return SliceSet(
            slices=np.zeros((n, 1, 96, 112), np.float32), subject=np.array([0, 0, 1, 1]),
            position=np.array([40, 41, 40, 41]), subjects=[s for s, _ in images],
            volumes=np.zeros((2, 96, 112, 88), np.float32),
        )

    monkeypatch.setattr(train_cli, "_prepare_data", fake_prepare)
    rc = train_cli.main([str(lib_bids_dir), str(tmp_path / "p.pt"), "--participant-label",
                         "IXI052", "IXI094", "--resume", "--nthreads", "1"])
    assert rc == EX_NOINPUT


def test_state_defaults():
    state = TrainState()
    assert state.step == 0 and math.isinf(state.best_bpd) and state.history == []


def test_train_cli_4mm_companion_with_masking(lib_bids_dir, tmp_path, capsys):
    """--downsample 2 trains on 48 x 56 slices and records it; a companion
    (--contrast-augmentation) and a masked prior train, get no calibration of their own,
    and refuse --recalibrate (exit 64)."""
    bundle_path = tmp_path / "out" / "companion.pt"
    common = [str(lib_bids_dir), str(bundle_path), "--participant-label", "IXI052", "IXI094",
              "--preset", "tiny", "--downsample", "2", "--contrast-augmentation",
              "--mask-augmentation", "0.5", "--nthreads", "1", "--batch-size", "4"]
    assert train_cli.main(common + ["--steps", "3", "--validate-every", "3"]) == 0
    bundle = load_bundle(bundle_path)
    assert bundle.flow.config["shape"] == [48, 56]
    assert bundle.x0.shape == (88, 1, 48, 56)
    assert bundle.preprocessing["downsample"] == 2
    assert bundle.training["contrast_augmentation"] is True
    assert bundle.training["mask_augmentation"] == 0.5
    assert "out_of_domain" not in bundle.harmonization
    capsys.readouterr()
    assert train_cli.main(common + ["--recalibrate"]) == 64
    assert "--recalibrate" in capsys.readouterr().err
    assert train_cli.main(common + ["--mask-augmentation", "1.5", "--steps", "1"]) == 64


def test_train_cli_8mm_prior_with_soft_masks(lib_bids_dir, tmp_path):
    """--downsample 4 trains on 24 x 28 slices (8 mm), soft-edged stripped slices included,
    and writes a bundle whose criterion reads the 2 mm slices' block means."""
    from bids_app.harmonize.criterion import slice_likelihood

    bundle_path = tmp_path / "out" / "p8.pt"
    assert train_cli.main([str(lib_bids_dir), str(bundle_path), "--participant-label",
                           "IXI052", "IXI094", "--preset", "tiny", "--downsample", "4",
                           "--mask-augmentation", "0.5", "--mask-edges", "soft",
                           "--nthreads", "1", "--batch-size", "4", "--steps", "2",
                           "--validate-every", "2"]) == 0
    bundle = load_bundle(bundle_path)
    assert bundle.flow.config["shape"] == [24, 28]
    assert bundle.x0.shape == (88, 1, 24, 28)
    assert bundle.preprocessing["downsample"] == 4
    assert bundle.training["mask_edges"] == "soft"
    fine = torch.rand(2, 1, 96, 112)
    bpd, _ = slice_likelihood(bundle.flow, fine)
    assert np.all(np.isfinite(bpd))
    # training/checkpoint_bundle.py: the checkpoint's weights as an evaluation bundle
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "training" / "checkpoint_bundle.py"
    out = tmp_path / "eval.pt"
    argv, sys.argv = sys.argv, [str(script), str(bundle_path) + ".ckpt", str(out)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    evaluation = load_bundle(out)
    assert evaluation.preprocessing["downsample"] == 4
    assert evaluation.x0.shape == (88, 1, 24, 28)
    bpd_eval, _ = slice_likelihood(evaluation.flow, fine)
    np.testing.assert_allclose(bpd_eval, bpd, rtol=1e-5)
