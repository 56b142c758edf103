"""``blindharmony-train``: train a flow prior on target-domain T1w images of a BIDS dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from types import SimpleNamespace

from ..__about__ import __version__
from ..errors import (BlindHarmonyError, InputDataError, MissingInputError, NoMatchError,
                      UsageError)
from ..utils.bids import collect_t1w, list_participants, load_bids_filters, strip_label
from ..utils.templates import template_path
from .parser import HelpFormatter


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
        formatter_class=HelpFormatter,
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
    model.add_argument("--downsample", type=int, choices=[1, 2, 4], default=1,
                       help="train on slices block-averaged by this factor (2: 4 mm on the "
                            "2 mm grid; 4: 8 mm)")
    model.add_argument("--contrast-augmentation", action="store_true",
                       help="train the contrast-agnostic companion: every training slice "
                            "gets a random monotone contrast change (bids_app.flow.augment)")
    model.add_argument("--mask-augmentation", type=float, default=0.0, metavar="SHARE",
                       help="skull-strip this share of the training slices with the "
                            "template's brain mask (a geometric augmentation)")
    model.add_argument("--mask-edges", choices=["hard", "soft"], default="hard",
                       help="with --downsample 2 or 4, mask on the prior's grid (hard) or on the "
                            "reference grid and block-average the mask (soft, as a brain "
                            "extraction at full resolution looks on the coarse grid)")
    model.add_argument("--contrast-ranking", type=float, default=0.0, metavar="WEIGHT",
                       help="add the contrast-ranking hinge with this weight: the prior learns "
                            "to prefer each training slice over a random contrast change of "
                            "it, with the change of variables (bids_app.flow.ranking); 0: "
                            "maximum likelihood alone")
    model.add_argument("--ranking-temperature", type=float, default=0.01, metavar="BITS",
                       help="softness of the ranking hinge in bits/pixel")
    model.add_argument("--ranking-adversaries", type=int, default=0, metavar="N",
                       help="with --contrast-ranking, half of the negatives come from a bank "
                            "of N adversarial maps that follow the prior's own preferences "
                            "(bids_app.flow.ranking.AdversaryBank)")
    model.add_argument("--init-from", type=Path, default=None, metavar="FILE",
                       help="start from the weights of this bundle or checkpoint (a new "
                            "optimizer and schedule; ignored when --resume finds a checkpoint)")
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
    run.add_argument("--recalibrate-field", action="store_true",
                     help="only measure the training images' smooth fields (the bias-field "
                          "record of flow-intensity) into OUTPUT_BUNDLE, keeping the rest of "
                          "its calibration (no training)")
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


def collect_images(bids_dir, *, participant_label=None, exclude=(), filters=None):
    """``[(subject, path), ...]`` of the T1w images to train on (every run and session).

    :func:`bids_app.utils.bids.collect_t1w` on the selected participants less ``exclude``.

    Parameters
    ----------
    bids_dir : path
        The target-domain BIDS dataset.
    participant_label : list of str or None
        Participants (``sub-`` optional); ``None`` selects every participant.
    exclude : list of str
        Participants left out (``sub-`` optional).
    filters : dict or None
        Entity filters of the ``t1w`` query (:func:`bids_app.utils.bids.load_bids_filters`).

    Returns
    -------
    list of (str, str)
        Sorted ``(subject, absolute path)`` pairs.

    Raises
    ------
    MissingInputError
        ``bids_dir`` is not a BIDS dataset (exit 66).
    NoMatchError
        A requested participant is absent, or no image is left (exit 18).
    UsageError
        A label is not alphanumeric (exit 64).
    """
    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise MissingInputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    present = list_participants(bids_dir)
    wanted = [strip_label(v, "sub-") for v in participant_label or []] or present
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise NoMatchError(f"{bids_dir}: no such participant(s): {', '.join(missing)}")
    excluded = {strip_label(v, "sub-") for v in exclude or []}
    selected = [s for s in wanted if s not in excluded]
    if not selected:
        raise NoMatchError(f"{bids_dir}: no T1w image matched the selection")
    found = collect_t1w(bids_dir, participant_label=selected, bids_filters=filters)
    return sorted((subject, path) for subject, paths in found.items() for path in paths)


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
    """What the slice cache depends on: each image's content and the reference.

    Contents, not paths or modification times: a dataset copied or mounted anew (another
    machine, another session) keeps its cache.
    """
    import hashlib

    import numpy as np

    ref = hashlib.sha256(np.asarray(reference.dataobj).tobytes() + reference.affine.tobytes())
    labels = [f"reference:{ref.hexdigest()}"]
    for subject, path in images:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        labels.append(f"{subject}:{digest}")
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
    from ..flow.training import train_flow

    device, filters = _check_options(opts)
    ref_path, reference = _load_reference(opts.reference)
    images = collect_images(opts.bids_dir, participant_label=opts.participant_label,
                            exclude=opts.exclude_label, filters=filters)
    train_images, val_images = split_subjects(images, opts.validation_fraction, opts.seed)
    val_subjects = {s for s, _ in val_images}
    bundle_path = opts.output_bundle
    ckpt_path = bundle_path.with_name(bundle_path.name + ".ckpt")
    work = opts.work_dir or bundle_path.parent
    data = _prepare_data(opts, images, reference, work / f"{bundle_path.stem}_slices.npz")
    slices = _split_slices(opts, data, val_subjects, reference)
    print(f"{len(train_images)} training images ({len(slices.train)} slices), "
          f"{len(val_images)} validation images ({len(slices.val)} slices); device {device}",
          file=sys.stderr)
    flow, config, optimizer, scheduler, state = _make_flow(
        opts, ckpt_path, tuple(s // opts.downsample for s in reference.shape[:2]), device)
    prior = _prior_images(opts, data, slices.train_idx, val_subjects, reference)
    record = partial(_training_record, opts, subjects=(train_images, val_subjects),
                     slices=slices, flow=flow, config=config, device=device)
    on_best = _bundle_writer(opts, bundle_path, record, prior=prior, reference=reference,
                             ref_path=ref_path)
    on_checkpoint = _checkpoint_writer(ckpt_path, config)
    calibrate = not opts.contrast_augmentation
    if opts.recalibrate_field:
        from ..harmonize.calibration import calibrate_field

        try:
            record = calibrate_field(bundle_path, prior.volumes)
        except ValueError as exc:
            raise InputDataError(bundle_path, str(exc)) from exc
        print(f"Fields of {record['n_volumes']} training image(s): correction beyond "
              f"{record['threshold']} (squared Mahalanobis distance)", file=sys.stderr)
        return bundle_path
    if opts.recalibrate:
        if not calibrate:
            raise UsageError("--recalibrate measures a target prior; a "
                             "--contrast-augmentation companion has no calibration of its "
                             "own")
        calibrate_bundle(bundle_path, prior.val_volumes, train_volumes=prior.volumes,
                         device=device)
        return bundle_path

    started = time.time()
    state = train_flow(
        flow, slices.train, slices.val, steps=opts.steps, batch_size=opts.batch_size,
        lr=opts.lr, seed=opts.seed, optimizer=optimizer, scheduler=scheduler, state=state,
        validate_every=opts.validate_every, checkpoint_every=opts.checkpoint_every,
        on_checkpoint=on_checkpoint, on_best=on_best, flip=not opts.no_flip,
        max_seconds=None if opts.max_minutes is None else opts.max_minutes * 60,
        augment=slices.augment, ranking=_ranking(opts),
    )
    if calibrate and state.step >= opts.steps:
        # once, when the schedule is done (a run cut by --max-minutes goes on with --resume)
        calibrate_bundle(bundle_path, prior.val_volumes, train_volumes=prior.volumes,
                         device=device)
    elif calibrate:
        print(f"Stopped at step {state.step} of {opts.steps}: the bundle is calibrated when "
              "the schedule is done (--resume), or now with --recalibrate", file=sys.stderr)
    print(f"Best validation {state.best_bpd:.4f} bits/dim at step {state.best_step}; "
          f"{state.step} steps in {time.time() - started:.0f} s; bundle: {bundle_path}",
          file=sys.stderr)
    return bundle_path


def _check_options(opts):
    """Check the options, set the thread count; return ``(device, t1w filters)``."""
    import torch

    from ..flow.training import select_device

    opts.nthreads = opts.nthreads or os.cpu_count() or 1
    torch.set_num_threads(opts.nthreads)
    device = select_device(opts.device)
    if not opts.bids_dir.is_dir():
        raise MissingInputError(f"{opts.bids_dir}: no such directory")
    if opts.steps < 1 or opts.batch_size < 1:
        raise UsageError("--steps and --batch-size must be positive")
    if not 0 <= opts.validation_fraction < 1:
        raise UsageError("--validation-fraction must be in [0, 1)")
    if opts.contrast_ranking < 0 or opts.ranking_temperature <= 0:
        raise UsageError("--contrast-ranking must be >= 0 and --ranking-temperature > 0")
    if opts.contrast_ranking > 0 and opts.contrast_augmentation:
        raise UsageError("--contrast-ranking teaches a target prior to reject contrast "
                         "changes; the --contrast-augmentation companion accepts them")
    filters = load_bids_filters(opts.bids_filter_file) if opts.bids_filter_file else None
    return device, filters


def _load_reference(path=None):
    """``(path, RAS image)`` of the registration template (default: the shipped one)."""
    import nibabel as nb

    path = path or template_path("T1w")
    return path, nb.as_closest_canonical(nb.load(str(path)))


def _split_slices(opts, data, val_subjects, reference):
    """Training and validation slices (downsampled, augmented as asked), the training
    slices' indices in ``data`` and the batches' augmentation: ``.train``, ``.val``,
    ``.train_idx``, ``.augment``."""
    import numpy as np

    from ..flow.augment import random_contrast
    from ..preprocess.slices import downsample_slices

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
    return SimpleNamespace(train=train_slices, val=val_slices, train_idx=train_idx,
                           augment=augment)


def _make_flow(opts, ckpt_path, shape, device):
    """A new flow, or the checkpoint's with ``--resume``: ``(flow, config, optimizer,
    scheduler, state)``."""
    import torch

    from ..flow.model import SliceFlow, flow_config
    from ..flow.training import TrainState, make_optimizer

    init = None
    if opts.resume and (ckpt_path.is_file() or opts.init_from is None):
        if not ckpt_path.is_file():
            raise MissingInputError(f"{ckpt_path}: no checkpoint to resume from")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        config = ckpt["flow_config"]
    elif opts.init_from is not None:
        ckpt, init = None, _initial_weights(opts.init_from, shape)
        config = init["flow_config"]
    else:
        ckpt = None
        config = flow_config(opts.preset, shape=shape)
    flow = SliceFlow(config).to(device)
    if init is not None:
        flow.load_state_dict(init["state_dict"])
        print(f"Starting from the weights of {opts.init_from}", file=sys.stderr)
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
    return flow, config, optimizer, scheduler, state


def _initial_weights(path, shape):
    """``{"flow_config", "state_dict"}`` of a bundle or checkpoint for ``--init-from``."""
    import torch

    if not Path(path).is_file():
        raise MissingInputError(f"{path}: no bundle or checkpoint to start from")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise UsageError(f"{path}: not a prior bundle or checkpoint (no weights)")
    config = payload["flow_config"]
    if tuple(config["shape"]) != tuple(shape):
        raise UsageError(f"{path}: its flow's slices are {tuple(config['shape'])}, this run's "
                         f"are {tuple(shape)} (--downsample)")
    return payload


def _prior_images(opts, data, train_idx, val_subjects, reference):
    """What the bundle carries besides the flow: ``.template`` (the training images' mean,
    the bundle's reference), ``.x0`` (mean slices) and the ``.volumes`` / ``.val_volumes``
    that calibrate it."""
    import numpy as np

    from ..flow.data import mean_slices
    from ..preprocess.slices import downsample_slices

    volumes = data.volumes[[i for i, s in enumerate(data.subjects) if s not in val_subjects]]
    x0 = mean_slices(
        type(data)(slices=data.slices[train_idx], subject=data.subject[train_idx],
                   position=data.position[train_idx], subjects=data.subjects, volumes=None),
        reference.shape[2], tuple(reference.shape[:2]),
    )
    factor = opts.downsample
    x0 = downsample_slices(x0, factor).astype(np.float64) if factor > 1 else x0
    val_volumes = data.volumes[[i for i, s in enumerate(data.subjects) if s in val_subjects]]
    if not len(val_volumes):
        val_volumes = volumes[:1]
    return SimpleNamespace(template=volumes.mean(axis=0) * 1000.0, x0=x0, volumes=volumes,
                           val_volumes=val_volumes)


def _training_record(opts, current, *, subjects, slices, flow, config, device):
    """The bundle's ``training`` record at the training state ``current``."""
    from ..flow.model import count_parameters

    train_images, val_subjects = subjects
    ranking = _ranking(opts)
    return {
        "dataset": str(opts.bids_dir.resolve().name),
        "dataset_description": _dataset_name(opts.bids_dir),
        "train_subjects": sorted({s for s, _ in train_images}),
        "validation_subjects": sorted(val_subjects),
        "n_train_slices": int(len(slices.train)),
        "n_validation_slices": int(len(slices.val)),
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
        "mask_edges": opts.mask_edges,
        "contrast_ranking": ranking.as_record() if ranking else None,
        "initialized_from": opts.init_from.name if opts.init_from else None,
        "device": str(device),
        "threads": opts.nthreads,
        "wall_seconds": current.history[-1]["seconds"] if current.history
        else round(current.seconds, 1),
        "history": current.history,
    }


def _bundle_writer(opts, bundle_path, record, *, prior, reference, ref_path):
    """``on_best(model, state)``: write the prior bundle of the best model so far."""
    import nibabel as nb
    import numpy as np
    import torch

    from ..flow.bundle import PriorBundle
    from ..flow.data import MIN_HEAD_FRACTION
    from ..flow.model import QUANT_LEVELS

    def on_best(model, current):
        bundle = PriorBundle(
            flow=model,
            reference=nb.Nifti1Image(prior.template.astype(np.float32), reference.affine),
            space=opts.space, x0=torch.from_numpy(prior.x0),
            name=opts.name or bundle_path.stem,
            preprocessing={
                "normalization": "slice-minmax",
                "slice_axis": "z (axial, RAS)",
                "quantization_levels": QUANT_LEVELS,
                "registration": "affine 12 dof, Mattes MI, SimpleITK",
                "interpolation": "trilinear",
                "min_head_fraction": MIN_HEAD_FRACTION,
                "registration_template": Path(ref_path).name,
                "downsample": opts.downsample,
            },
            training=record(current),
            metrics={"val_bits_per_dim": current.history[-1]["val_bits_per_dim"]
                     if current.history else round(current.best_bpd, 4),
                     "best_step": current.best_step},
            harmonization=_harmonization_defaults(bundle_path),
        )
        was = model.training
        model.eval()
        bundle.save(bundle_path)
        model.train(was)

    return on_best


def _checkpoint_writer(ckpt_path, config):
    """``on_checkpoint(model, optimizer, scheduler, state)``: write ``--resume``'s file."""
    import torch

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

    return on_checkpoint


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
        masks = volume_to_slices(brain) > 0.5
        if opts.mask_edges == "hard" or factor == 1:
            masks, fine = block_mean(masks.astype("float32"), factor) > 0.5, 1
        else:
            fine = factor
    if masks is None and not opts.contrast_augmentation:
        return None

    def augment(batch, index, rng):
        if masks is not None:
            batch = random_brain_masking(batch, masks[positions[index]], rng,
                                         share=opts.mask_augmentation, factor=fine)
        if opts.contrast_augmentation:
            batch = random_contrast(batch, rng)
        return batch

    return augment


def _ranking(opts):
    """The ranking term asked for (``--contrast-ranking``), or None."""
    from ..flow.ranking import Ranking

    if opts.contrast_ranking <= 0:
        return None
    return Ranking(weight=opts.contrast_ranking, temperature=opts.ranking_temperature,
                   adversaries=opts.ranking_adversaries)


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
    from ..harmonize.methods import default_record

    try:
        from ..flow.bundle import read_payload

        return {**default_record(), **read_payload(bundle_path).get("harmonization", {})}
    except BlindHarmonyError:
        return default_record()


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
