#!/usr/bin/env python
"""The smooth field of ``flow-intensity``: which images it corrects, and what that gains.

IXI-HH subjects (the prior's validation subjects by default: the rule's settings were
chosen on them; ``--split test`` for the held-out ones), registered to the prior's
reference grid as the app registers them, shifted there
(:func:`bids_app.evaluation.shifts.apply_shift`, the seed of the i-th subject is i), and
put through :func:`bids_app.harmonize.field.assess_field` with the prior's
``population_field`` record. Scored as the quality benchmark scores (PSNR of per-slice
min-max normalized axial slices holding at least 10 % of the template's head), against
the unshifted registered image: the source, and the source with its field divided out
where the rule corrects it (the intensity map is left out, so that the column shows the
field's part alone).

Usage::

    python benchmarks/field.py                 # 11 validation subjects, ~2 min
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # _report

DATA = ROOT.parent / "shared" / "data" / "ixi-hh"
SHIFTS = ["identity", "bias40", "bias+gamma0.8", "exp", "log", "gamma0.7", "gmwm0.5",
          "sigmoid"]


def subjects(data, split):
    """The subjects of ``split``: ``test`` (benchmarks/ixihh_split.json) or ``validation``
    (:func:`quality.validation_subjects`)."""
    from quality import validation_subjects

    test = json.loads((ROOT / "benchmarks" / "ixihh_split.json").read_text())["test"]
    return list(test) if split == "test" else validation_subjects(data, test)


def run(opts):
    import nibabel as nb

    from bids_app.evaluation.metrics import summarize
    from bids_app.evaluation.shifts import apply_shift
    from bids_app.flow.bundle import load_bundle
    from bids_app.harmonize.field import assess_field, correction
    from bids_app.preprocess.masks import head_mask, template_brain_mask
    from bids_app.preprocess.registration import register_to_reference, resample_to_grid

    bundle = load_bundle(opts.prior)
    record = (bundle.harmonization.get("flow-intensity") or {}).get("population_field")
    if record is None:
        raise SystemExit(f"{opts.prior or 'the shipped prior'}: no population_field record "
                         "(recalibrate it with blindharmony-train --recalibrate)")
    template = np.asarray(bundle.reference.dataobj, dtype=np.float64)
    brain = template_brain_mask()
    keep = head_mask(template).mean(axis=(0, 1)) >= 0.1
    rows = []
    for k, sub in enumerate(subjects(opts.data, opts.split)[: opts.subjects]):
        path = opts.data / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
        img = nb.as_closest_canonical(nb.load(str(path)))
        matrix = register_to_reference(img, bundle.reference, num_threads=opts.threads)[0]
        clean = np.asarray(resample_to_grid(img, bundle.reference, matrix), dtype=np.float64)
        for shift in opts.shifts:
            source = apply_shift(clean, shift, seed=k)
            field = assess_field(source, template, brain, record)
            corrected = (source * correction(field["correction"]) if field["corrected"]
                         else source)
            rows.append({
                "subject": sub, "shift": shift, "distance": field["distance"],
                "corrected": field["corrected"],
                "source": summarize(source[..., keep], clean[..., keep])["psnr"],
                "result": summarize(corrected[..., keep], clean[..., keep])["psnr"],
            })
        print(sub, {r["shift"]: (round(r["distance"], 1), round(r["result"] - r["source"], 2))
                    for r in rows if r["subject"] == sub}, flush=True)
    return {"command": " ".join(["python benchmarks/field.py", *sys.argv[1:]]),
            "split": opts.split, "prior": str(opts.prior or "shipped"),
            "threshold": record["threshold"], "rows": rows}


def markdown(report):
    lines = [__doc__.split("\n\n")[0].strip(), "", __doc__.split("\n\n")[1].strip(), "",
             f"Run: `{report['command']}` ({report['split']} subjects; threshold "
             f"{report['threshold']}, the squared Mahalanobis distance to the training "
             "images' median field that 95 % of them stay under).", "",
             "| shift | source PSNR | with the field divided out | images corrected | "
             "largest loss | distances |", "|---|---|---|---|---|---|"]
    for shift in dict.fromkeys(r["shift"] for r in report["rows"]):
        sel = [r for r in report["rows"] if r["shift"] == shift]
        gains = [r["result"] - r["source"] for r in sel]
        dist = [r["distance"] for r in sel]
        lines.append(
            f"| {shift} | {np.mean([r['source'] for r in sel]):.2f} | "
            f"{np.mean([r['result'] for r in sel]):.2f} | "
            f"{sum(r['corrected'] for r in sel)} / {len(sel)} | {min(0.0, min(gains)):+.2f} | "
            f"{min(dist):.1f}-{max(dist):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument("-n", "--subjects", type=int, default=24)
    parser.add_argument("--shifts", nargs="+", default=SHIFTS)
    parser.add_argument("--prior", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--name", default="field")
    opts = parser.parse_args(argv)
    if not opts.data.is_dir():
        print(f"{opts.data}: IXI-HH data not found (../shared/data/ixi-hh)", file=sys.stderr)
        return 66
    report = run(opts)
    from _report import write_report

    return write_report(opts.out, opts.name, report, markdown)


if __name__ == "__main__":
    sys.exit(main())
