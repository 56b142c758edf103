#!/usr/bin/env python
"""Scan-rescan stability: a harmonizer must never make two scans of one head less alike.

For IXI-HH test subjects (``benchmarks/ixihh_split.json``; never tuned on), pairs of one
head that differ only by what a rescan changes are built in the native space:

- ``noise``: two independent Rician noise realizations (sigma 2 % of the head's 99th
  percentile) on the same image;
- ``motion``: the image and a copy moved rigidly (3 degrees about a random axis, 2 mm) and
  resampled (trilinear) on the same grid;
- ``fov``: the image and a copy cropped to another field of view (12 % of the axial slices
  off the bottom, 4 % off the top, 5 % off one side);
- ``scale``: the image and a copy 4 % brighter (another receiver gain).

Each pair is also skull-stripped, each scan with its own registration (as a brain-extraction
tool strips each scan on its own: :func:`bids_app.evaluation.shifts.skull_strip`, dilated by
one voxel). Every scan goes through the app's library path: registration
(:func:`~bids_app.preprocess.registration.register_to_reference`, which registers a
skull-stripped scan again to the template's brain), resampling onto the prior's grid, then
each method. Agreement of a pair is measured in the reference space, inside the template's
head (whole-head pairs) or its eroded brain (skull-stripped pairs): NCC (Pearson) and PSNR
of the two volumes each divided by its 99.5th percentile there. The table gives, per kind and
method, the mean over subjects and the worst change against the source pair.

The baselines are histogram matching to the population and Nyul standardization, both
trained on the prior's training volumes (the registered-slice cache ``--cache``), on the
brain alone for the skull-stripped pairs (what a user with skull-stripped data would train).

Usage::

    python benchmarks/stability.py --cache WORK/ixihh_slices.npz -n 6
    python benchmarks/stability.py -n 3     # no cache: the source and the default only
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

DATA = ROOT.parent / "shared" / "data" / "ixi-hh"
KINDS = ("noise", "motion", "fov", "scale")


def rician(data, sigma, rng):
    return np.sqrt((data + rng.normal(0, sigma, data.shape)) ** 2
                   + rng.normal(0, sigma, data.shape) ** 2).astype(np.float32)


def rigid(img, rng, *, degrees=3.0, shift_mm=2.0):
    """``img`` moved rigidly about its centre and resampled on its own grid (trilinear)."""
    import nibabel as nb
    from scipy.ndimage import affine_transform
    from scipy.spatial.transform import Rotation

    axis = rng.normal(size=3)
    rotation = Rotation.from_rotvec(np.deg2rad(degrees) * axis / np.linalg.norm(axis))
    move = np.eye(4)
    move[:3, :3] = rotation.as_matrix()
    direction = rng.normal(size=3)
    centre = img.affine[:3, :3] @ (np.array(img.shape[:3]) / 2) + img.affine[:3, 3]
    move[:3, 3] = centre - move[:3, :3] @ centre + shift_mm * direction / np.linalg.norm(
        direction)
    # pull: voxel of the output -> RAS -> inverse motion -> voxel of the input
    pull = np.linalg.inv(img.affine) @ np.linalg.inv(move) @ img.affine
    data = affine_transform(np.asarray(img.dataobj, dtype=np.float32), pull[:3, :3],
                            pull[:3, 3], order=1)
    return nb.Nifti1Image(data, img.affine)


def crop(img):
    """Another field of view: slices off the bottom, the top and one side (RAS image)."""
    nx, _, nz = img.shape[:3]
    return img.slicer[int(0.05 * nx):, :, int(0.12 * nz): nz - int(0.04 * nz)]


def scan_pairs(native, rng):
    """``{kind: (scan1, scan2)}`` of nibabel images (float32) of one head."""
    import nibabel as nb

    data = np.asarray(native.dataobj, dtype=np.float32)
    sigma = 0.02 * float(np.percentile(data[data > 0.1 * data.max()], 99))
    base = nb.Nifti1Image(data, native.affine)
    return {
        "noise": tuple(nb.Nifti1Image(rician(data, sigma, rng), native.affine)
                       for _ in range(2)),
        "motion": (base, rigid(base, rng)),
        "fov": (base, crop(base)),
        "scale": (base, nb.Nifti1Image(1.04 * data, native.affine)),
    }


def agreement(a, b, mask):
    """NCC and PSNR (dB) of two reference-space volumes inside ``mask``."""
    x = a[mask] / max(float(np.percentile(a[mask], 99.5)), 1e-12)
    y = b[mask] / max(float(np.percentile(b[mask], 99.5)), 1e-12)
    ncc = float(np.corrcoef(x, y)[0, 1])
    mse = float(np.mean((x - y) ** 2))
    return ncc, float(10 * np.log10(1.0 / mse)) if mse > 0 else 100.0


class Baselines:
    """Histogram matching and Nyul, trained on whole-head or brain-only training volumes."""

    def __init__(self, volumes, brain):
        from bids_app.evaluation.baselines import nyul_available, nyul_train, population_quantiles

        self.models = {}
        for stripped in (False, True):
            train = [v * brain for v in volumes] if stripped else list(volumes)
            self.models[stripped] = (population_quantiles(train),
                                     nyul_train(train) if nyul_available() else None)

    def run(self, volume, stripped):
        from bids_app.evaluation.baselines import histogram_match, nyul_standardize

        population, nyul = self.models[stripped]
        out = {"histogram-matching": histogram_match(volume, population)}
        if nyul is not None:
            out["nyul"] = nyul_standardize(volume, nyul)
        return out


class NoBaselines:
    """Without the slice cache: the app's default alone (the baselines' rows are absent)."""

    def run(self, volume, stripped):
        return {}


def harmonized(scan, bundle, baselines, threads):
    """``(stripped, {method: reference-space volume})`` of one scan."""
    from bids_app.harmonize.volume import harmonize_volume
    from bids_app.preprocess.registration import register_to_reference, resample_to_grid

    matrix, stripped = register_to_reference(scan, bundle.reference, num_threads=threads)
    volume = np.asarray(resample_to_grid(scan, bundle.reference, matrix), dtype=np.float32)
    out, result = harmonize_volume(volume, bundle, progress=False)
    return stripped, {"source": volume, "default": out, **baselines.run(volume, stripped)}, \
        result


def run(opts):
    import nibabel as nb
    import torch

    from bids_app.cli.train import collect_images
    from bids_app.evaluation.shifts import skull_strip
    from bids_app.flow.bundle import load_bundle
    from bids_app.harmonize.quantiles import reference_mask
    from bids_app.preprocess.masks import inner_brain, template_brain_mask
    from bids_app.preprocess.registration import register_affine

    torch.set_num_threads(opts.threads)
    bundle = load_bundle(opts.prior)
    brain = template_brain_mask()
    masks = {False: reference_mask(bundle.reference), True: inner_brain(brain)}
    baselines = NoBaselines()
    if opts.cache is not None:
        with np.load(opts.cache, allow_pickle=False) as npz:
            labels = [label.split(":")[0] for label in list(npz["labels"])[1:]]
            train = set(bundle.training["train_subjects"])
            volumes = npz["volumes"][[i for i, s in enumerate(labels) if s in train]]
        baselines = Baselines(volumes, brain)
    test = json.loads((ROOT / "benchmarks" / "ixihh_split.json").read_text())["test"]
    images = collect_images(DATA, participant_label=test[: opts.n])
    rows, flags = [], []
    started = time.time()
    for index, (subject, path) in enumerate(images):
        rng = np.random.default_rng(index)
        native = nb.as_closest_canonical(nb.load(path))
        for kind, pair in scan_pairs(native, rng).items():
            for strip in (False, True):
                scans = pair
                if strip:
                    scans = tuple(skull_strip(s, register_affine(
                        s, bundle.reference, num_threads=opts.threads), dilation=1)
                        for s in pair)
                (found1, out1, res1), (found2, out2, res2) = (
                    harmonized(s, bundle, baselines, opts.threads) for s in scans)
                flags.append({"subject": subject, "kind": kind, "stripped": strip,
                              "detected": [found1, found2],
                              "selected": [res1["decision"].get("selected"),
                                           res2["decision"].get("selected")],
                              "out_of_domain": [res1["metrics"]["OutOfDomain"],
                                                res2["metrics"]["OutOfDomain"]]})
                for method in out1:
                    ncc, psnr = agreement(out1[method], out2[method], masks[strip])
                    rows.append({"subject": subject, "kind": kind, "stripped": strip,
                                 "method": method, "ncc": ncc, "psnr": psnr})
        print(f"{subject} done ({time.time() - started:.0f} s)", file=sys.stderr)
    return rows, flags, time.time() - started


def summarize(rows):
    """Per (kind, stripped, method): mean NCC and PSNR, and the worst change vs the source."""
    source = {(r["subject"], r["kind"], r["stripped"]): r for r in rows
              if r["method"] == "source"}
    table = {}
    for r in rows:
        key = (r["kind"], r["stripped"], r["method"])
        ref = source[(r["subject"], r["kind"], r["stripped"])]
        cell = table.setdefault(key, {"ncc": [], "psnr": [], "d_ncc": [], "d_psnr": []})
        cell["ncc"].append(r["ncc"])
        cell["psnr"].append(r["psnr"])
        cell["d_ncc"].append(r["ncc"] - ref["ncc"])
        cell["d_psnr"].append(r["psnr"] - ref["psnr"])
    return table


def write_markdown(table, flags, subjects, seconds, opts):
    methods = sorted({k[2] for k in table}, key=lambda m: (m != "source", m != "default", m))
    lines = [
        "# Scan-rescan stability",
        "",
        f"`benchmarks/stability.py` (protocol in its docstring): {len(subjects)} IXI-HH test "
        f"subjects ({', '.join(subjects)}), {seconds:.0f} s on {opts.threads} thread(s). "
        "Cells: mean NCC / mean PSNR (dB) of the pair in the reference space (head, or "
        "eroded brain for skull-stripped pairs); in brackets the worst change of NCC "
        "against the source pair over the subjects (acceptance: at least -0.002).",
        "",
        "| pair | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for kind in KINDS:
        for strip in (False, True):
            cells = []
            for method in methods:
                c = table.get((kind, strip, method))
                if c is None:
                    cells.append("-")
                    continue
                worst = "" if method == "source" else f" [{min(c['d_ncc']):+.4f}]"
                cells.append(f"{np.mean(c['ncc']):.4f} / {np.mean(c['psnr']):.1f}{worst}")
            lines.append(f"| {kind}{', skull-stripped' if strip else ''} | "
                         + " | ".join(cells) + " |")
    detected = [f for f in flags if f["stripped"]]
    missed = sum(not all(f["detected"]) for f in detected)
    false = sum(any(f["detected"]) for f in flags if not f["stripped"])
    ood = sum(any(f["out_of_domain"]) for f in flags)
    lines += ["", f"Skull-stripped scans detected: {2 * len(detected) - missed} of "
              f"{2 * len(detected)} (pairs with a miss: {missed}); whole-head scans taken for "
              f"skull-stripped: {false} pair(s); pairs with a scan flagged out of domain: "
              f"{ood}.", ""]
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--cache", type=Path, default=None,
                        help="blindharmony-train's registered-slice cache of the prior (the "
                        "baselines' training volumes); without it only the source and the "
                        "app's default are scored")
    parser.add_argument("--prior", default=None, help="prior bundle (default: the shipped one)")
    parser.add_argument("-n", type=int, default=6, help="first N test subjects")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--name", default="stability")
    return parser


def main(argv=None):
    opts = get_parser().parse_args(argv)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    if not DATA.is_dir() or (opts.cache is not None and not opts.cache.is_file()):
        print(f"needs {DATA} and the slice cache {opts.cache}", file=sys.stderr)
        return 66
    rows, flags, seconds = run(opts)
    table = summarize(rows)
    subjects = sorted({r["subject"] for r in rows})
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{opts.name}.json").write_text(json.dumps(
        {"rows": rows, "flags": flags, "seconds": seconds}, indent=1))
    (opts.out / f"{opts.name}.md").write_text(
        write_markdown(table, flags, subjects, seconds, opts))
    print(f"wrote {opts.out / opts.name}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
