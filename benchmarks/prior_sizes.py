#!/usr/bin/env python
"""Prior sizes: validation bits/dim against training time, per flow size, on 2 CPU cores.

Each size (levels x steps per level, hidden channels, residual blocks) trains from scratch
on the default prior's training images for the same wall-time budget, with the full cosine
schedule fitted into that budget (the number of steps comes from timing a few steps first),
the shipped prior's batch size, learning rate and augmentation. Validation bits/dim on a
fixed subset of the validation slices is logged along the way. Each size's forward and
inverse seconds per slice (eval mode, batches of 8) give the cost of harmonizing one volume
(88 slices: 10 Algorithm-1 iterations of a forward and an inverse pass; the default method
scores 14 maps on 24 slices). A grid of samples per size is saved beside the table.

The data are the registered slices that ``blindharmony-train`` caches
(``<bundle>_slices.npz`` in its work directory): pass ``--cache``; without one, the
IXI-HH images (less the test subjects of ``benchmarks/ixihh_split.json``) are registered
first (about 15 minutes). The split into training and validation subjects is the one
``blindharmony-train --validation-fraction 0.08 --seed 0`` makes, the shipped prior's.

Usage::

    python benchmarks/prior_sizes.py --cache WORK/ixihh_cpu_slices.npz   # about 70 min
    python benchmarks/prior_sizes.py --cache C --sizes 4x2-32 --budget 60 --out /tmp/sizes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "ixi-hh"

#: name -> (levels, steps per level, hidden channels, residual blocks)
SIZES = {
    "4x2-32": (4, 2, 32, 1),
    "cpu": (4, 3, 32, 1),
    "4x3-64": (4, 3, 64, 1),
    "4x4-48": (4, 4, 48, 1),
    "paper": (4, 7, 96, 3),
}


def load_slices(opts):
    """``(train, validation, subjects)``: slices ``(N, 1, H, W)`` split by subject."""
    from bids_app.cli.train import _prepare_data, collect_images, split_subjects

    if opts.cache and Path(opts.cache).is_file():
        with np.load(opts.cache, allow_pickle=False) as npz:
            slices, subject, labels = npz["slices"], npz["subject"], list(npz["labels"])
        subjects = [label.split(":")[0] for label in labels[1:]]
    else:
        import nibabel as nb

        if not DATA.is_dir():
            print(f"{DATA}: IXI-HH data not found (and no --cache)", file=sys.stderr)
            raise SystemExit(66)
        test = json.loads((ROOT / "benchmarks" / "ixihh_split.json").read_text())["test"]
        images = collect_images(DATA, exclude=test)
        from bids_app.utils.templates import template_path

        reference = nb.as_closest_canonical(nb.load(str(template_path("T1w"))))
        cache = Path(opts.cache or Path(opts.out) / "prior_sizes_slices.npz")
        data = _prepare_data(SimpleNamespace(nthreads=opts.threads), images, reference, cache)
        slices, subject, subjects = data.slices, data.subject, data.subjects
    _, val_images = split_subjects([(s, None) for s in subjects], 0.08, 0)
    val_subjects = {s for s, _ in val_images}
    is_val = np.array([subjects[i] in val_subjects for i in subject])
    n_train_subjects = len(set(subjects) - val_subjects)
    return slices[~is_val], slices[is_val], sorted(val_subjects), n_train_subjects


def config_of(name, shape):
    from bids_app.flow.model import flow_config

    levels, steps, hidden, blocks = SIZES[name]
    preset = name if name in ("cpu", "paper") else "cpu"
    return flow_config(preset, shape=shape, levels=levels, steps_per_level=steps,
                       hidden_channels=hidden, num_res_blocks=blocks)


def seconds_per_step(config, train, *, batch_size, repeats=4):
    """Median wall time of a training step (forward, backward, Adam) on a fresh model."""
    import torch

    from bids_app.flow.model import SliceFlow, dequantize

    flow = SliceFlow(config)
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-4)
    batch = dequantize(torch.from_numpy(train[:batch_size].copy()))
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = flow.bits_per_dim(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def pass_seconds(flow, slices, *, repeats=3):
    """Median forward and inverse seconds per slice (eval mode, batch of 8)."""
    import torch

    batch = torch.from_numpy(slices[:8].copy())
    flow.eval()
    forward, inverse = [], []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            z, _ = flow(batch)
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            flow.inverse(z)
            inverse.append(time.perf_counter() - start)
    return float(np.median(forward)) / 8, float(np.median(inverse)) / 8


def run_size(name, train, val, opts):
    import torch

    from bids_app.flow.model import SliceFlow, count_parameters
    from bids_app.flow.training import train_flow

    torch.manual_seed(0)
    config = config_of(name, train.shape[-2:])
    step_s = seconds_per_step(config, train, batch_size=opts.batch_size)
    steps = max(20, int(opts.budget / step_s))
    flow = SliceFlow(config)
    state = train_flow(
        flow, train, val, steps=steps, batch_size=opts.batch_size, lr=5e-4, seed=0,
        validate_every=max(1, steps // opts.points), checkpoint_every=10**9,
        progress=False, max_seconds=opts.budget * 1.1,
    )
    forward, inverse = pass_seconds(flow, val)
    samples = flow.sample(opts.samples, temperature=opts.temperature,
                          generator=torch.Generator().manual_seed(0)).numpy()[:, 0]
    return {
        "size": name,
        "levels": config["levels"], "steps_per_level": config["steps_per_level"],
        "hidden_channels": config["hidden_channels"], "num_res_blocks": config["num_res_blocks"],
        "parameters": count_parameters(flow),
        "seconds_per_step": round(step_s, 3),
        "planned_steps": steps, "steps": state.step,
        "train_seconds": round(state.seconds, 1),
        "final_val_bits_per_dim": state.history[-1]["val_bits_per_dim"],
        "best_val_bits_per_dim": round(state.best_bpd, 4),
        "forward_s_per_slice": round(forward, 4), "inverse_s_per_slice": round(inverse, 4),
        "paper_volume_s": round(88 * opts.iterations * (forward + inverse), 1),
        "scoring_volume_s": round(14 * 24 * forward, 1),
        "history": state.history,
    }, samples


def render(result, path):
    rows = result["sizes"]
    lines = [
        "# Prior sizes: validation bits/dim against training time (2 CPU cores)",
        "",
        f"Every size trained from scratch for the same budget ({result['budget_s']:.0f} s of "
        f"wall time, cosine schedule fitted into it, batch {result['batch_size']}, Adam 5e-4, "
        f"{result['threads']} threads, {result['n_train']} training slices of "
        f"{result['n_train_subjects']} subjects), validated on {result['n_val']} slices of the "
        "shipped prior's validation subjects. Volume seconds are for one 2 mm volume on the "
        "prior's grid (88 slices): Algorithm 1 = 10 iterations of a forward and an inverse "
        "pass per slice; default method = the flow's scoring of 14 maps on 24 slices. "
        f"`python benchmarks/prior_sizes.py` ({result['date']}, {result['machine']}).",
        "",
        "| size | levels x steps | hidden ch | res blocks | parameters | s/step | steps in budget "
        "| validation bits/dim | forward s/slice | inverse s/slice | Algorithm 1 s/volume "
        "| scoring s/volume |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['levels']} x {r['steps_per_level']} | {r['hidden_channels']} "
            f"| {r['num_res_blocks']} | {r['parameters'] / 1e6:.2f} M "
            f"| {r['seconds_per_step']:.2f} "
            f"| {r['steps']} | {r['final_val_bits_per_dim']:.3f} | {r['forward_s_per_slice']:.4f} "
            f"| {r['inverse_s_per_slice']:.4f} | {r['paper_volume_s']:.0f} "
            f"| {r['scoring_volume_s']:.1f} |"
        )
    lines += ["", "Validation bits/dim along the way (seconds of training: bits/dim):", ""]
    for r in rows:
        curve = ", ".join(f"{h['seconds']:.0f}: {h['val_bits_per_dim']:.3f}" for h in r["history"])
        lines.append(f"- {r['size']}: {curve}")
    lines += ["", f"Samples (temperature {result['temperature']}): `prior_sizes.png`.", ""]
    Path(path).write_text("\n".join(lines))


def save_grid(samples, path, temperature):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(samples)
    n = max(len(v) for v in samples.values())
    fig, axes = plt.subplots(len(names), n, figsize=(1.4 * n, 1.7 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for col in range(n):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(samples[name]):
                ax.imshow(np.clip(samples[name][col].T[::-1], 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(f"Samples after equal training time (temperature {temperature})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", help="registered-slice cache of blindharmony-train")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=SIZES)
    parser.add_argument("--budget", type=float, default=720.0, help="seconds of training per size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--points", type=int, default=8, help="validations per run")
    parser.add_argument("--val-slices", type=int, default=192)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    opts = parser.parse_args(argv)

    import torch

    torch.set_num_threads(opts.threads)
    os.makedirs(opts.out, exist_ok=True)
    train, val, val_subjects, n_train_subjects = load_slices(opts)
    val = val[:: max(1, len(val) // opts.val_slices)][: opts.val_slices]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "budget_s": opts.budget, "batch_size": opts.batch_size, "threads": opts.threads,
        "n_train": len(train), "n_val": len(val), "validation_subjects": val_subjects,
        "n_train_subjects": n_train_subjects, "temperature": opts.temperature, "sizes": [],
    }
    samples = {}
    for name in opts.sizes:
        print(f"{name}: training for {opts.budget:.0f} s", file=sys.stderr, flush=True)
        row, samples[name] = run_size(name, train, val, opts)
        print(f"{name}: {row['steps']} steps, validation {row['final_val_bits_per_dim']:.3f} "
              "bits/dim", file=sys.stderr, flush=True)
        result["sizes"].append(row)
        Path(opts.out, "prior_sizes.json").write_text(json.dumps(result, indent=1))
        render(result, Path(opts.out, "prior_sizes.md"))
        save_grid(samples, Path(opts.out, "prior_sizes.png"), opts.temperature)
    return 0


if __name__ == "__main__":
    sys.exit(main())
