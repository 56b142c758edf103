#!/usr/bin/env python
"""Quality benchmark: the paper's Table 1 protocol on held-out IXI-HH test subjects.

Each test image (never used to train the prior) is shifted with Exp, Log, Gamma 0.7,
Gamma 1.5 (min-max, transform, min-max again) and with a smooth multiplicative bias field
plus gamma 0.8; the identity "shift" checks that an in-domain image comes back unchanged.
By default also with the shifts of :data:`bids_app.evaluation.shifts.EXTRA_SHIFTS` (a
sigmoid contrast, a compression and an expansion of the grey/white-matter range, a +-40 %
bias field alone, a slight blur with gamma 0.8). Every method is scored on the same images
with the same code against the unshifted image: per axial slice (RAS), both min-max
normalized, PSNR and SSIM with data range 1, on slices with head in them; slice-to-slice
striping; and the tissue fractions (CSF, grey and white matter) of one fixed multi-Otsu
segmentation inside the template's brain mask on the reference grid
(:mod:`bids_app.evaluation.tissue`), against the unshifted image's.

Methods: the shifted source itself, histogram matching to the target population (mean
foreground quantiles of training subjects), the classical baselines of ``--baselines``
(Nyul; N4 bias correction then Nyul trained on N4-corrected training images; low-frequency
replacement), and BlindHarmony through the real app (``blindharmony ... participant``) with
each ``--method``.

Usage::

    python benchmarks/quality.py                  # real app, writes docs/benchmarks/
    python benchmarks/quality.py --fast -n 3      # library calls, for development

The N4-corrected training images' Nyul scale is cached in ``--cache`` (N4 on 40 training
images takes minutes); the cache file's name holds a digest of the training subjects and
the N4 and Nyul settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bids_app.evaluation.baselines import (  # noqa: E402
    N4_SETTINGS, NYUL_PERCENTILES, histogram_match, low_frequency_harmonize, n4_correct,
    nyul_available, nyul_load, nyul_save, nyul_standardize, nyul_train, population_quantiles)
from bids_app.evaluation.metrics import striping, summarize, white_matter_mask  # noqa: E402
from bids_app.evaluation.shifts import ALL_SHIFTS, EXTRA_SHIFTS, apply_shift  # noqa: E402
from bids_app.evaluation.tissue import TISSUES, fraction_errors, tissue_fractions  # noqa: E402
from bids_app.interfaces.harmonize import sidecar_key  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ixi-hh"


BASELINES = ["nyul", "n4-nyul", "low-frequency"]


def _ras(path):
    return nb.as_closest_canonical(nb.load(str(path)))


def _t1w(data_dir, sub):
    return _ras(data_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")


def shift_label(shift):
    """The BIDS ``acq-`` label of a shift: its letters and digits (``gamma0.7`` -> ``gamma07``)."""
    return "".join(c for c in shift if c.isalnum())


def make_shifted_dataset(subjects, shifts, data_dir, out_dir):
    """A BIDS dataset with one ``acq-<shift>`` T1w per subject and shift."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset_description.json").write_text(json.dumps(
        {"Name": "IXI-HH test subjects with simulated scanner shifts", "BIDSVersion": "1.10.0",
         "DatasetType": "raw", "License": "CC BY-SA 3.0"}))
    for sub in subjects:
        img = nb.load(str(data_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"))
        data = img.get_fdata(dtype=np.float32)
        anat = out_dir / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        for shift in shifts:
            seed = int("".join(c for c in sub if c.isdigit()) or 0)  # stable across runs
            shifted = apply_shift(data, shift, seed=seed,
                                  voxel_size=img.header.get_zooms()[:3]) * 1000.0
            nb.save(nb.Nifti1Image(shifted, img.affine),
                    str(anat / f"sub-{sub}_acq-{shift_label(shift)}_T1w.nii.gz"))
    return out_dir


def parse_method(method):
    """``(app method, parameter overrides, app options)`` of a benchmark method.

    ``flow-intensity[:MODEL]`` forces ``--intensity-model MODEL`` (ablation);
    ``flow-intensity:bias-field=MODE`` passes ``--bias-field MODE``;
    ``paper[:beta1=VALUE]`` passes ``--beta1 VALUE`` (a number, or ``auto``).
    """
    name, _, variant = method.partition(":")
    if not variant:
        return name, {}, ["--method", name]
    if name == "flow-intensity" and variant.startswith("bias-field="):
        value = variant.partition("=")[2]
        return name, {"bias_field": value}, ["--method", name, "--bias-field", value]
    if name == "paper" and variant.startswith("beta1="):
        value = variant.partition("=")[2]
        # as the command line types them: "auto" is the switch, a number a beta1 fixed
        params = ({"auto_beta1": True} if value == "auto"
                  else {"beta1": float(value), "auto_beta1": False})
        return name, params, ["--method", name, "--beta1", value]
    return name, {"selection": variant}, ["--method", name, "--intensity-model", variant]


def run_app(bids_dir, out_dir, work_dir, method, subjects, nprocs, threads=2, prior=None):
    app = [shutil.which("blindharmony")] if shutil.which("blindharmony") else [
        sys.executable, "-m", "bids_app"]
    cmd = [*app, str(bids_dir), str(out_dir),
           "participant", "--participant-label", *subjects, *parse_method(method)[2],
           "--skip-bids-validation", "-w", str(work_dir), "--nprocs", str(nprocs),
           "--omp-nthreads", str(threads), *(["--prior", str(prior)] if prior else [])]
    started = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.time() - started


def fast_harmonize(bundle, native, shifted_img, method, matrix):
    """The app's library path without nipype (for development)."""
    from bids_app.harmonize.volume import harmonize_volume
    from bids_app.preprocess.native import to_native
    from bids_app.preprocess.registration import resample_to_grid

    ref_vol = resample_to_grid(shifted_img, bundle.reference, matrix)
    name, params, _ = parse_method(method)
    _, result = harmonize_volume(ref_vol, bundle, method=name, progress=False, params=params)
    out = to_native(shifted_img, result["lut"], result["low"], result["high"], result["valid"],
                    matrix, bundle.reference.affine, result["global_map"])
    return np.asanyarray(out.dataobj), {**result["params"], "Decision": {
        sidecar_key(k): v for k, v in result["decision"].items()}}


def n4_nyul_model(data_dir, train, cache_dir, threads=1):
    """Nyul's standard scale learnt from N4-corrected training images (cached on disk).

    Each training image is corrected with :func:`bids_app.evaluation.baselines.n4_correct`
    (:data:`~bids_app.evaluation.baselines.N4_SETTINGS`), then
    :func:`~bids_app.evaluation.baselines.nyul_train` fits the scale. The scale is written
    to ``cache_dir`` under a name that digests the data folder, the subjects and the
    settings, and read back on the next run.
    """
    key = json.dumps({"data": str(Path(data_dir).resolve()), "subjects": list(train),
                      "n4": N4_SETTINGS, "nyul": NYUL_PERCENTILES.tolist(), "version": 1},
                     sort_keys=True)
    path = Path(cache_dir) / f"n4-nyul-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if path.is_file():
        print(f"n4-nyul: Nyul scale of N4-corrected training images from {path}", flush=True)
        return nyul_load(path)
    started = time.time()
    corrected = []
    for sub in train:
        img = _t1w(data_dir, sub)
        corrected.append(n4_correct(img.get_fdata(dtype=np.float32), **N4_SETTINGS,
                                    voxel_size=img.header.get_zooms()[:3], num_threads=threads))
    normalizer = nyul_train(corrected)
    path.parent.mkdir(parents=True, exist_ok=True)
    nyul_save(normalizer, path)
    print(f"n4-nyul: N4 on {len(train)} training images in {time.time() - started:.0f} s, "
          f"cached in {path}", flush=True)
    return normalizer


def _on_grid(data, img, grid, matrix):
    """A native-space array (the geometry of ``img``) on the reference grid."""
    from bids_app.preprocess.registration import resample_to_grid

    return resample_to_grid(nb.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine),
                            grid, matrix)


def _chosen(record):
    """What the method chose for an image (a sidecar's ``Harmonization`` record): the
    default's map, or the automatic beta1."""
    decision = record.get("Decision") or {}
    if record.get("AutoBeta1"):
        return f"beta1 {decision.get('Beta1', record.get('Beta1'))}"
    return decision.get("Selected")


def validation_subjects(data, test):
    """The prior's validation subjects: ``blindharmony-train --exclude-label TEST
    --validation-fraction 0.08 --seed 0`` draws them (docs/data-split.md)."""
    from bids_app.cli.train import collect_images, split_subjects

    _, validation = split_subjects(collect_images(data, exclude=test), 0.08, 0)
    return sorted({s for s, _ in validation})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("-n", "--subjects", type=int, default=6, help="test subjects to use")
    parser.add_argument("--split", choices=["test", "validation"], default="test",
                        help="subjects scored: the test split (never tuned on, the default) or "
                        "the prior's validation subjects (for development; Nyul and "
                        "histogram matching are then trained on 40 subjects outside both)")
    parser.add_argument("--shifts", nargs="+", default=ALL_SHIFTS + EXTRA_SHIFTS,
                        help="shifts of bids_app.evaluation.shifts (default: ALL_SHIFTS and "
                        "EXTRA_SHIFTS); NAME@signal applies NAME to the denoised signal and "
                        "adds the noise back unchanged, as on another scanner")
    parser.add_argument("--methods", nargs="+", default=["flow-intensity", "paper"],
                        help="app methods; flow-intensity:power or flow-intensity:quantile "
                        "force that --intensity-model (ablation); paper:beta1=VALUE passes "
                        "--beta1 VALUE (a number or auto)")
    parser.add_argument("--baselines", nargs="*", default=BASELINES, choices=BASELINES,
                        help="classical baselines besides histogram matching (always scored); "
                        "n4-nyul: N4 bias correction, then Nyul trained on N4-corrected "
                        "training images")
    parser.add_argument("--prior", type=Path, default=None,
                        help="prior bundle of the app's methods (default: the shipped prior)")
    parser.add_argument("--fast", action="store_true", help="library calls instead of the app")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of registration, N4, the app (--omp-nthreads) and torch")
    parser.add_argument("--cache", type=Path, default=ROOT / "work" / "quality-cache",
                        help="folder of the cached Nyul scale of N4-corrected training images")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--name", default="quality")
    opts = parser.parse_args(argv)

    if not opts.data.is_dir():
        print(f"{opts.data}: IXI-HH data not found (../shared/data/ixi-hh)", file=sys.stderr)
        return 66
    split = json.loads((ROOT / "benchmarks" / "ixihh_split.json").read_text())
    test = split["test"][: opts.subjects]
    train = split["train_and_validation"][:40]
    if opts.split == "validation":
        held = validation_subjects(opts.data, split["test"])
        test = held[: opts.subjects]
        train = [s for s in split["train_and_validation"] if s not in held][:40]
    if opts.fast:
        import torch

        torch.set_num_threads(opts.threads)
    train_volumes = [_t1w(opts.data, s).get_fdata() for s in train]
    population = population_quantiles(train_volumes)
    nyul = nyul_train(train_volumes) if nyul_available() and "nyul" in opts.baselines else None
    del train_volumes
    n4_nyul = None
    if nyul_available() and "n4-nyul" in opts.baselines:
        n4_nyul = n4_nyul_model(opts.data, train, opts.cache, opts.threads)
    if not nyul_available() and {"nyul", "n4-nyul"} & set(opts.baselines):
        print("intensity-normalization not installed (pip install '.[benchmarks]'): "
              "Nyul and N4 + Nyul are not scored", file=sys.stderr)
    from bids_app.flow.bundle import load_bundle
    from bids_app.preprocess.registration import register_affine
    from bids_app.preprocess.slices import slices_to_volume

    lf_bundle = load_bundle(opts.prior)
    template = slices_to_volume(lf_bundle.x0.numpy())
    grid = lf_bundle.reference
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bh-quality-"))
    try:
        shifted_dir = make_shifted_dataset(test, opts.shifts, opts.data, tmp / "bids")
        outputs, seconds, selected, target_striping = {}, {}, {}, []
        baseline_seconds, clean_fractions = {}, {}
        # each unshifted image's registration: the fast mode's, and the one that puts every
        # method's output of that subject on the reference grid for the tissue fractions
        matrices = {s: register_affine(_t1w(opts.data, s), grid, num_threads=opts.threads)
                    for s in test}
        if opts.fast:
            bundle = load_bundle(opts.prior)
        else:
            for method in opts.methods:
                out = tmp / f"out-{method}"
                seconds[method] = run_app(shifted_dir, out, tmp / f"work-{method}", method, test,
                                          opts.nprocs, opts.threads, opts.prior)
                outputs[method] = out
        for sub in test:
            clean_img = _t1w(opts.data, sub)
            clean = clean_img.get_fdata()
            wm = white_matter_mask(clean)
            target_striping.append(striping(clean, wm))
            reference_fractions = tissue_fractions(_on_grid(clean, clean_img, grid,
                                                            matrices[sub]))
            clean_fractions[sub] = reference_fractions
            for shift in opts.shifts:
                name = f"sub-{sub}_acq-{shift_label(shift)}"
                src_img = _ras(shifted_dir / f"sub-{sub}" / "anat" / f"{name}_T1w.nii.gz")
                src = src_img.get_fdata()
                images = {"source": src, "histogram-matching": histogram_match(src, population)}
                if nyul is not None:
                    images["nyul"] = nyul_standardize(src, nyul)
                if n4_nyul is not None:
                    started = time.time()
                    corrected = n4_correct(src, **N4_SETTINGS, num_threads=opts.threads,
                                           voxel_size=src_img.header.get_zooms()[:3])
                    images["n4-nyul"] = nyul_standardize(corrected, n4_nyul)
                    baseline_seconds["n4-nyul"] = (baseline_seconds.get("n4-nyul", 0)
                                                   + time.time() - started)
                if "low-frequency" in opts.baselines:
                    lf_matrix = register_affine(src_img, grid, num_threads=opts.threads)
                    images["low-frequency"] = low_frequency_harmonize(
                        src_img, lf_matrix, template, grid.affine)
                for method in opts.methods:
                    if opts.fast:
                        started = time.time()
                        out, params = fast_harmonize(bundle, src_img, src_img, method,
                                                     matrices[sub])
                        seconds[method] = seconds.get(method, 0) + time.time() - started
                        chosen = _chosen({sidecar_key(k): v for k, v in params.items()})
                    else:
                        out = _ras(outputs[method] / f"sub-{sub}" / "anat" /
                                   f"{name}_desc-harmonized_T1w.nii.gz").get_fdata()
                        sidecar = json.loads((outputs[method] / f"sub-{sub}" / "anat" /
                                              f"{name}_desc-harmonized_T1w.json").read_text())
                        chosen = _chosen(sidecar.get("Harmonization", {}))
                    if chosen:
                        selected.setdefault(method, []).append(f"{sub} {shift}: {chosen}")
                    images[f"blindharmony:{method}"] = out
                scores = {}
                for m, img in images.items():
                    fractions = tissue_fractions(_on_grid(img, src_img, grid, matrices[sub]))
                    scores[m] = {**summarize(img, clean), "striping": striping(img, wm),
                                 "tissue": fractions,
                                 "tissue_error": fraction_errors(fractions, reference_fractions)}
                for method, s in scores.items():
                    rows.append({"subject": sub, "shift": shift, "method": method, **s})
                print(sub, shift, {m: round(s["psnr"], 2) for m, s in scores.items()}, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    table = summarize_rows(rows, opts.shifts)
    per_image = len(test) * len(opts.shifts)
    command = " ".join(["python benchmarks/quality.py", *(argv if argv is not None
                                                          else sys.argv[1:])])
    report = {"command": command, "subjects": test, "shifts": opts.shifts,
              "mode": "fast" if opts.fast else "app", "split": opts.split,
              "seconds_per_image": {m: round(s / per_image, 1) for m, s in seconds.items()},
              "baseline_seconds_per_image": {m: round(s / per_image, 1)
                                             for m, s in baseline_seconds.items()},
              "threads": opts.threads, "n4": N4_SETTINGS,
              "selected": selected, "rows": rows, "table": table,
              "target_striping": round(float(np.mean(target_striping)), 3),
              "target_tissue": {t: round(float(np.mean([f[t] for f in clean_fractions.values()])),
                                         4) for t in TISSUES},
              "subject_tissue": clean_fractions}
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{opts.name}.json").write_text(json.dumps(report, indent=1))
    (opts.out / f"{opts.name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def summarize_rows(rows, shifts):
    table = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        for shift in shifts:
            sel = [r for r in rows if r["method"] == method and r["shift"] == shift]
            psnr = np.array([r["psnr"] for r in sel])
            ssim = np.array([r["ssim"] for r in sel])
            stripes = np.array([r["striping"] for r in sel])
            table.setdefault(method, {})[shift] = {
                "psnr": round(float(psnr.mean()), 2), "psnr_sd": round(float(psnr.std()), 2),
                "ssim": round(float(ssim.mean()), 4), "ssim_sd": round(float(ssim.std()), 4),
                "striping": round(float(stripes.mean()), 3),
            }
            if all("tissue_error" in r for r in sel):
                table[method][shift]["tissue_error"] = {
                    t: round(float(np.mean([r["tissue_error"][t] for r in sel])), 2)
                    for t in TISSUES}
    return table


PROTOCOL = """# Quality: the paper's Table 1 protocol on held-out IXI-HH subjects

`python benchmarks/quality.py` runs the real app (`blindharmony ... participant`, on 2 CPU
cores; `--fast`: the same library calls without nipype); the command of each table is
given below it. Each IXI-HH test
subject (never used for training or calibration) is shifted with
`bids_app/evaluation/shifts.py` (per the paper: min-max, transform, min-max again:
`exp(x)`, `log(1 + x)`, `x**0.7`, `x**1.5`; and a smooth random multiplicative polynomial
field of +-35 % followed by `x**0.8`; beyond the paper's monotone curves, `EXTRA_SHIFTS`: a
sigmoid contrast `1 / (1 + exp(-15 (x - 0.335)))` (`sigmoid`, steepest between grey and
white matter), the grey/white-matter range [0.25, 0.42] compressed to half its contrast
(`gmwm0.5`) or expanded by 1.5 (`gmwm1.5`), the rest rescaled linearly, a smooth field of
+-40 % alone (`bias40`, B1-like: not an intensity map) and `x**0.8` then a Gaussian blur
of 1.5 mm FWHM (`blur+gamma0.8`, a slightly lower resolution)), harmonized, and scored
against the unshifted image per axial slice (RAS), both min-max normalized, PSNR and SSIM
with data range 1, on slices with at least 10 % head. Histogram matching maps the source's
foreground quantiles onto the mean quantiles of 40 training subjects (with the app's
population quantile map, `bids_app.harmonize.quantiles.quantile_map`); Nyul
standardization (`intensity-normalization`) is trained on the same 40; `n4-nyul`, what a
user would otherwise run, is N4 bias-field correction (SimpleITK's N4ITK with the defaults
of ANTs' R and Python N4: shrink factor 4, a 200 mm B-spline mesh refined over 4 levels of
50 iterations, convergence 1e-7, fitted in the image's Otsu head mask) followed by Nyul
trained on the N4-corrected 40 (N4 also takes off the target scanner's own shading:
on IXI-HH it changes unshifted images by a field of about 0.5 at the edge of the head to
1.0 at its centre, and every method is scored against the target images as they are, so
this row measures what N4 + Nyul does to a harmonization toward this target, not N4
itself); low-frequency is an SSIMH-style replacement of the low
spatial frequencies (periods of 80 mm and more) of each registered slice by those of the
prior's mean training slice. `blindharmony:flow-intensity` is the default (`--intensity-model
auto`); `:quantile` forces the population quantile map alone (ablation); `paper` is
Algorithm 1. Our Exp and Log are milder than the paper's (its source PSNR is about 22 dB
for them). What analysis sees is in the last table: the tissue fractions (CSF, grey and
white matter) of one fixed segmentation, for each method against the unshifted image.

"""


def markdown(report):
    shifts = report["shifts"]
    lines = [PROTOCOL, f"Run: `{report.get('command', 'python benchmarks/quality.py')}`.", "",
             f"Subjects: {', '.join(report['subjects'])} "
             f"(IXI-HH {report.get('split', 'test')} split); mode: "
             f"{report['mode']}. Mean ± SD over subjects of the per-slice mean; PSNR in dB "
             "(identical slices capped at 100 dB).", "",
             "| method | " + " | ".join(shifts) + " |",
             "|---|" + "---|" * len(shifts)]
    for method, per in report["table"].items():
        cells = [f"{per[s]['psnr']:.2f} ± {per[s]['psnr_sd']:.2f} / {per[s]['ssim']:.4f}"
                 for s in shifts]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    mode = "app" if report["mode"] == "app" else "library calls"
    lines += ["", f"Cells: PSNR / SSIM. Seconds per image ({mode}, "
              f"{report.get('threads', 2)} threads): " + json.dumps(report["seconds_per_image"])
              + ("; baselines: " + json.dumps(report["baseline_seconds_per_image"])
                 if report.get("baseline_seconds_per_image") else "")]
    if "target_striping" in report:
        lines += ["", "## Slice-to-slice striping", "",
                  "`bids_app.evaluation.metrics.striping`: mean absolute difference of "
                  "neighbouring axial slices' mean white-matter intensity, in percent of the "
                  "volume's white-matter mean (white matter: `white_matter_mask` of the "
                  "unshifted image, the same mask for every method). The unshifted images "
                  f"score {report['target_striping']:.3f} % (anatomy); a method that "
                  "harmonizes slices independently adds to it.", "",
                  "| method | " + " | ".join(shifts) + " |", "|---|" + "---|" * len(shifts)]
        for method, per in report["table"].items():
            lines.append(f"| {method} | "
                         + " | ".join(f"{per[s]['striping']:.3f}" for s in shifts) + " |")
    if "target_tissue" in report:
        target = report["target_tissue"]
        lines += ["", "## Tissue fractions", "",
                  "`bids_app.evaluation.tissue`: every image (each method's native-space "
                  "output, and the unshifted image) is resampled onto the prior's 2 mm "
                  "reference grid with the unshifted image's registration (the same voxels "
                  "for every method of a subject) and segmented inside the template's brain "
                  "mask into three classes by multi-Otsu thresholds, ordered by intensity "
                  "(CSF < grey matter < white matter). Cells: mean over subjects of the "
                  "absolute error of each fraction against the unshifted image's, in "
                  "percentage points, CSF / GM / WM. The unshifted images: CSF "
                  f"{100 * target['csf']:.1f} %, GM {100 * target['gm']:.1f} %, WM "
                  f"{100 * target['wm']:.1f} % of the mask.", "",
                  "| method | " + " | ".join(shifts) + " |", "|---|" + "---|" * len(shifts)]
        for method, per in report["table"].items():
            cells = [" / ".join(f"{per[s]['tissue_error'][t]:.1f}" for t in TISSUES)
                     if "tissue_error" in per[s] else "-" for s in shifts]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
