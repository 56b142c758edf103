"""Model card of a prior bundle, written from the bundle's own record."""

from __future__ import annotations

IXI_ATTRIBUTION = (
    "IXI dataset, Information eXtraction from Images (EPSRC GR/S21533/02), "
    "https://brain-development.org/ixi-dataset/"
)


def model_card(bundle, *, reproduce=None, license_text="CC BY-SA 3.0",
               attribution=IXI_ATTRIBUTION):
    """Markdown model card of ``bundle`` (a :class:`~bids_app.flow.bundle.PriorBundle`)."""
    train = bundle.training
    config = bundle.flow.config
    history = train.get("history", [])
    lines = [
        f"# Prior bundle `{bundle.name}`",
        "",
        "A normalizing-flow prior of axial T1w slices for BlindHarmony.",
        "",
        "| field | value |",
        "|---|---|",
        f"| data | {train.get('dataset_description') or train.get('dataset')} |",
        f"| training subjects | {len(train.get('train_subjects', []))} "
        f"({train.get('n_train_slices')} slices) |",
        f"| validation subjects | {', '.join(train.get('validation_subjects', []))} "
        f"({train.get('n_validation_slices')} slices) |",
        f"| license | {license_text}; attribution: {attribution} |",
        f"| preset | {config.get('preset')}: {config['levels']} levels x "
        f"{config['steps_per_level']} steps, {config['hidden_channels']} hidden channels, "
        f"{config['num_res_blocks']} residual block(s), {config['num_bins']} bins, tail bound "
        f"{config['tail_bound']} |",
        f"| parameters | {train.get('parameters')} |",
        f"| slice grid | {bundle.reference.shape[0]} x {bundle.reference.shape[1]} pixels, "
        f"{bundle.reference.shape[2]} slices, {bundle.resolution:g} mm, space "
        f"{bundle.space} |",
        f"| optimization | Adam, lr {train.get('learning_rate')}, cosine schedule over "
        f"{train.get('planned_steps')} steps, batch {train.get('batch_size')}, "
        f"left-right flips: {train.get('flip_augmentation')} |",
        f"| steps run | {train.get('steps')} |",
        f"| wall time | {train.get('wall_seconds')} s on {train.get('device')} "
        f"({train.get('threads')} threads) |",
        f"| validation bits/dim | {bundle.metrics.get('val_bits_per_dim')} (best, at step "
        f"{bundle.metrics.get('best_step')}) |",
        f"| preprocessing | {bundle.preprocessing} |",
        f"| harmonization defaults | {_summary(bundle.harmonization)} |",
        f"| software | blindharmony {bundle.software_version} |",
        "",
    ]
    if reproduce:
        lines += ["## Reproduce", "", "```", reproduce, "```", ""]
    if history:
        lines += ["## Validation log", "", "| step | train bits/dim | validation bits/dim | "
                  "seconds |", "|---|---|---|---|"]
        lines += [f"| {h['step']} | {h['train_bits_per_dim']} | {h['val_bits_per_dim']} | "
                  f"{h['seconds']} |" for h in history]
        lines.append("")
    return "\n".join(lines)


def _summary(record):
    """``record`` with long lists (population quantiles, calibration evidence) and
    matrices (the population fields' precision) summarized."""
    if isinstance(record, dict):
        return {k: _summary(v) for k, v in record.items()}
    if isinstance(record, list) and record and all(isinstance(v, list) for v in record):
        return f"<{len(record)} x {len(record[0])} values>"
    if isinstance(record, list) and len(record) > 12:
        return f"<{len(record)} values>"
    return record


def sample_grid(bundle, path, *, n=12, seed=0, temperature=0.8):
    """Save a PNG grid of ``n`` slices drawn from the prior (at ``temperature``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    samples = bundle.sample(n, temperature=temperature, seed=seed).cpu().numpy()[:, 0]
    cols = 6
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for ax, image in zip(np.ravel(axes), samples):
        ax.imshow(np.clip(image, 0, 1).T, origin="lower", cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
    fig.suptitle(f"{bundle.name}: {n} samples (temperature {temperature})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    """``python -m bids_app.flow.card BUNDLE [--out MODEL_CARD.md] [--samples grid.png]``."""
    import argparse
    from pathlib import Path

    from .bundle import load_bundle

    parser = argparse.ArgumentParser(description="Write the model card of a prior bundle.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, help="markdown file (default: print)")
    parser.add_argument("--samples", type=Path, help="PNG grid of samples to write")
    parser.add_argument("--reproduce", help="the command that trains this bundle")
    opts = parser.parse_args(argv)
    bundle = load_bundle(opts.bundle)
    text = model_card(bundle, reproduce=opts.reproduce)
    if opts.out:
        opts.out.write_text(text)
    else:
        print(text)
    if opts.samples:
        sample_grid(bundle, opts.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
