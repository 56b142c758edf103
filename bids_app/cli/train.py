"""``blindharmony-train``: train a flow prior on target-domain T1w images of a BIDS dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..__about__ import __version__
from ..errors import BlindHarmonyError, MissingInputError, NoMatchError, UsageError

DEFAULT_TEMPLATE = "tpl-MNIColin27_res-2_T1w.nii.gz"


def get_parser():
    """The ``blindharmony-train`` argument parser."""
    from ..flow.model import PRESETS

    parser = argparse.ArgumentParser(
        prog="blindharmony-train",
        description=(
            "Train a BlindHarmony flow prior on the T1w images of a target-domain BIDS "
            "dataset and write a prior bundle. Arguments may be read from a file: @args.txt"
        ),
        fromfile_prefix_chars="@",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="target-domain BIDS dataset")
    parser.add_argument("output_bundle", type=Path, help="prior bundle to write (.pt)")
    sel = parser.add_argument_group("Selecting images")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                     help="train on these subjects only (sub- prefix optional)")
    sel.add_argument("--exclude-label", nargs="+", metavar="LABEL", default=[],
                     help="leave these subjects out (e.g. a held-out test set)")
    sel.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                     help="JSON with pybids filters for the T1w query, as in fMRIPrep")
    sel.add_argument("--validation-fraction", type=float, default=0.1,
                     help="fraction of the selected subjects held out for validation")
    model = parser.add_argument_group("Model and optimization")
    model.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    model.add_argument("--steps", type=int, default=4000, help="optimizer steps")
    model.add_argument("--batch-size", type=int, default=16)
    model.add_argument("--lr", "--learning-rate", type=float, default=5e-4)
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--no-flip", action="store_true", help="no left-right flip augmentation")
    model.add_argument("--downsample", type=int, choices=[1, 2], default=1,
                       help="train on slices block-averaged by this factor (2: 4 mm on the "
                            "2 mm grid)")
    model.add_argument("--contrast-augmentation", action="store_true",
                       help="train the contrast-agnostic companion: every training slice "
                            "gets a random monotone contrast change (bids_app.flow.augment)")
    model.add_argument("--mask-augmentation", type=float, default=0.0, metavar="SHARE",
                       help="skull-strip this share of the training slices with the "
                            "template's brain mask (a geometric augmentation)")
    run = parser.add_argument_group("Running")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    run.add_argument("--nthreads", "--omp-nthreads", type=int, default=None,
                     help="CPU threads for torch and registration (default: all cores)")
    run.add_argument("--checkpoint-every", type=int, default=200, metavar="N")
    run.add_argument("--validate-every", type=int, default=200, metavar="N")
    run.add_argument("--max-minutes", type=float, default=None,
                     help="stop after this much training time (resume later with --resume)")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUTPUT_BUNDLE's checkpoint (OUTPUT_BUNDLE.ckpt)")
    run.add_argument("--recalibrate", action="store_true",
                     help="only re-measure the harmonization calibration of OUTPUT_BUNDLE on "
                          "the validation images (no training)")
    run.add_argument("-w", "--work-dir", type=Path, default=None,
                     help="where registered slices are cached (default: next to the bundle)")
    ref = parser.add_argument_group("Reference space")
    ref.add_argument("--reference", type=Path, default=None,
                     help="template on the slice grid (default: the shipped Colin27 2 mm grid)")
    ref.add_argument("--space", default="MNIColin27", help="BIDS space label of the reference")
    ref.add_argument("--name", default=None, help="name recorded in the bundle")
    parser.add_argument("--version", action="version",
                        version=f"blindharmony-train v{__version__}")
    return parser


def _labels(values):
    return [v[4:] if v.startswith("sub-") else v for v in (values or [])]


def collect_images(bids_dir, *, participant_label=None, exclude=(), filters=None):
    """``[(subject, path), ...]`` of the T1w images to train on (every run and session)."""
    from bids import BIDSLayout

    if not (bids_dir / "dataset_description.json").is_file():
        raise MissingInputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    layout = BIDSLayout(str(bids_dir), validate=False)
    query = {"suffix": "T1w", "extension": [".nii", ".nii.gz"], "datatype": "anat"}
    query.update(filters or {})
    subjects = layout.get_subjects()
    wanted = _labels(participant_label) or subjects
    missing = sorted(set(wanted) - set(subjects))
    if missing:
        raise NoMatchError(f"{bids_dir}: no such participant(s): {', '.join(missing)}")
    exclude = set(_labels(exclude))
    images = [
        (f.entities["subject"], f.path)
        for f in layout.get(subject=[s for s in wanted if s not in exclude], **query)
    ]
    if not images:
        raise NoMatchError(f"{bids_dir}: no T1w image matched the selection")
    return sorted(images)


def split_subjects(images, fraction, seed):
    """Split by subject: ``(train, validation)`` lists of ``(subject, path)``."""
    import numpy as np

    subjects = sorted({s for s, _ in images})
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(subjects))
    n_val = max(1, int(round(fraction * len(subjects)))) if len(subjects) > 1 else 0
    val = set(order[:n_val])
    return [i for i in images if i[0] not in val], [i for i in images if i[0] in val]


def _cache_labels(images, reference):
    """What the slice cache depends on: each image (path, size, mtime) and the reference."""
    import hashlib

    import numpy as np

    ref = hashlib.sha256(np.asarray(reference.dataobj).tobytes() + reference.affine.tobytes())
    labels = [f"reference:{ref.hexdigest()}"]
    for subject, path in images:
        stat = Path(path).stat()
        labels.append(f"{subject}:{path}:{stat.st_size}:{int(stat.st_mtime)}")
    return labels


def _prepare_data(opts, images, reference, cache):
    """Register and slice the images once; cache the result for --resume."""
    import numpy as np

    from ..flow.data import SliceSet, extract_slices

    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            if list(npz["labels"]) == _cache_labels(images, reference):
                print(f"Using registered slices cached in {cache}", file=sys.stderr)
                return SliceSet(
                    slices=npz["slices"], subject=npz["subject"], position=npz["position"],
                    subjects=[s for s, _ in images], volumes=npz["volumes"],
                )
    from tqdm.auto import tqdm

    bar = tqdm(total=len(images), desc="registering", unit="image")
    sliceset = extract_slices(images, reference, num_threads=opts.nthreads,
                              progress=lambda label: bar.update(1))
    bar.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, slices=sliceset.slices, subject=sliceset.subject,
             position=sliceset.position, volumes=sliceset.volumes,
             labels=np.array(_cache_labels(images, reference)))
    tmp.replace(cache)
    return sliceset


def calibrate_bundle(bundle_path, volumes, *, train_volumes=None, device="cpu"):
    """:func:`bids_app.harmonize.calibration.calibrate_bundle`, reported on stderr."""
    from ..harmonize.calibration import calibrate_bundle as calibrate

    record = calibrate(bundle_path, volumes, train_volumes=train_volumes, device=device)
    fit = record["flow-intensity"]
    print(f"Calibration on {len(volumes)} validation image(s): gamma bias "
          f"{fit['gamma_bias']}, gate {fit['gate_bits']} bits/pixel", file=sys.stderr)
    for note in record.pop("notes", []):
        print(note, file=sys.stderr)
    return record


def train(opts):
    """Run training as described by the parsed options; return the bundle path."""
    import nibabel as nb
    import numpy as np
    import torch

    from ..flow.bundle import PriorBundle
    from ..flow.data import MIN_HEAD_FRACTION, mean_slices
    from ..flow.model import QUANT_LEVELS, SliceFlow, count_parameters, flow_config
    from ..flow.augment import random_contrast
    from ..flow.training import TrainState, make_optimizer, select_device, train_flow
    from ..preprocess.slices import downsample_slices

    nthreads = opts.nthreads or os.cpu_count() or 1
    opts.nthreads = nthreads
    torch.set_num_threads(nthreads)
    device = select_device(opts.device)
    if not opts.bids_dir.is_dir():
        raise MissingInputError(f"{opts.bids_dir}: no such directory")
    if opts.steps < 1 or opts.batch_size < 1:
        raise UsageError("--steps and --batch-size must be positive")
    if not 0 <= opts.validation_fraction < 1:
        raise UsageError("--validation-fraction must be in [0, 1)")
    filters = None
    if opts.bids_filter_file:
        try:
            filters = json.loads(opts.bids_filter_file.read_text()).get("t1w", {})
        except (OSError, ValueError) as exc:
            raise UsageError(f"{opts.bids_filter_file}: cannot read filters ({exc})") from None

    from importlib import resources

    ref_path = opts.reference or Path(str(resources.files("bids_app") / "data" / DEFAULT_TEMPLATE))
    reference = nb.as_closest_canonical(nb.load(str(ref_path)))
    images = collect_images(opts.bids_dir, participant_label=opts.participant_label,
                            exclude=opts.exclude_label, filters=filters)
    train_images, val_images = split_subjects(images, opts.validation_fraction, opts.seed)
    bundle_path = opts.output_bundle
    ckpt_path = bundle_path.with_name(bundle_path.name + ".ckpt")
    work = opts.work_dir or bundle_path.parent
    data = _prepare_data(opts, images, reference, work / f"{bundle_path.stem}_slices.npz")
    val_subjects = {s for s, _ in val_images}
    is_val = np.array([data.subjects[i] in val_subjects for i in data.subject])
    train_slices = data.slices[~is_val]
    val_slices = data.slices[is_val] if is_val.any() else data.slices[:0]
    if len(val_slices) == 0:  # a single subject: validate on its own slices
        val_slices = train_slices[:: max(1, len(train_slices) // 64)]
    train_idx = np.nonzero(~is_val)[0]
    factor = opts.downsample
    train_slices = downsample_slices(train_slices, factor)
    val_slices = downsample_slices(val_slices, factor)
    if opts.contrast_augmentation:
        val_slices = random_contrast(val_slices, np.random.default_rng(opts.seed + 1))
    augment = _augmentation(opts, data.position[train_idx], factor, tuple(reference.shape))
    print(f"{len(train_images)} training images ({len(train_slices)} slices), "
          f"{len(val_images)} validation images ({len(val_slices)} slices); device {device}",
          file=sys.stderr)

    shape = tuple(s // factor for s in reference.shape[:2])
    if opts.resume:
        if not ckpt_path.is_file():
            raise MissingInputError(f"{ckpt_path}: no checkpoint to resume from")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        config = ckpt["flow_config"]
    else:
        ckpt = None
        config = flow_config(opts.preset, shape=shape)
    flow = SliceFlow(config).to(device)
    optimizer, scheduler = make_optimizer(flow, lr=opts.lr, steps=opts.steps)
    state = TrainState()
    if ckpt is not None:
        flow.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _stretch_cosine(optimizer, scheduler, opts.steps)
        state = TrainState(**ckpt["train_state"])
        print(f"Resuming at step {state.step} (best validation {state.best_bpd:.4f} bits/dim)",
              file=sys.stderr)

    volumes = data.volumes[[i for i, s in enumerate(data.subjects) if s not in val_subjects]]
    template = volumes.mean(axis=0) * 1000.0
    x0 = mean_slices(
        type(data)(slices=data.slices[train_idx], subject=data.subject[train_idx],
                   position=data.position[train_idx], subjects=data.subjects, volumes=None),
        reference.shape[2], tuple(reference.shape[:2]),
    )
    x0 = downsample_slices(x0, factor).astype(np.float64) if factor > 1 else x0

    def describe(current):
        return {
            "dataset": str(opts.bids_dir.resolve().name),
            "dataset_description": _dataset_name(opts.bids_dir),
            "train_subjects": sorted({s for s, _ in train_images}),
            "validation_subjects": sorted(val_subjects),
            "n_train_slices": int(len(train_slices)),
            "n_validation_slices": int(len(val_slices)),
            "preset": config.get("preset"),
            "parameters": count_parameters(flow),
            "steps": current.step,
            "planned_steps": opts.steps,
            "batch_size": opts.batch_size,
            "learning_rate": opts.lr,
            "seed": opts.seed,
            "flip_augmentation": not opts.no_flip,
            "contrast_augmentation": bool(opts.contrast_augmentation),
            "mask_augmentation": float(opts.mask_augmentation),
            "device": str(device),
            "threads": nthreads,
            "wall_seconds": current.history[-1]["seconds"] if current.history
            else round(current.seconds, 1),
            "history": current.history,
        }

    def on_best(model, current):
        bundle = PriorBundle(
            flow=model, reference=nb.Nifti1Image(template.astype(np.float32), reference.affine),
            space=opts.space, x0=torch.from_numpy(x0),
            name=opts.name or bundle_path.stem,
            preprocessing={
                "normalization": "slice-minmax",
                "slice_axis": "z (axial, RAS)",
                "quantization_levels": QUANT_LEVELS,
                "registration": "affine 12 dof, Mattes MI, SimpleITK",
                "interpolation": "trilinear",
                "min_head_fraction": MIN_HEAD_FRACTION,
                "registration_template": Path(ref_path).name,
                "downsample": factor,
            },
            training=describe(current),
            metrics={"val_bits_per_dim": round(current.best_bpd, 4),
                     "best_step": current.best_step},
            harmonization=_harmonization_defaults(bundle_path),
        )
        was = model.training
        model.eval()
        bundle.save(bundle_path)
        model.train(was)

    def on_checkpoint(model, optim, sched, current):
        payload = {
            "flow_config": config,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optim.state_dict(),
            "scheduler": sched.state_dict(),
            "train_state": asdict(current),
        }
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(ckpt_path)

    val_volumes = data.volumes[[i for i, s in enumerate(data.subjects) if s in val_subjects]]
    if not len(val_volumes):
        val_volumes = volumes[:1]
    calibrate = factor == 1 and not opts.contrast_augmentation
    if opts.recalibrate:
        if not calibrate:
            raise UsageError("--recalibrate measures the full-resolution target prior; "
                             "a --downsample or --contrast-augmentation bundle has no "
                             "calibration of its own")
        calibrate_bundle(bundle_path, val_volumes, train_volumes=volumes, device=device)
        return bundle_path

    started = time.time()
    state = train_flow(
        flow, train_slices, val_slices, steps=opts.steps, batch_size=opts.batch_size,
        lr=opts.lr, seed=opts.seed, optimizer=optimizer, scheduler=scheduler, state=state,
        validate_every=opts.validate_every, checkpoint_every=opts.checkpoint_every,
        on_checkpoint=on_checkpoint, on_best=on_best, flip=not opts.no_flip,
        max_seconds=None if opts.max_minutes is None else opts.max_minutes * 60,
        augment=augment,
    )
    if calibrate:
        calibrate_bundle(bundle_path, val_volumes, train_volumes=volumes, device=device)
    print(f"Best validation {state.best_bpd:.4f} bits/dim at step {state.best_step}; "
          f"{state.step} steps in {time.time() - started:.0f} s; bundle: {bundle_path}",
          file=sys.stderr)
    return bundle_path


def _augmentation(opts, positions, factor, grid):
    """The training batches' augmentation (None for the plain target prior).

    ``positions`` are the training slices' indices on the grid, which pick the template's
    brain-mask slice for ``--mask-augmentation``.
    """
    from ..flow.augment import random_brain_masking, random_contrast
    from ..preprocess.masks import template_brain_mask
    from ..preprocess.slices import block_mean, volume_to_slices

    if not 0 <= opts.mask_augmentation <= 1:
        raise UsageError("--mask-augmentation must be in [0, 1]")
    masks = None
    if opts.mask_augmentation > 0:
        brain = template_brain_mask()
        if brain.shape != grid:
            raise UsageError(f"--mask-augmentation needs the shipped reference grid "
                             f"{brain.shape}, not {grid}")
        masks = block_mean(volume_to_slices(brain), factor) > 0.5
    if masks is None and not opts.contrast_augmentation:
        return None

    def augment(batch, index, rng):
        if masks is not None:
            batch = random_brain_masking(batch, masks[positions[index]], rng,
                                         share=opts.mask_augmentation)
        if opts.contrast_augmentation:
            batch = random_contrast(batch, rng)
        return batch

    return augment


def _stretch_cosine(optimizer, scheduler, steps):
    """Continue a resumed cosine schedule over a new total of ``steps`` steps.

    ``CosineAnnealingLR`` updates the rate recursively from the optimizer's current rate,
    so changing ``T_max`` alone keeps the old schedule's rate (zero once a run has
    finished, so a longer ``--resume --steps`` run would not train at all); set the
    closed-form rate of the current step for the new length.
    """
    import math

    scheduler.T_max = max(int(steps), 1)
    t = min(scheduler.last_epoch, scheduler.T_max)
    rates = [
        scheduler.eta_min
        + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / scheduler.T_max)) / 2
        for base in scheduler.base_lrs
    ]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = list(rates)


def _dataset_name(bids_dir):
    try:
        return json.loads((bids_dir / "dataset_description.json").read_text()).get("Name")
    except (OSError, ValueError):
        return None


def _harmonization_defaults(bundle_path):
    """Harmonization defaults recorded in a bundle (kept if the bundle already has them)."""
    from ..harmonize.defaults import DEFAULTS

    try:
        from ..flow.bundle import read_payload

        return {**DEFAULTS, **read_payload(bundle_path).get("harmonization", {})}
    except BlindHarmonyError:
        return dict(DEFAULTS)


def main(argv=None):
    """Console entry point of ``blindharmony-train``."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    opts = get_parser().parse_args(argv)
    try:
        train(opts)
    except BlindHarmonyError as exc:
        print(f"blindharmony-train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
