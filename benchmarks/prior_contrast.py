#!/usr/bin/env python
"""Does the prior see contrast? Its criterion on known contrast changes of held-out images.

For each validation image ``x`` of a prior (IXI-HH, in the reference space, min-max
normalized) and each monotone contrast change ``T`` of a family that goes well beyond the
quality benchmark's shifts, the shifted image is ``u = minmax(T(x))`` and its true inverse
map ``g`` brings it back to ``x``. On the image's scoring slices (the ``--slices`` slices
holding the most head, as the default method scores them) the table reports:

(a) ``true > id``: the share of images whose criterion ranks the true inverse map above
    the identity, and the median margin (bits per pixel, positive = the truth wins). The
    criterion is the method's (:mod:`bids_app.harmonize.criterion`): the prior's likelihood
    of the mapped image plus the change-of-variables term, or, for a prior with a
    contrast-agnostic companion, the log-ratio of the two likelihoods. ``raw``: the share of
    images whose prior likes ``x`` better than ``u`` without any Jacobian (for information).
(b) in-domain bias: the power ``gamma`` that maximizes the criterion over power maps
    ``u ** gamma`` of unshifted images, uncalibrated (1 is unbiased).
(c) the PSNR (the quality benchmark's per-slice protocol, whole volume) of the image that
    the prior-only maximum-likelihood power map recovers, next to the source's.
(d) with ``--spline``: the same for the prior-only maximum-likelihood map in a flexible
    family, a monotone piecewise-linear map of 8 segments times a smooth second-order
    field (:func:`bids_app.harmonize.prior_map.fit_prior_map`, L-BFGS through the flow),
    and on unshifted images (where the identity is the answer, 100 dB).

With ``--signal`` every change acts on the signal alone (``T(s) + r``, ``s`` and ``r`` the
non-local-means split of :func:`bids_app.evaluation.shifts.split_noise`, min-max again), as
another scanner changes contrast; (a) then asks whether the prior prefers the inverse the
method looks for, whose result keeps the noise reshaped by its slope.

A prior is ``NAME=BUNDLE`` or ``NAME=BUNDLE,COMPANION`` (the ratio criterion); bundles
trained with ``--downsample 2`` or ``4`` are scored on block-averaged slices. The span term
of (a)-(c) counts what the method counts with each bundle (``--span-pixels bundle``: all
pixels for the shipped prior, the moving pixels for bundles calibrated since session 7);
``--span-pixels all`` reproduces the tables written before session 7. (d) always counts the
moving pixels. The data are the
registered volumes that ``blindharmony-train`` caches (``--cache``); validation subjects
are the ones ``--validation-fraction 0.08 --seed 0`` holds out (the shipped prior's).

Usage::

    python benchmarks/prior_contrast.py --cache WORK/ixihh_slices.npz \\
        --prior shipped=bids_app/data/prior/ixihh_cpu.pt --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Grey/white-matter range of min-max normalized IXI-HH volumes in the reference space
#: (about the 40th and 90th percentiles of the head voxels above 0.1 of 16 training images:
#: 0.25 and 0.42; the volume's maximum is a bright vessel or fat voxel).
GM_WM = (0.25, 0.42)


def _power(g):
    return (lambda x: x**g, lambda x: g * np.maximum(x, 1e-6) ** (g - 1))


def _exp(k):
    return (lambda x: np.expm1(k * x), lambda x: k * np.exp(k * x))


def _log(k):
    return (lambda x: np.log1p(k * x), lambda x: k / (1 + k * x))


def _sigmoid(a, c):
    def f(x):
        return 1 / (1 + np.exp(-a * (x - c)))

    return (f, lambda x: a * f(x) * (1 - f(x)))


def _piecewise(slope):
    """Slope ``slope`` on the grey/white-matter range, the rest rescaled to stay on [0, 1]."""
    a, b = GM_WM
    rest = (1 - slope * (b - a)) / (1 - (b - a))
    knots = np.array([0, a, b, 1.0])
    values = np.array([0, rest * a, rest * a + slope * (b - a), 1.0])
    slopes = np.diff(values) / np.diff(knots)

    def df(x):
        return slopes[np.clip(np.searchsorted(knots, x, side="right") - 1, 0, 2)]

    return (lambda x: np.interp(x, knots, values), df)


#: name -> (T, T'), monotone on [0, 1]; "bias40" is a smooth +-40 % multiplicative field.
CHANGES = {
    "exp": _exp(1.0),
    "exp3": _exp(3.0),
    "log1p(1x)": _log(1.0),
    "log1p(3x)": _log(3.0),
    "log1p(10x)": _log(10.0),
    "log1p(30x)": _log(30.0),
    "gamma0.5": _power(0.5),
    "gamma0.7": _power(0.7),
    "gamma1.5": _power(1.5),
    "gamma2.0": _power(2.0),
    "sigmoid": _sigmoid(15.0, sum(GM_WM) / 2),
    "gm-wm x0.5": _piecewise(0.5),
    "gm-wm x1.5": _piecewise(1.5),
    "bias40": None,
}


def load_validation(cache):
    """``(subjects, volumes)`` of the validation images in a slice cache."""
    from bids_app.cli.train import split_subjects

    with np.load(cache, allow_pickle=False) as npz:
        volumes, labels = npz["volumes"], list(npz["labels"])
    subjects = [label.split(":")[0] for label in labels[1:]]
    _, val = split_subjects([(s, None) for s in subjects], 0.08, 0)
    keep = sorted(subjects.index(s) for s, _ in val)
    return [subjects[i] for i in keep], volumes[keep]


def load_prior(spec, device="cpu", span_pixels="bundle"):
    """A prior of ``--prior`` and its criterion's span convention (``"bundle"``: the one
    the method uses with that bundle, ``FlowIntensityParams.span_pixels`` as resolved)."""
    from bids_app.flow.bundle import load_bundle

    name, _, paths = spec.partition("=")
    target, _, companion = paths.partition(",")
    bundle = load_bundle(target, device=device)
    other = load_bundle(companion, device=device).flow if companion else None
    factor = int(bundle.preprocessing.get("downsample", 1))
    span = span_pixels
    if span == "bundle":
        from bids_app.harmonize.methods import resolve_params

        span = resolve_params(bundle, "flow-intensity")[1].span_pixels
    return {"name": name, "flow": bundle.flow, "companion": other, "factor": factor,
            "span_pixels": span,
            "bundle": Path(target).name, "companion_bundle": Path(companion).name or None}


def shifted(v, change, seed, split=None):
    """``(u, g, g', field)``: the shifted volume and its true inverse map (callables on
    arrays).

    For ``bias40`` the map varies in space: ``g`` and ``g'`` then take the field's slices
    too (``g(u, f)``). With ``split`` ``(signal, residual)`` of ``v``
    (:func:`bids_app.evaluation.shifts.split_noise`; ``--signal``) the change acts on the
    signal and the residual is added back unchanged, as
    :func:`bids_app.evaluation.shifts.signal_domain` does; ``g`` is then the inverse the
    method looks for (of the change and the final rescaling), which gives ``v`` back up to
    the residual reshaped by its slope.
    """
    from bids_app.evaluation.shifts import bias_field

    base = v if split is None else split[0]
    if change == "bias40":
        field = bias_field(v.shape, strength=0.4, seed=seed)
        top = float((base * field).max())
        u, g, dg = base * field / top, (lambda w, f: w * top / f), (lambda w, f: top / f)
    else:
        field = None
        f, df = CHANGES[change]
        t0, t1 = f(0.0), f(1.0)
        u = (f(base) - t0) / (t1 - t0)
        grid = np.linspace(0.0, 1.0, 8193)
        values = (f(grid) - t0) / (t1 - t0)

        def g(w, _=None):
            return np.interp(w, values, grid)

        def dg(w, _=None):
            return (t1 - t0) / np.maximum(df(g(w)), 1e-12)

    if split is None:
        return u, g, dg, field
    y = np.clip(u + split[1], 0.0, None)
    scale = float(y.max())
    return (y / scale, lambda w, f=None: g(w * scale, f),
            lambda w, f=None: dg(w * scale, f) * scale, field)


def image_scores(prior, v, scoring, opts, seed, split=None):
    """One validation image under one prior: every row's numbers (``split``: the signal
    shifts of ``--signal``, :func:`shifted`)."""
    import torch

    from bids_app.evaluation.metrics import minmax, summarize
    from bids_app.harmonize.criterion import criterion, to_bits_per_dim
    from bids_app.harmonize.intensity import golden_section
    from bids_app.preprocess.slices import block_mean, volume_to_slices

    flow, companion, factor = prior["flow"], prior["companion"], prior["factor"]

    def stack(volume):
        return block_mean(volume_to_slices(volume)[scoring].astype(np.float64), factor)

    def score(us, xs, log_slope):
        t = [torch.as_tensor(a, dtype=torch.float32) for a in (us, xs, log_slope)]
        return float(criterion(flow, *t, companion=companion,
                               span_pixels=prior["span_pixels"]).sum())

    def bits(nats):
        return float(to_bits_per_dim(nats, flow)) / len(scoring)

    def best_power(us):
        def loss(log_gamma):
            gamma = float(np.exp(log_gamma))
            slope = np.log(gamma) + (gamma - 1) * np.log(np.maximum(us, 1e-6))
            return -score(us, us**gamma, slope)

        log_gamma, _ = golden_section(loss, np.log(0.25), np.log(4.0), opts.evaluations)
        return float(np.exp(log_gamma))

    def spline_psnr(volume):
        from bids_app.harmonize.prior_map import field_terms, field_volume, fit_prior_map
        from bids_app.preprocess.intensity_maps import apply_global_map

        terms = field_terms(volume.shape, scoring)
        terms = torch.from_numpy(block_mean(terms.numpy().reshape(-1, 1, *terms.shape[-2:]),
                                            factor).reshape(len(terms), len(scoring), 1,
                                                            *stack(volume).shape[-2:]))
        fit = fit_prior_map(flow, torch.as_tensor(stack(volume), dtype=torch.float32), terms,
                            iterations=opts.spline_iterations)
        field = field_volume(fit["phi"], volume.shape)
        mapped = apply_global_map(volume, fit["values"], 1.0) * field
        return summarize(minmax(mapped), v)["psnr"]

    xs = stack(v)
    out = {"in_domain_gamma": best_power(xs), "changes": {}}
    if opts.spline and companion is None:
        out["in_domain_psnr_spline"] = spline_psnr(v)
    raw_x = bits(score(xs, xs, np.zeros_like(xs))) if companion is None else None
    for change in opts.changes:
        u, g, dg, field = shifted(v, change, seed, split)
        us = stack(u)
        fs = stack(field) if field is not None else None
        truth = g(us, fs)
        log_slope = np.log(dg(us, fs))
        identity = score(us, us, np.zeros_like(us))
        row = {"margin": bits(score(us, truth, log_slope) - identity)}
        if companion is None:
            row["raw_margin"] = raw_x - bits(identity)
        row["psnr_source"] = summarize(u, v)["psnr"]
        if opts.search:
            gamma = best_power(us)
            row["gamma"] = gamma
            row["psnr_map"] = summarize(minmax(u**gamma), v)["psnr"]
        if opts.spline and companion is None:
            row["psnr_spline"] = spline_psnr(u)
        out["changes"][change] = row
    return out


def run(opts):
    import torch

    from bids_app.evaluation.metrics import minmax
    from bids_app.evaluation.shifts import split_noise
    from bids_app.preprocess.slices import scoring_slice_indices
    from bids_app.preprocess.slices import normalize_slices

    torch.set_num_threads(opts.threads)
    subjects, volumes = load_validation(opts.cache)
    if opts.n:
        subjects, volumes = subjects[: opts.n], volumes[: opts.n]
    priors = [load_prior(spec, span_pixels=opts.span_pixels) for spec in opts.prior]
    results = {p["name"]: {} for p in priors}
    started = time.time()
    for index, (subject, volume) in enumerate(zip(subjects, volumes)):
        v = minmax(volume)
        slices, _, _, valid = normalize_slices(v)
        scoring = scoring_slice_indices(slices, valid, opts.slices)
        split = split_noise(v) if opts.signal else None
        for prior in priors:
            results[prior["name"]][subject] = image_scores(prior, v, scoring, opts, index,
                                                           split)
        print(f"{subject} done ({time.time() - started:.0f} s)", file=sys.stderr)
    return subjects, priors, results, time.time() - started


def summarize_results(subjects, priors, results, changes):
    rows = []
    for prior in priors:
        per = results[prior["name"]]
        gammas = [per[s]["in_domain_gamma"] for s in subjects]
        summary = {"prior": prior["name"], "bundle": prior["bundle"],
                   "companion": prior["companion_bundle"],
                   "criterion": ("ratio" if prior["companion"] is not None
                                 else f"jacobian, span over {prior['span_pixels']} pixels"),
                   "in_domain_gamma_median": float(np.median(gammas)),
                   "in_domain_gamma": gammas, "changes": {}}
        if "in_domain_psnr_spline" in per[subjects[0]]:
            summary["in_domain_psnr_spline"] = float(np.mean(
                [per[s]["in_domain_psnr_spline"] for s in subjects]))
        for change in changes:
            cells = [per[s]["changes"][change] for s in subjects]
            margins = np.array([c["margin"] for c in cells])
            entry = {
                "true_over_identity": float((margins > 0).mean()),
                "median_margin": float(np.median(margins)),
                "psnr_source": float(np.mean([c["psnr_source"] for c in cells])),
            }
            if "gamma" in cells[0]:
                entry["psnr_map"] = float(np.mean([c["psnr_map"] for c in cells]))
                entry["gamma_median"] = float(np.median([c["gamma"] for c in cells]))
            if "psnr_spline" in cells[0]:
                entry["psnr_spline"] = float(np.mean([c["psnr_spline"] for c in cells]))
            if "raw_margin" in cells[0]:
                raw = np.array([c["raw_margin"] for c in cells])
                entry["raw_x_preferred"] = float((raw > 0).mean())
                entry["raw_median_margin"] = float(np.median(raw))
            summary["changes"][change] = entry
        rows.append(summary)
    return rows


def write_markdown(rows, subjects, opts, seconds):
    lines = [
        "# Does the prior see contrast?",
        "",
        "`benchmarks/prior_contrast.py` (protocol in its docstring and in docs/prior.md): "
        f"{len(subjects)} validation images of the shipped prior's split "
        f"({', '.join(subjects)}), {opts.slices} scoring slices each, power maps searched "
        f"with {opts.evaluations} evaluations on [0.25, 4]. {seconds:.0f} s on "
        f"{opts.threads} thread(s), {platform.processor() or platform.machine()}."
        + (" Signal shifts (`--signal`): each change acts on the non-local-means signal "
           "and the noise is added back unchanged; the true inverse gives the image back "
           "only up to that noise reshaped by its slope." if getattr(opts, "signal", False)
           else ""),
        "",
        "Command: `python benchmarks/prior_contrast.py "
        + " ".join(_quote(a) for a in (opts.argv or [])) + "`.",
        "",
        "Columns: **true > id** share of images whose criterion ranks the true inverse map "
        "above the identity (median margin, bits/pixel; positive = truth wins); **raw x** "
        "share whose prior likes the unshifted image better than the shifted one, no "
        "Jacobian (median margin); **gamma** median ML power of the prior alone; **PSNR** "
        "of the image that power recovers, against the source's (dB).",
        "",
    ]
    for row in rows:
        lines += [
            f"## {row['prior']} ({row['criterion']} criterion: `{row['bundle']}`"
            + (f" / `{row['companion']}`" if row["companion"] else "") + ")",
            "",
            f"(b) In-domain bias: the criterion's best power on unshifted images, median "
            f"{row['in_domain_gamma_median']:.3f} (range "
            f"{min(row['in_domain_gamma']):.3f}-{max(row['in_domain_gamma']):.3f}; 1 is "
            "unbiased).",
            "",
        ]
        spline = "in_domain_psnr_spline" in row
        if spline:
            lines += [f"(d) The prior-only ML map of the spline and field family on unshifted "
                      f"images: {row['in_domain_psnr_spline']:.1f} dB (100 = the identity).",
                      ""]
        lines += [
            "| change | true > id | margin | raw x | raw margin | gamma | PSNR source | "
            "PSNR ML map |" + (" PSNR ML spline+field |" if spline else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if spline else ""),
        ]
        for change, c in row["changes"].items():
            raw = (f"{100 * c['raw_x_preferred']:.0f} % | {c['raw_median_margin']:+.4f}"
                   if "raw_x_preferred" in c else "- | -")
            search = (f"{c['gamma_median']:.3f} | {c['psnr_source']:.1f} | {c['psnr_map']:.1f}"
                      if "gamma_median" in c else f"- | {c['psnr_source']:.1f} | -")
            lines.append(f"| {change} | {100 * c['true_over_identity']:.0f} % | "
                         f"{c['median_margin']:+.4f} | {raw} | {search} |"
                         + (f" {c['psnr_spline']:.1f} |" if spline else ""))
        lines.append("")
    return "\n".join(lines)


def _quote(arg):
    import shlex

    return shlex.quote(str(arg))


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--cache", type=Path, required=True,
                        help="blindharmony-train's registered-slice cache (.npz)")
    parser.add_argument("--prior", nargs="+", required=True, metavar="NAME=BUNDLE[,COMPANION]")
    parser.add_argument("--changes", nargs="+", default=list(CHANGES), choices=list(CHANGES))
    parser.add_argument("--slices", type=int, default=24, help="scoring slices per image")
    parser.add_argument("--evaluations", type=int, default=12,
                        help="golden-section evaluations of the power search")
    parser.add_argument("-n", type=int, default=0, help="first N validation images only")
    parser.add_argument("--no-search", dest="search", action="store_false",
                        help="skip (c), the power search on every shifted image (the costly "
                             "part: (a) and (b) only)")
    parser.add_argument("--spline", action="store_true",
                        help="also (d): the prior-only ML map of the spline and field family")
    parser.add_argument("--spline-iterations", type=int, default=20,
                        help="L-BFGS iterations of (d)")
    parser.add_argument("--span-pixels", choices=["bundle", "counted", "all"],
                        default="bundle",
                        help="pixels of the change of variables' span term: the ones above "
                             "the background's zeros (counted), all of them (all: the "
                             "criterion of the tables before session 7), or what the method "
                             "uses with each bundle (bundle: all for the shipped prior)")
    parser.add_argument("--signal", action="store_true",
                        help="apply every change to the non-local-means signal and add the "
                             "noise back unchanged, as another scanner would "
                             "(bids_app.evaluation.shifts.signal_domain)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--name", default="prior_contrast")
    return parser


def main(argv=None):
    opts = get_parser().parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    if not opts.cache.is_file():
        print(f"{opts.cache}: no such slice cache", file=sys.stderr)
        return 66
    subjects, priors, results, seconds = run(opts)
    rows = summarize_results(subjects, priors, results, opts.changes)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{opts.name}.json").write_text(json.dumps(
        {"subjects": subjects, "rows": rows, "per_image": results, "seconds": seconds,
         "slices": opts.slices, "evaluations": opts.evaluations}, indent=1))
    (opts.out / f"{opts.name}.md").write_text(write_markdown(rows, subjects, opts, seconds))
    print(f"wrote {opts.out / opts.name}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
