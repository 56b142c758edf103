#!/usr/bin/env python
"""Automatic against fixed beta1 for Algorithm 1 (``--method paper``), per shift.

On held-out IXI-HH test subjects (registered to the prior's reference space once, from
their unshifted image) with the quality benchmark's shifts, Algorithm 1 runs with every
candidate beta1 (factors of the prior's beta1) in one batch on the 24 informative slices
the automatic choice uses (``bids_app.harmonize.beta1.choose_beta1``, the app's code path).
Each result becomes per-slice monotone maps of the source, as in the app, before the maps
are smoothed across slices (that needs every slice; the smoothing moves PSNR by under
1 dB, docs/method.md). Rows: the source, population histogram matching (as in
``quality.py``), every fixed beta1, the automatic choice among the app's candidates and
among all of them, and the oracle (the best candidate per image, which needs the truth).
PSNR / SSIM per slice against the unshifted image, both min-max normalized, on the same
slices for every row.

Usage::

    python benchmarks/beta1.py            # 5 test subjects, about 20 min; docs/benchmarks/
    python benchmarks/beta1.py -n 1 --shifts identity gamma1.5 --out /tmp/beta1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bids_app.evaluation.baselines import histogram_match, population_quantiles  # noqa: E402
from bids_app.evaluation.metrics import summarize  # noqa: E402
from bids_app.evaluation.shifts import ALL_SHIFTS, apply_shift  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ixi-hh"
FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _t1w(data, sub):
    return nb.as_closest_canonical(nb.load(str(data / f"sub-{sub}" / "anat" /
                                               f"sub-{sub}_T1w.nii.gz")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("-n", "--subjects", type=int, default=5)
    parser.add_argument("--shifts", nargs="+", default=ALL_SHIFTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    opts = parser.parse_args(argv)
    if not opts.data.is_dir():
        print(f"{opts.data}: IXI-HH data not found (../shared/data/ixi-hh)", file=sys.stderr)
        return 66

    import torch

    from bids_app.flow.bundle import load_bundle
    from bids_app.harmonize.beta1 import choose_beta1, slice_maps
    from bids_app.preprocess.intensity_maps import interp_extended
    from bids_app.harmonize.methods import LUT_KNOTS, PaperParams, resolve_params
    from bids_app.preprocess.slices import scoring_slice_indices
    from bids_app.preprocess.registration import register_affine, resample_to_grid
    from bids_app.preprocess.slices import normalize_slices, slices_to_volume

    torch.set_num_threads(opts.threads)
    split = json.loads((ROOT / "benchmarks" / "ixihh_split.json").read_text())
    test = split["test"][: opts.subjects]
    population = population_quantiles(
        [_t1w(opts.data, s).get_fdata() for s in split["train_and_validation"][:40]])
    bundle = load_bundle()
    _, params = resolve_params(bundle, "paper")
    candidates = [round(params.beta1 * f, 1) for f in FACTORS]
    app = [candidates[FACTORS.index(f)] for f in PaperParams.beta1_factors]
    settings = {"alpha": params.alpha, "beta2": params.beta2, "iterations": params.iterations}
    rows, chosen, seconds = [], {"auto (app candidates)": [], "auto (all)": []}, []
    for sub in test:
        img = _t1w(opts.data, sub)
        matrix = register_affine(img, bundle.reference, num_threads=opts.threads)
        data = img.get_fdata()
        clean = resample_to_grid(img, bundle.reference, matrix)
        for shift in opts.shifts:
            seed = int("".join(c for c in sub if c.isdigit()) or 0)  # as quality.py
            shifted = apply_shift(data, shift, seed=seed) * 1000.0
            native = {"source": shifted,
                      "histogram-matching": histogram_match(shifted, population)}
            volumes = {name: resample_to_grid(nb.Nifti1Image(v, img.affine), bundle.reference,
                                              matrix) for name, v in native.items()}
            slices, _, _, valid = normalize_slices(volumes["source"])
            scoring = scoring_slice_indices(slices, valid, params.scoring_slices)
            truth = normalize_slices(clean)[0][scoring]
            started = time.perf_counter()
            best, results, scores = choose_beta1(
                bundle.flow, torch.from_numpy(slices[scoring]), bundle.x0[scoring],
                candidates=candidates, n_knots=LUT_KNOTS, **settings)
            seconds.append(time.perf_counter() - started)
            images = {name: normalize_slices(v)[0][scoring] for name, v in volumes.items()}
            for beta1, result in zip(candidates, results):
                maps = slice_maps(slices[scoring], result.clamp(0, 1).numpy(), LUT_KNOTS)
                images[f"beta1 {beta1:g}"] = np.stack(
                    [interp_extended(s, m) for s, m in zip(slices[scoring], maps)])
            scored = {name: summarize(slices_to_volume(x), slices_to_volume(truth))
                      for name, x in images.items()}
            in_app = [candidates.index(b) for b in app]
            picks = {"auto (app candidates)": in_app[int(np.argmin([scores[i] for i in in_app]))],
                     "auto (all)": best}
            for name, index in picks.items():
                scored[name] = scored[f"beta1 {candidates[index]:g}"]
                chosen[name].append(candidates[index])
            scored["oracle (all)"] = max((scored[f"beta1 {b:g}"] for b in candidates),
                                         key=lambda s: s["psnr"])
            for name, s in scored.items():
                rows.append({"subject": sub, "shift": shift, "method": name, **s})
            print(sub, shift, {k: round(v["psnr"], 2) for k, v in scored.items()},
                  [round(s, 4) for s in scores], flush=True)

    table = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        for shift in opts.shifts:
            sel = [r for r in rows if r["method"] == method and r["shift"] == shift]
            table.setdefault(method, {})[shift] = {
                "psnr": round(float(np.mean([r["psnr"] for r in sel])), 2),
                "ssim": round(float(np.mean([r["ssim"] for r in sel])), 4)}
    report = {"subjects": test, "shifts": opts.shifts, "candidates": candidates,
              "app_candidates": app, "chosen": chosen, "rows": rows, "table": table,
              "seconds_per_image_all_candidates": round(float(np.mean(seconds)), 1)}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "beta1.json").write_text(json.dumps(report, indent=1))
    lines = [
        "# Automatic against fixed beta1 (Algorithm 1, `--method paper`)", "",
        f"`python benchmarks/beta1.py`: IXI-HH test subjects {', '.join(test)}; the 24 "
        "informative slices of each image in the prior's reference space; each candidate's "
        "result carried as per-slice monotone maps of the source (before the app's smoothing "
        "across slices). PSNR / SSIM against the unshifted image. `auto` picks the candidate "
        "under which the source is likeliest (prior + per-slice maps, change of variables); "
        "`oracle` picks the best with the truth. All candidates ran in one batch: "
        f"{report['seconds_per_image_all_candidates']} s per image on 2 cores.", "",
        "| method | " + " | ".join(opts.shifts) + " |", "|---|" + "---|" * len(opts.shifts)]
    for method, per in table.items():
        lines.append(f"| {method} | " + " | ".join(
            f"{per[s]['psnr']:.2f} / {per[s]['ssim']:.4f}" for s in opts.shifts) + " |")
    lines += ["", "Chosen beta1 per image (subject-major, shifts in column order):", ""]
    lines += [f"- {name}: {', '.join(f'{b:g}' for b in values)}"
              for name, values in chosen.items()]
    (opts.out / "beta1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
