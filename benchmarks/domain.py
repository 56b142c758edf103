#!/usr/bin/env python
"""Inputs outside the prior's family: the out-of-domain rule and skull-stripped input.

On IXI-HH test subjects (``benchmarks/ixihh_split.json``; never tuned on), registered as
the app registers them (:func:`~bids_app.preprocess.registration.register_to_reference`)
and harmonized through the library path (:func:`~bids_app.harmonize.volume.harmonize_volume`):

1. **The flag.** Each in-domain image as it is, with its contrast inverted inside the head
   (background kept at 0: T2-like ordering, CSF brightest) and inverted altogether: is it
   flagged ``OutOfDomain``, for which reasons, and is the flagged result the input itself?
2. **Skull-stripped input.** The first ``--stripped`` subjects, brain-extracted in the
   reference space (the template's brain mask, dilated by one voxel), under the quality
   benchmark's shifts (:data:`bids_app.evaluation.shifts.ALL_SHIFTS`): detected as
   stripped, and the PSNR of the result scored in the brain (both images times the
   template's brain mask, the benchmark's per-slice protocol), against the whole-head
   version of the same shifted image scored the same way.

Usage::

    python benchmarks/domain.py            # 24 subjects, 8 of them stripped: ~20 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # quality

DATA = ROOT.parent / "shared" / "data" / "ixi-hh"


def t2_like(volume):
    head = volume > 0.02 * volume.max()
    return np.where(head, volume.max() - volume, 0.0).astype(np.float32)


def inverted(volume):
    return (volume.max() - volume).astype(np.float32)


def population_candidates(image, truth, bundle, brain, kind):
    """Each candidate the population alone offers (the identity, the power map closest to
    the population, the quantile map; :func:`~bids_app.harmonize.selection.select_map`'s
    list without the prior), applied to ``image``: ``{name: [PSNR in the brain, distance in
    population spreads]}``, with the head population for ``kind`` "whole" and the brain
    population for "stripped". Shows how far the population's own maps reach in each."""
    from bids_app.evaluation.metrics import summarize
    from bids_app.harmonize.quantiles import (ANCHOR, consistency, population_mask,
                                              quantile_map, volume_quantiles)
    from bids_app.harmonize.selection import _candidates
    from bids_app.preprocess.intensity_maps import apply_global_map

    record = bundle.harmonization["flow-intensity"]
    population = record["population" if kind == "whole" else "population_brain"]
    levels = np.asarray(population["levels"])
    knots = int(record.get("quantile_knots", 65))
    source = volume_quantiles(image, population_mask(bundle.reference, population), levels)
    candidates, _ = _candidates(source, population, {}, n_knots=knots, gamma_bias=1.0,
                                selection="auto", use_prior=False)
    candidates["quantile"] = quantile_map(source, np.asarray(population["relative_quantiles"]),
                                          knots, levels=levels,
                                          anchor=population.get("anchor", ANCHOR))
    scale = float(np.max(image))
    return {name: [round(summarize(apply_global_map(image, values, scale) * brain,
                                   truth * brain)["psnr"], 2),
                   round(float(consistency(values, source, population)), 3)]
            for name, values in candidates.items()}


def run(opts):
    import nibabel as nb
    import torch
    from scipy.ndimage import binary_dilation

    from bids_app.cli.train import collect_images
    from bids_app.evaluation.metrics import summarize
    from bids_app.evaluation.shifts import apply_shift
    from bids_app.flow.bundle import load_bundle
    from bids_app.harmonize.volume import harmonize_volume
    from bids_app.preprocess.masks import template_brain_mask
    from bids_app.preprocess.registration import register_to_reference, resample_to_grid

    torch.set_num_threads(opts.threads)
    bundle = load_bundle(opts.prior)
    brain = template_brain_mask()
    loose = binary_dilation(brain, iterations=1)
    test = json.loads((ROOT / "benchmarks" / "ixihh_split.json").read_text())["test"]
    if opts.split == "validation":
        from quality import validation_subjects

        test = validation_subjects(DATA, test)
    images = collect_images(DATA, participant_label=test[: opts.n])
    flags, stripped = [], []
    started = time.time()
    for index, (subject, path) in enumerate(images):
        native = nb.as_closest_canonical(nb.load(path))
        matrix, _ = register_to_reference(native, bundle.reference, num_threads=opts.threads)
        volume = np.asarray(resample_to_grid(native, bundle.reference, matrix), np.float32)
        kinds = () if opts.no_flags else (("in-domain", volume), ("t2-like", t2_like(volume)),
                                          ("inverted", inverted(volume)))
        for kind, source in kinds:
            out, result = harmonize_volume(source, bundle, progress=False)
            m = result["metrics"]
            flags.append({
                "subject": subject, "kind": kind, "flagged": bool(m["OutOfDomain"]),
                "reasons": m["OutOfDomainReasons"], "tissue_order": m["TissueOrder"],
                "latent_norm": m["LatentNorm"], "selected": result["decision"].get("selected"),
                "unchanged": bool(np.allclose(out, source, atol=1e-3 * float(source.max()))),
            })
        if index < opts.stripped:
            truth = apply_shift(volume, "identity")
            for shift in opts.shifts:
                u = apply_shift(volume, shift)
                whole, _ = harmonize_volume(u, bundle, progress=False)
                cut, result = harmonize_volume(u * loose, bundle, progress=False)
                stripped.append({
                    "subject": subject, "shift": shift,
                    "detected": bool(result["metrics"]["SkullStripped"]),
                    "selected": result["decision"].get("selected"),
                    "flagged": bool(result["metrics"]["OutOfDomain"]),
                    "source": summarize(u * brain, truth * brain)["psnr"],
                    "whole_head": summarize(whole * brain, truth * brain)["psnr"],
                    "stripped": summarize(cut * brain, truth * brain)["psnr"],
                    "candidates": {
                        "whole": population_candidates(u, truth, bundle, brain, "whole"),
                        "stripped": population_candidates(u * loose, truth, bundle, brain,
                                                          "stripped"),
                    },
                })
        print(f"{subject} done ({time.time() - started:.0f} s)", file=sys.stderr)
    return flags, stripped, time.time() - started


def _flag_rows(flags):
    """The flag table's lines."""
    lines = [
        "| input | flagged | left unchanged when flagged | tissue order (min-max) | "
        "latent norm (min-max) | reasons (count) |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("in-domain", "t2-like", "inverted"):
        rows = [f for f in flags if f["kind"] == kind]
        flagged = [f for f in rows if f["flagged"]]
        reasons = {}
        for f in flagged:
            for r in f["reasons"]:
                key = r.split(" ")[0] + " " + r.split(" ")[1]
                reasons[key] = reasons.get(key, 0) + 1
        order = [f["tissue_order"] for f in rows]
        norm = [f["latent_norm"] for f in rows]
        lines.append(
            f"| {kind} | {len(flagged)} of {len(rows)} | "
            f"{sum(f['unchanged'] for f in flagged)} of {len(flagged)} | "
            f"{min(order):.3f}-{max(order):.3f} | {min(norm):.3f}-{max(norm):.3f} | "
            + (", ".join(f"{k} ({v})" for k, v in sorted(reasons.items())) or "-") + " |")
    named = [f"{f['subject']} ({'; '.join(f['reasons'])})" for f in flags
             if f["kind"] == "in-domain" and f["flagged"]]
    return lines + ["", "In-domain images flagged: " + (", ".join(named) or "none") + ".", ""]


def _candidate_rows(stripped):
    """The population's own candidates, whole head against brain (rows that record them)."""
    rows = [s for s in stripped if "candidates" in s]
    if not rows:
        return []
    names = ("identity", "power", "quantile")
    lines = [
        "### What the population alone reaches",
        "",
        "Each candidate the population offers without the prior "
        "(`population_candidates`), mean PSNR (dB) in the brain over subjects, whole head "
        "(the head population) / skull-stripped (the brain population); in brackets the "
        "median distance to the population in its spreads.",
        "",
        "| shift | " + " | ".join(names) + " |",
        "|---|---|---|---|",
    ]
    for shift in dict.fromkeys(s["shift"] for s in rows):
        cells = []
        for name in names:
            part = []
            for kind in ("whole", "stripped"):
                values = [s["candidates"][kind][name] for s in rows if s["shift"] == shift]
                part.append(f"{np.mean([v[0] for v in values]):.1f} "
                            f"({np.median([v[1] for v in values]):.2f})")
            cells.append(" / ".join(part))
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_markdown(flags, stripped, seconds, opts):
    subjects = sorted({f["subject"] for f in flags + stripped})
    split = getattr(opts, "split", "test")
    lines = [
        "# Inputs outside the prior's family",
        "",
        f"`benchmarks/domain.py` (protocol in its docstring): {len(subjects)} IXI-HH {split} "
        f"subjects, the first {len({s['subject'] for s in stripped})} of them also "
        f"skull-stripped; {seconds:.0f} s on {opts.threads} thread(s).",
        "",
        "## The out-of-domain flag",
        "",
    ]
    if flags:
        lines += _flag_rows(flags)
    else:
        lines += ["Not run (`--no-flags`).", ""]
    if stripped:
        lines += [
            "## Skull-stripped input",
            "",
            "PSNR (dB) scored in the brain, mean over subjects; detected: scans found "
            "skull-stripped; selected: the maps applied to the stripped images.",
            "",
            "| shift | source | whole-head input | skull-stripped input | difference | "
            "detected | selected |",
            "|---|---|---|---|---|---|---|",
        ]
        for shift in dict.fromkeys(s["shift"] for s in stripped):
            rows = [s for s in stripped if s["shift"] == shift]
            diff = [s["stripped"] - s["whole_head"] for s in rows]
            chosen = {}
            for s in rows:
                chosen[s["selected"]] = chosen.get(s["selected"], 0) + 1
            lines.append(
                f"| {shift} | {np.mean([s['source'] for s in rows]):.1f} | "
                f"{np.mean([s['whole_head'] for s in rows]):.1f} | "
                f"{np.mean([s['stripped'] for s in rows]):.1f} | {np.mean(diff):+.1f} "
                f"(worst {min(diff):+.1f}) | {sum(s['detected'] for s in rows)} of {len(rows)} "
                f"| {', '.join(f'{k} {v}' for k, v in sorted(chosen.items()))} |")
        lines.append("")
        lines += _candidate_rows(stripped)
    return "\n".join(lines)


def get_parser():
    from bids_app.evaluation.shifts import ALL_SHIFTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--prior", default=None, help="prior bundle (default: the shipped one)")
    parser.add_argument("-n", type=int, default=24, help="first N test subjects")
    parser.add_argument("--stripped", type=int, default=8,
                        help="of which the first N are also skull-stripped and shifted")
    parser.add_argument("--split", choices=["test", "validation"], default="test",
                        help="subjects: the test split (never tuned on, the default) or the "
                        "prior's validation subjects (for development)")
    parser.add_argument("--shifts", nargs="+", default=ALL_SHIFTS,
                        help="shifts of the skull-stripped part (default ALL_SHIFTS; "
                        "NAME@signal shifts the signal and keeps the noise)")
    parser.add_argument("--no-flags", action="store_true",
                        help="skip the out-of-domain part (skull-stripped input only)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--name", default="domain")
    return parser


def main(argv=None):
    opts = get_parser().parse_args(argv)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    if not DATA.is_dir():
        print(f"{DATA}: IXI-HH data not found", file=sys.stderr)
        return 66
    flags, stripped, seconds = run(opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{opts.name}.json").write_text(json.dumps(
        {"flags": flags, "stripped": stripped, "seconds": seconds}, indent=1))
    (opts.out / f"{opts.name}.md").write_text(write_markdown(flags, stripped, seconds, opts))
    print(f"wrote {opts.out / opts.name}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
