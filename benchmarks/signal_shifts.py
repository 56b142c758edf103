#!/usr/bin/env python
"""Shifts of the image against shifts of the signal: what a global map can recover, and
what the prior estimates.

Every shift of ``bids_app/evaluation/shifts.py`` acts on the image, noise included, so a
change ``T`` of ``x + n`` leaves noise whose level follows ``T'``; another scanner changes the
contrast of the signal and adds its noise after. ``NAME@signal`` simulates that
(:func:`~bids_app.evaluation.shifts.signal_domain`). On the prior's validation subjects
(never tuned on by this script: it fits nothing), for each monotone shift in both forms:

1. **The ceiling of a global map**: the PSNR (the quality benchmark's per-slice protocol,
   against the unshifted image) of the best monotone intensity map of the shifted native
   image onto the unshifted one, fitted with the truth (least squares, isotonic regression
   over 1024 intensity bins: SciPy's ``isotonic_regression``). Under an image shift it is the
   exact inverse (100 dB where the map is invertible); under a signal shift no global map
   gives the image back, because the inverse map reshapes the noise.
2. **The prior's own estimate**: each prior's raw power estimate ``gamma_hat`` (before its
   calibrated ``gamma_bias`` and ``gamma_slope``) and the default's selected candidate, for
   the registered image of the slice cache shifted both ways (the library path,
   :func:`~bids_app.harmonize.volume.harmonize_volume`). A power shift ``x ** p`` is
   undone by ``1 / p``; the estimate of the unshifted image is the prior's bias.

Usage::

    python benchmarks/signal_shifts.py --cache WORK/ixihh_slices.npz \\
        --prior shipped=bids_app/data/prior/ixihh_cpu.pt \\
                8mm=training/checkpoints/ixihh_8mm_target.pt -n 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "ixi-hh"
#: Monotone shifts scored as image and as signal shifts.
CEILING_SHIFTS = ["exp", "log", "gamma0.7", "gamma1.5", "sigmoid", "gmwm0.5", "gmwm1.5"]
#: Shifts whose prior estimates are reported (powers have a known inverse; Exp none).
ESTIMATE_SHIFTS = ["identity", "gamma0.7", "gamma1.5", "exp"]


def best_monotone(shifted, clean, bins=1024):
    """The least-squares monotone map of ``shifted`` (in [0, 1]) onto ``clean``, applied."""
    from scipy.optimize import isotonic_regression

    index = np.clip(np.rint(shifted * (bins - 1)).astype(int), 0, bins - 1).ravel()
    weight = np.bincount(index, minlength=bins).astype(np.float64)
    total = np.bincount(index, weights=clean.ravel(), minlength=bins)
    used = weight > 0
    fit = isotonic_regression(total[used] / weight[used], weights=weight[used]).x
    lut = np.interp(np.arange(bins), np.nonzero(used)[0], fit)
    return lut[index].reshape(shifted.shape)


def ceilings(subjects, data):
    import nibabel as nb

    from bids_app.evaluation.metrics import minmax, summarize
    from bids_app.evaluation.shifts import SIGNAL, apply_shift

    rows = []
    for sub in subjects:
        img = nb.as_closest_canonical(nb.load(str(data / f"sub-{sub}" / "anat" /
                                                  f"sub-{sub}_T1w.nii.gz")))
        clean = minmax(img.get_fdata())
        for shift in CEILING_SHIFTS:
            for form, name in (("image", shift), ("signal", shift + SIGNAL)):
                shifted = apply_shift(clean, name).astype(np.float64)
                rows.append({"subject": sub, "shift": shift, "form": form,
                             "source": summarize(shifted, clean)["psnr"],
                             "ceiling": summarize(best_monotone(shifted, clean), clean)["psnr"]})
        print(sub, "ceilings done", flush=True)
    return rows


def estimates(subjects, cache, priors, data, test):
    import torch

    from bids_app.cli.train import collect_images
    from bids_app.evaluation.shifts import SIGNAL, apply_shift
    from bids_app.flow.bundle import load_bundle
    from bids_app.harmonize.volume import harmonize_volume

    order = [s.replace("sub-", "") for s, _ in collect_images(data, exclude=test)]
    volumes = np.load(cache, mmap_mode="r")["volumes"]
    if len(volumes) != len(order):
        raise SystemExit(f"{cache}: {len(volumes)} volumes, the split has {len(order)} images")
    torch.set_num_threads(1)
    rows = []
    for label, path in priors.items():
        bundle = load_bundle(path)
        for sub in subjects:
            volume = np.asarray(volumes[order.index(sub)], np.float32)
            for shift in ESTIMATE_SHIFTS:
                forms = [("image", shift)]
                if shift != "identity":
                    forms.append(("signal", shift + SIGNAL))
                for form, name in forms:
                    _, result = harmonize_volume(apply_shift(volume, name), bundle,
                                                 progress=False)
                    decision = result["decision"]
                    rows.append({"prior": label, "subject": sub, "shift": shift, "form": form,
                                 "gamma_hat": decision.get("gamma_hat"),
                                 "selected": decision.get("selected")})
            print(label, sub, "estimates done", flush=True)
    return rows


def markdown(report):
    lines = ["# Shifts of the image against shifts of the signal", "",
             "`benchmarks/signal_shifts.py` (protocol in its docstring). Command: "
             f"`{report['command']}`. Subjects: {', '.join(report['subjects'])} (the prior's "
             f"validation split); {report['seconds']:.0f} s on one thread.", "",
             "## What the best global monotone map recovers (PSNR, dB, mean over subjects)",
             "", "| shift | source, image shift | ceiling, image shift | source, signal shift "
             "| ceiling, signal shift |", "|---|---|---|---|---|"]
    for shift in CEILING_SHIFTS:
        cells = []
        for form in ("image", "signal"):
            rows = [r for r in report["ceilings"] if r["shift"] == shift and r["form"] == form]
            cells += [f"{np.mean([r['source'] for r in rows]):.2f}",
                      f"{np.mean([r['ceiling'] for r in rows]):.2f}"]
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    lines += ["", "## The prior's raw power estimate (median, min-max over subjects) and the "
              "default's choice", "",
              "A power shift `x ** p` is undone by `1 / p` (gamma 0.7: 1.43, gamma 1.5: 0.67); "
              "the unshifted image's estimate is the prior's own bias (what its calibrated "
              "`gamma_bias` divides out).", "",
              "| prior | shift | image shift: gamma_hat | selected | signal shift: gamma_hat "
              "| selected |", "|---|---|---|---|---|---|"]
    for label in dict.fromkeys(r["prior"] for r in report["estimates"]):
        for shift in ESTIMATE_SHIFTS:
            cells = []
            for form in ("image", "signal"):
                rows = [r for r in report["estimates"] if r["prior"] == label
                        and r["shift"] == shift and r["form"] == form]
                if not rows:
                    cells += ["-", "-"]
                    continue
                g = np.array([r["gamma_hat"] for r in rows], dtype=np.float64)
                chosen = {}
                for r in rows:
                    chosen[r["selected"]] = chosen.get(r["selected"], 0) + 1
                cells += [f"{np.median(g):.3f} ({g.min():.3f}-{g.max():.3f})",
                          ", ".join(f"{k} {v}" for k, v in sorted(chosen.items()))]
            lines.append(f"| {label} | {shift} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, required=True,
                        help="registered-slice cache of blindharmony-train (ixihh_slices.npz)")
    parser.add_argument("--prior", nargs="+", default=[], metavar="LABEL=BUNDLE",
                        help="priors whose estimates are reported")
    parser.add_argument("-n", "--subjects", type=int, default=11)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--name", default="signal_shifts")
    opts = parser.parse_args(argv)
    if not opts.data.is_dir():
        print(f"{opts.data}: IXI-HH data not found (../shared/data/ixi-hh)", file=sys.stderr)
        return 66
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import validation_subjects

    split = json.loads((ROOT / "benchmarks" / "ixihh_split.json").read_text())
    subjects = validation_subjects(opts.data, split["test"])[: opts.subjects]
    priors = dict(p.split("=", 1) for p in opts.prior)
    started = time.time()
    report = {"command": " ".join(["python benchmarks/signal_shifts.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "subjects": subjects, "ceilings": ceilings(subjects, opts.data),
              "estimates": estimates(subjects, opts.cache, priors, opts.data, split["test"])}
    report["seconds"] = time.time() - started
    from _report import write_report

    return write_report(opts.out, opts.name, report, markdown)


if __name__ == "__main__":
    sys.exit(main())
