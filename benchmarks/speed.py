#!/usr/bin/env python
"""Speed benchmark: time and peak memory of every stage of the app and of the baselines.

On held-out IXI-HH test subjects (2 mm) and, when ``../shared/data/siemens-trio`` is
present, on a 1 mm Siemens MPRAGE, each stage of the app's library path (load, affine
registration, resampling to the prior's slice grid, per-slice normalization and
reassembly, prior loading, ``harmonize_volume`` with ``flow-intensity`` and ``paper``,
native space) and each baseline (histogram matching, Nyul, low-frequency replacement) runs
in a fresh Python process on a fixed number of threads; that process reports the stage's
wall time and its peak resident memory (``getrusage`` maxrss, which covers torch's
allocations). Every method's total per volume is also given as a ratio to histogram
matching measured in the same run. Then the whole app (``blindharmony ... participant``)
runs end to end on one subject, and each flow preset's training step (forward, backward
and Adam on a batch of 16 slices of 96 x 112) is timed.

Usage::

    python benchmarks/speed.py                      # writes docs/benchmarks/speed.{md,json}
    python benchmarks/speed.py -n 1 --no-e2e --presets tiny --out /tmp/speed
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "ixi-hh"
SIEMENS = ROOT.parent / "shared" / "data" / "siemens-trio"
METHODS = ("flow-intensity", "paper")
PRESETS = ("tiny", "cpu", "paper")

#: Stages run per volume, in order (each in its own process).
VOLUME_STAGES = (
    "load", "register", "resample", "slices", "prior",
    "harmonize:flow-intensity", "native:flow-intensity",
    "harmonize:paper", "native:paper",
    "hm", "nyul", "lowfreq",
)

#: The stages that make up each method's total per volume (file to harmonized native image).
METHOD_STAGES = {
    "histogram matching": ("load", "hm"),
    "Nyul": ("load", "nyul"),
    "low-frequency replacement": ("load", "register", "lowfreq"),
    "BlindHarmony flow-intensity": ("load", "register", "resample", "prior",
                                    "harmonize:flow-intensity", "native:flow-intensity"),
    "BlindHarmony paper": ("load", "register", "resample", "prior", "harmonize:paper",
                           "native:paper"),
}

#: Stages shorter than this are repeated (up to 5 runs, median) in their process.
REPEAT_BELOW_S = 0.5


# --------------------------------------------------------------------------------------
# Workers: one stage in this process
# --------------------------------------------------------------------------------------


def set_threads(threads):
    """Environment for a worker process with ``threads`` compute threads."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "NUMEXPR_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("NIPYPE_NO_ET", "1")
    return env


def _rss_mb():
    """Current resident set size (MiB), from /proc (Linux); None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _timed(fn, repeat=True):
    """Run ``fn``; short ones again (median of up to 5). Returns (seconds, cpu, result)."""
    times, cpus = [], []
    while True:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if not repeat or times[0] >= REPEAT_BELOW_S or len(times) >= 5:
            break
    return float(np.median(times)), float(np.median(cpus)), result


def _nifti(path):
    import nibabel as nb

    return nb.load(str(path))


def _save_nifti(img, path):
    import nibabel as nb

    nb.save(nb.Nifti1Image(np.asanyarray(img.dataobj, dtype=np.float32), img.affine,
                           img.header), str(path))


def _torch_threads(threads):
    import torch

    torch.set_num_threads(threads)
    return torch


def stage_load(vol, shared, opts):
    from bids_app.preprocess.image import load_t1w

    path = Path((vol / "source.txt").read_text())
    seconds, cpu, img = _timed(lambda: load_t1w(path), repeat=False)
    _save_nifti(img, vol / "native.nii")
    return {"seconds": seconds, "cpu_seconds": cpu, "shape": list(img.shape),
            "zooms": [round(float(z), 3) for z in img.header.get_zooms()[:3]]}


def stage_register(vol, shared, opts):
    from bids_app.preprocess.registration import register_affine

    native, reference = _nifti(vol / "native.nii"), _nifti(shared / "reference.nii")
    seconds, cpu, matrix = _timed(lambda: register_affine(
        native, reference, num_threads=opts.threads), repeat=False)
    np.save(vol / "matrix.npy", matrix)
    return {"seconds": seconds, "cpu_seconds": cpu}


def stage_resample(vol, shared, opts):
    from bids_app.preprocess.registration import resample_to_grid

    native, reference = _nifti(vol / "native.nii"), _nifti(shared / "reference.nii")
    matrix = np.load(vol / "matrix.npy")
    seconds, cpu, grid = _timed(lambda: resample_to_grid(native, reference, matrix))
    np.save(vol / "grid.npy", grid)
    return {"seconds": seconds, "cpu_seconds": cpu}


def stage_slices(vol, shared, opts):
    from bids_app.preprocess.slices import normalize_slices, reassemble

    grid = np.load(vol / "grid.npy")
    seconds, cpu, (slices, low, high, _) = _timed(lambda: normalize_slices(grid))
    seconds2, cpu2, _ = _timed(lambda: reassemble(slices, low, high))
    return {"seconds": seconds, "cpu_seconds": cpu, "normalize_seconds": seconds,
            "reassemble_seconds": seconds2, "reassemble_cpu_seconds": cpu2}


def stage_prior(vol, shared, opts):
    _torch_threads(opts.threads)
    from bids_app.flow.bundle import load_bundle

    seconds, cpu, _ = _timed(lambda: load_bundle(opts.prior), repeat=False)
    return {"seconds": seconds, "cpu_seconds": cpu}


def stage_harmonize(vol, shared, opts, method):
    _torch_threads(opts.threads)
    from bids_app.flow.bundle import load_bundle
    from bids_app.harmonize.volume import harmonize_volume

    bundle = load_bundle(opts.prior)
    grid = np.load(vol / "grid.npy")
    params = json.loads(opts.params) if opts.params else None
    seconds, cpu, (_, result) = _timed(lambda: harmonize_volume(
        grid, bundle, method=method, params=params, progress=False), repeat=False)
    keep = {k: result[k] for k in ("lut", "low", "high", "valid", "global_map")}
    (vol / f"result-{method}.pkl").write_bytes(pickle.dumps(keep))
    return {"seconds": seconds, "cpu_seconds": cpu,
            "harmonized_slices": result["metrics"].get("HarmonizedSlices")}


def stage_native(vol, shared, opts, method):
    from bids_app.preprocess.native import to_native

    native, reference = _nifti(vol / "native.nii"), _nifti(shared / "reference.nii")
    native = type(native)(np.asanyarray(native.dataobj), native.affine, native.header)
    matrix = np.load(vol / "matrix.npy")
    r = pickle.loads((vol / f"result-{method}.pkl").read_bytes())
    seconds, cpu, _ = _timed(lambda: to_native(
        native, r["lut"], r["low"], r["high"], r["valid"], matrix, reference.affine,
        r["global_map"]))
    return {"seconds": seconds, "cpu_seconds": cpu}


def stage_hm(vol, shared, opts):
    from bids_app.evaluation.baselines import histogram_match

    data = np.asanyarray(_nifti(vol / "native.nii").dataobj, dtype=np.float32)
    population = np.load(shared / "population.npy")
    seconds, cpu, _ = _timed(lambda: histogram_match(data, population))
    return {"seconds": seconds, "cpu_seconds": cpu}


def stage_nyul(vol, shared, opts):
    from bids_app.evaluation.baselines import nyul_available, nyul_standardize

    if not nyul_available() or not (shared / "nyul.pkl").exists():
        return {"skipped": "intensity-normalization is not installed"}
    data = np.asanyarray(_nifti(vol / "native.nii").dataobj, dtype=np.float32)
    normalizer = pickle.loads((shared / "nyul.pkl").read_bytes())
    seconds, cpu, _ = _timed(lambda: nyul_standardize(data, normalizer))
    return {"seconds": seconds, "cpu_seconds": cpu}


def stage_lowfreq(vol, shared, opts):
    from bids_app.evaluation.baselines import low_frequency_harmonize

    native = _nifti(vol / "native.nii")
    native = type(native)(np.asanyarray(native.dataobj), native.affine, native.header)
    matrix = np.load(vol / "matrix.npy")
    template, grid_affine = np.load(shared / "template.npy"), np.load(shared / "grid_affine.npy")
    seconds, cpu, _ = _timed(lambda: low_frequency_harmonize(native, matrix, template,
                                                             grid_affine))
    return {"seconds": seconds, "cpu_seconds": cpu}


def stage_fit_baselines(vol, shared, opts):
    """Target-domain statistics of the baselines, from the training subjects (once)."""
    from bids_app.evaluation.baselines import nyul_available, nyul_train, population_quantiles
    from bids_app.preprocess.image import load_t1w

    paths = [Path(p) for p in json.loads((shared / "train.json").read_text())]
    wall = time.perf_counter()
    volumes = [np.asanyarray(load_t1w(p).dataobj, dtype=np.float32) for p in paths]
    out = {"subjects": len(paths), "load_seconds": time.perf_counter() - wall}
    seconds, _, population = _timed(lambda: population_quantiles(volumes), repeat=False)
    np.save(shared / "population.npy", population)
    out["histogram_matching_seconds"] = seconds
    if nyul_available():
        seconds, _, normalizer = _timed(lambda: nyul_train(volumes), repeat=False)
        (shared / "nyul.pkl").write_bytes(pickle.dumps(normalizer))
        out["nyul_seconds"] = seconds
    out["seconds"] = out["load_seconds"] + seconds
    return out


def stage_train(vol, shared, opts, preset):
    """Seconds per training step (forward, backward, clip, Adam) of a fresh flow."""
    torch = _torch_threads(opts.threads)
    from bids_app.flow.model import SliceFlow, count_parameters, dequantize, flow_config
    from bids_app.flow.training import make_optimizer

    template = np.load(shared / "template.npy")  # (X, Y, Z) mean training slices
    pool = torch.from_numpy(np.ascontiguousarray(template.transpose(2, 0, 1)[:, None]))
    torch.manual_seed(0)
    flow = SliceFlow(flow_config(preset, shape=tuple(pool.shape[2:])))
    optimizer, scheduler = make_optimizer(flow, lr=5e-4, steps=1000)
    generator = torch.Generator().manual_seed(0)
    flow.train()
    with torch.no_grad():  # data-dependent initialization, as training does
        flow(dequantize(pool[: min(len(pool), 64)], generator=generator))

    def step():
        index = torch.randint(0, len(pool), (opts.batch,), generator=generator)
        loss = flow.bits_per_dim(dequantize(pool[index], generator=generator)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        optimizer.step()
        scheduler.step()

    warm, steps = opts.train_steps[preset]
    for _ in range(warm):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - wall) / steps
    return {"seconds": seconds, "cpu_seconds": (time.process_time() - cpu) / steps,
            "slices_per_second": opts.batch / seconds, "warm_steps": warm,
            "timed_steps": steps, "batch": opts.batch,
            "parameters": count_parameters(flow), "shape": list(pool.shape[2:])}


#: Modules each stage imports; loaded before the resident size is read at its start.
PRELOAD = {
    "load": ("bids_app.preprocess.image",),
    "register": ("SimpleITK", "bids_app.preprocess.registration"),
    "resample": ("scipy.ndimage", "bids_app.preprocess.registration"),
    "slices": ("bids_app.preprocess.slices",),
    "prior": ("torch", "bids_app.flow.bundle"),
    "harmonize": ("torch", "bids_app.flow.bundle", "bids_app.harmonize.volume"),
    "native": ("bids_app.preprocess.native",),
    "hm": ("bids_app.evaluation.baselines",),
    "nyul": ("bids_app.evaluation.baselines", "intensity_normalization"),
    "lowfreq": ("bids_app.evaluation.baselines", "bids_app.preprocess.registration",
                "scipy.ndimage"),
    "fit-baselines": ("bids_app.evaluation.baselines", "bids_app.preprocess.image",
                      "intensity_normalization"),
    "train": ("torch", "bids_app.flow.model", "bids_app.flow.training"),
}


def run_stage(stage, vol, shared, opts):
    """Run one stage in this process; returns its measurements (with memory)."""
    name, _, arg = stage.partition(":")
    fn = {"load": stage_load, "register": stage_register, "resample": stage_resample,
          "slices": stage_slices, "prior": stage_prior, "harmonize": stage_harmonize,
          "native": stage_native, "hm": stage_hm, "nyul": stage_nyul,
          "lowfreq": stage_lowfreq, "fit-baselines": stage_fit_baselines,
          "train": stage_train}[name]
    for module in PRELOAD.get(name, ()):  # imports count in the peak, not in the rise
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    rss_before = _rss_mb()
    out = fn(vol, shared, opts, arg) if arg else fn(vol, shared, opts)
    out["peak_rss_mb"] = round(_peak_mb(), 1)
    if rss_before is not None:
        out["rss_before_mb"] = round(rss_before, 1)
    return out


# --------------------------------------------------------------------------------------
# Parent: fresh processes, the end-to-end run, the report
# --------------------------------------------------------------------------------------


def _worker_args(opts):
    args = ["--threads", str(opts.threads), "--batch", str(opts.batch),
            "--train-steps", json.dumps(opts.train_steps)]
    if opts.prior:
        args += ["--prior", str(opts.prior)]
    if opts.params:
        args += ["--params", opts.params]
    return args


LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def measure(stage, vol, shared, opts):
    """Run ``stage`` in a fresh process on ``opts.threads`` threads."""
    if opts.in_process:
        return run_stage(stage, vol, shared, opts)
    # Linux hands a process the parent's resident size as its starting maxrss (it survives
    # fork and exec), so the worker is started by a small launcher, not by this process.
    cmd = [sys.executable, "-c", LAUNCHER, sys.executable, str(Path(__file__).resolve()),
           "--worker", stage, "--vol", str(vol), "--shared", str(shared), *_worker_args(opts)]
    proc = subprocess.run(cmd, env=set_threads(opts.threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def end_to_end(path, label, opts, tmp):
    """``blindharmony BIDS OUT participant`` on one subject: wall time and peak RSS."""
    bids = tmp / f"e2e-{label}" / "bids"
    anat = bids / f"sub-{label}" / "anat"
    anat.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "speed benchmark", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    os.symlink(path, anat / f"sub-{label}_T1w.nii.gz")
    app = [shutil.which("blindharmony")] if shutil.which("blindharmony") else [
        sys.executable, "-m", "bids_app"]
    cmd = [*app, str(bids), str(bids.parent / "out"), "participant", "--participant-label",
           label, "--skip-bids-validation", "-w", str(bids.parent / "work"),
           "--nprocs", str(opts.threads), "--omp-nthreads", str(opts.threads)]
    # a fresh launcher, so that its children's maxrss is this run's alone
    launcher = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
                "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
                "stderr=subprocess.DEVNULL).returncode; "
                "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, "
                "'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    proc = subprocess.run([sys.executable, "-c", launcher, *cmd], env=set_threads(opts.threads),
                          capture_output=True, text=True, cwd=ROOT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    shown = ["blindharmony", "BIDS_DIR", "OUTPUT_DIR", *cmd[len(app) + 2:]]
    shown[shown.index("-w") + 1] = "WORK_DIR"
    return {"label": label, "command": " ".join(shown),
            **{k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}}


def machine_info(threads):
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)}


def _volumes(opts, split):
    """(label, path, kind) of the volumes to time."""
    out = [(s, opts.data / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz", "IXI-HH 2 mm")
           for s in split["test"][: opts.subjects]]
    siemens = opts.siemens / "sub-01" / "anat" / "sub-01_T1w.nii.gz" if opts.siemens else None
    if siemens is not None and siemens.is_file():
        out.append(("siemens01", siemens, "Siemens 1 mm"))
    return out


def prepare_shared(shared, opts, train_paths):
    """Reference grid, template and the training list, written once for the workers."""
    import nibabel as nb

    from bids_app.flow.bundle import load_bundle
    from bids_app.preprocess.slices import slices_to_volume

    bundle = load_bundle(opts.prior)
    nb.save(bundle.reference, str(shared / "reference.nii"))
    np.save(shared / "template.npy", slices_to_volume(bundle.x0.numpy()))
    np.save(shared / "grid_affine.npy", bundle.reference.affine)
    (shared / "train.json").write_text(json.dumps([str(p) for p in train_paths]))
    return bundle.name


def method_totals(per_volume):
    """Each method's total seconds and peak memory per volume from its stages."""
    totals = {}
    for method, stages in METHOD_STAGES.items():
        if any(per_volume.get(s, {}).get("skipped") or s not in per_volume for s in stages):
            continue
        totals[method] = {
            "seconds": sum(per_volume[s]["seconds"] for s in stages),
            "cpu_seconds": sum(per_volume[s]["cpu_seconds"] for s in stages),
            "peak_rss_mb": max(per_volume[s]["peak_rss_mb"] for s in stages),
        }
    reference = totals.get("histogram matching", {})
    for value in totals.values():
        for key in ("seconds", "cpu_seconds"):
            ratio = "ratio_to_hm" if key == "seconds" else "cpu_ratio_to_hm"
            value[ratio] = value[key] / reference[key] if reference.get(key) else None
    return totals


def time_volume(label, path, kind, tmp, shared, opts, matrix=None):
    """Every stage in ``opts.stages`` on one volume (``matrix``: skip registration)."""
    vol = tmp / f"vol-{label}"
    vol.mkdir()
    (vol / "source.txt").write_text(str(path))
    if matrix is not None:
        np.save(vol / "matrix.npy", matrix)
    stages = {}
    try:
        for stage in opts.stages:
            stages[stage] = measure(stage, vol, shared, opts)
            print(f"{label} {stage}: {stages[stage].get('seconds', 0):.3f} s, "
                  f"{stages[stage]['peak_rss_mb']:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(vol, ignore_errors=True)
    return {"label": label, "kind": kind, "stages": stages, "totals": method_totals(stages),
            "shape": stages.get("load", {}).get("shape")}


def run(opts):
    started = time.time()
    if not opts.data.is_dir():
        print(f"{opts.data}: IXI-HH data not found (expected ../shared/data/ixi-hh beside "
              "the repository; pass --data)", file=sys.stderr)
        return 66
    split = json.loads((ROOT / "benchmarks" / "ixihh_split.json").read_text())
    train = [opts.data / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz"
             for s in split["train_and_validation"][: opts.train_subjects]]
    volumes = _volumes(opts, split)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bh-speed-"))
    report = {"command": " ".join(["python", "benchmarks/speed.py", *opts.argv]),
              "machine": machine_info(opts.threads), "load_average_before": load_before,
              "volumes": [], "fit_baselines": None, "end_to_end": [], "training": {}}
    try:
        shared = tmp / "shared"
        shared.mkdir()
        report["prior"] = prepare_shared(shared, opts, train)
        print("fitting the baselines' target statistics ...", flush=True)
        report["fit_baselines"] = measure("fit-baselines", tmp, shared, opts)
        for label, path, kind in volumes:
            report["volumes"].append(time_volume(label, path, kind, tmp, shared, opts))
        if opts.e2e:
            first = {}
            for volume in volumes:  # the first volume of each kind
                first.setdefault(volume[2], volume)
            for label, path, kind in first.values():
                print(f"end to end: {label} ...", flush=True)
                report["end_to_end"].append({**end_to_end(path, label, opts, tmp),
                                             "kind": kind})
        for preset in opts.presets:
            print(f"training step: {preset} ...", flush=True)
            report["training"][preset] = measure(f"train:{preset}", tmp, shared, opts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["load_average_after"] = os.getloadavg()
    report["seconds"] = round(time.time() - started, 1)
    report["summary"] = summarize(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "speed.json").write_text(json.dumps(report, indent=1, default=float))
    (opts.out / "speed.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _mean_sd(values):
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if values.size == 0:
        return None
    return {"mean": float(values.mean()), "sd": float(values.std()), "n": int(values.size)}


def summarize(report):
    """Mean (and SD) over the volumes of each kind, per stage and per method."""
    out = {}
    for kind in dict.fromkeys(v["kind"] for v in report["volumes"]):
        vols = [v for v in report["volumes"] if v["kind"] == kind]
        stages = {}
        for stage in dict.fromkeys(s for v in vols for s in v["stages"]):
            rows = [v["stages"][stage] for v in vols if stage in v["stages"]
                    and not v["stages"][stage].get("skipped")]
            if rows:
                stages[stage] = {"seconds": _mean_sd(r["seconds"] for r in rows),
                                 "cpu_seconds": _mean_sd(r["cpu_seconds"] for r in rows),
                                 "peak_rss_mb": _mean_sd(r["peak_rss_mb"] for r in rows),
                                 "rss_before_mb": _mean_sd(r.get("rss_before_mb")
                                                           for r in rows)}
                if stage == "slices":
                    stages[stage]["reassemble_seconds"] = _mean_sd(
                        r["reassemble_seconds"] for r in rows)
        methods = {}
        for method in METHOD_STAGES:
            rows = [t[method] for t in (method_totals(v["stages"]) for v in vols)
                    if method in t]
            if rows:
                methods[method] = {k: _mean_sd(r[k] for r in rows) for k in (
                    "seconds", "ratio_to_hm", "cpu_seconds", "cpu_ratio_to_hm", "peak_rss_mb")}
        out[kind] = {"volumes": [v["label"] for v in vols], "shape": vols[0].get("shape"),
                     "stages": stages, "methods": methods}
    return out


STAGE_NAMES = {
    "load": "load (`load_t1w`)",
    "register": "registration (`register_affine`)",
    "resample": "resample to the grid (`resample_to_grid`)",
    "slices": "per-slice normalization (`normalize_slices`)",
    "prior": "load the prior (`load_bundle`)",
    "harmonize:flow-intensity": "`harmonize_volume`, flow-intensity",
    "native:flow-intensity": "native space (`to_native`), flow-intensity",
    "harmonize:paper": "`harmonize_volume`, paper",
    "native:paper": "native space (`to_native`), paper",
    "hm": "histogram matching (`histogram_match`)",
    "nyul": "Nyul (`nyul_standardize`)",
    "lowfreq": "low-frequency replacement (`low_frequency_harmonize`)",
}


def _fmt(stat, digits=2, sd=True):
    if stat is None:
        return "n/a"
    if stat["n"] > 1 and sd:
        return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _secs(stat):
    if stat is None:
        return "n/a"
    mean = stat["mean"]
    digits = 3 if mean < 0.1 else 2 if mean < 10 else 1
    return _fmt(stat, digits)


HOW = """# Speed: stages, methods, end to end, training (2 CPU threads)

`{command}` ({seconds:.0f} s in all). Each stage runs in a fresh Python process on
{threads} threads (`torch.set_num_threads`, `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, ITK's
threads) with its inputs read from disk first; it reports the stage's wall time (stages under
0.5 s: median of up to 5 runs) and the process's peak resident memory
(`getrusage` maxrss, started from a small launcher so that nothing is inherited: Python,
the imported libraries, the stage's inputs and the stage); "imports" is the resident size
after the stage's imports, before it reads its inputs. A method's total per volume is the
sum of its stages, from the file to the harmonized native image:

- histogram matching: load + `histogram_match`; Nyul: load + `nyul_standardize`
  (their target statistics, fitted once on {train} training subjects, are below);
- low-frequency replacement: load + registration + `low_frequency_harmonize`;
- BlindHarmony: load + registration + resampling + loading the prior + `harmonize_volume`
  (per-slice normalization, the method's flow optimization, reassembly and metrics) +
  `to_native`.

Its peak memory is the largest of its stages' processes. Ratios are to histogram matching
on the same volumes in the same run. CPU s is the process's CPU time in the stage, all its
threads together (wall time is at least CPU s / {threads}). When other work shares the
cores both grow: OpenMP threads (torch, ITK) that wait for a descheduled sibling spin, and
that counts as CPU time.

Machine: {cpu}, {cpus} CPUs ({threads} threads used), {memory_gb} GB; Python {python},
torch {torch}, numpy {numpy}{coretype}. Load average (1, 5, 15 min) {before} before and
{after} after the run: above {cpus}, other work was sharing the cores and every time here
is longer than on an idle machine (one run, not repeated).
"""


def markdown(report):
    m = report["machine"]
    fit = report.get("fit_baselines") or {}
    lines = [HOW.format(
        command=report["command"], seconds=report.get("seconds", 0), threads=m["threads"],
        train=fit.get("subjects", "?"), cpu=m["cpu"], cpus=m["cpus"],
        memory_gb=m["memory_gb"], python=m["python"], torch=m["torch"], numpy=m["numpy"],
        coretype=(f", OPENBLAS_CORETYPE={m['openblas_coretype']}"
                  if m.get("openblas_coretype") else ""),
        before=", ".join(f"{x:.2f}" for x in report["load_average_before"]),
        after=", ".join(f"{x:.2f}" for x in report.get("load_average_after", ())))]
    summary = report["summary"]
    kinds = list(summary)
    if kinds:
        lines += ["## Methods: total per volume", "",
                  "| method | " + " | ".join(
                      f"{k}: wall s | × HM | CPU s | × HM | peak MiB" for k in kinds) + " |",
                  "|---|" + "---|---|---|---|---|" * len(kinds)]
        for method in METHOD_STAGES:
            cells = []
            for k in kinds:
                row = summary[k]["methods"].get(method)
                cells += ([_secs(row["seconds"]), _fmt(row["ratio_to_hm"], 0, sd=False),
                           _secs(row["cpu_seconds"]), _fmt(row["cpu_ratio_to_hm"], 0, sd=False),
                           _fmt(row["peak_rss_mb"], 0, sd=False)] if row else ["n/a"] * 5)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "## Stages per volume", "",
                  "| stage | " + " | ".join(f"{k}: wall s | CPU s | imports MiB | peak MiB"
                                            for k in kinds)
                  + " |", "|---|" + "---|---|---|---|" * len(kinds)]
        for stage in STAGE_NAMES:
            cells = []
            for k in kinds:
                row = summary[k]["stages"].get(stage)
                cells += ([_secs(row["seconds"]), _secs(row["cpu_seconds"]),
                           _fmt(row["rss_before_mb"], 0, sd=False),
                           _fmt(row["peak_rss_mb"], 0, sd=False)] if row else ["n/a"] * 4)
            lines.append(f"| {STAGE_NAMES[stage]} | " + " | ".join(cells) + " |")
            if stage == "slices":
                cells = []
                for k in kinds:
                    row = summary[k]["stages"].get(stage)
                    cells += [_secs(row["reassemble_seconds"]) if row else "n/a", "", "", ""]
                lines.append("| reassembly (`reassemble`) | " + " | ".join(cells) + " |")
        lines += [""]
        for k in kinds:
            shape = summary[k]["shape"]
            lines.append(f"- {k}: {', '.join(summary[k]['volumes'])}"
                         + (f" ({' x '.join(map(str, shape))} voxels)" if shape else "")
                         + "; mean ± SD over volumes, peak: mean.")
        lines.append("")
    if fit:
        parts = [f"loading {fit['subjects']} training images {fit['load_seconds']:.1f} s",
                 f"population quantiles {fit['histogram_matching_seconds']:.2f} s"]
        if "nyul_seconds" in fit:
            parts.append(f"Nyul landmarks {fit['nyul_seconds']:.2f} s")
        else:
            parts.append("Nyul: skipped (intensity-normalization not installed)")
        lines += ["Baselines' target statistics, once: " + ", ".join(parts)
                  + f" (peak {fit['peak_rss_mb']:.0f} MiB).", ""]
    if report["end_to_end"]:
        lines += ["## The whole app, end to end", "",
                  "| volume | wall s | peak RSS MiB | exit |", "|---|---|---|---|"]
        for row in report["end_to_end"]:
            lines.append(f"| {row['kind']} ({row['label']}) | {row['seconds']:.1f} | "
                         f"{row['peak_rss_mb']:.0f} | {row['rc']} |")
        lines += ["", f"`{report['end_to_end'][0]['command']}` (default method "
                  "flow-intensity; Python start, nipype workflow, registration, "
                  "harmonization, native space, derivatives and reports); peak RSS is the "
                  "largest single process (`getrusage` of the children).", ""]
    if report["training"]:
        lines += ["## Training throughput", "",
                  "| preset | parameters | wall s / step | slices / s | CPU s / step | "
                  "peak RSS MiB |", "|---|---|---|---|---|---|"]
        for preset, row in report["training"].items():
            lines.append(f"| {preset} | {row['parameters'] / 1e6:.3g} M | {row['seconds']:.3f} "
                         f"| {row['slices_per_second']:.1f} | {row['cpu_seconds']:.3f} "
                         f"| {row['peak_rss_mb']:.0f} |")
        any_row = next(iter(report["training"].values()))
        lines += ["", f"One step: dequantize a batch of {any_row['batch']} slices of "
                  f"{' x '.join(map(str, any_row['shape']))}, bits/dim, backward, gradient "
                  "clipping, Adam and the cosine schedule (as `bids_app.flow.training`), on a "
                  "fresh flow after its data-dependent initialization; mean of "
                  + ", ".join(f"{p}: {r['timed_steps']}" for p, r in report["training"].items())
                  + " steps after "
                  + ", ".join(f"{r['warm_steps']}" for r in report["training"].values())
                  + " warm-up steps.", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--subjects", type=int, default=3, help="IXI-HH test subjects")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--siemens", type=Path, default=SIEMENS,
                        help="the 1 mm Siemens dataset (used when present)")
    parser.add_argument("--no-siemens", dest="siemens", action="store_const", const=None)
    parser.add_argument("--prior", type=Path, default=None)
    parser.add_argument("--train-subjects", type=int, default=40,
                        help="training subjects for the baselines' target statistics")
    parser.add_argument("--stages", nargs="+", default=list(VOLUME_STAGES),
                        choices=VOLUME_STAGES)
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--no-e2e", dest="e2e", action="store_false")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-steps", type=json.loads,
                        default={"tiny": [3, 10], "cpu": [2, 6], "paper": [1, 3]},
                        help='JSON: preset -> [warm-up steps, timed steps]')
    parser.add_argument("--params", default=None,
                        help="JSON hyperparameter overrides for harmonize_volume (testing)")
    parser.add_argument("--render", type=Path, metavar="SPEED_JSON",
                        help="measure nothing: rewrite speed.md and the summary of "
                             "speed.json (in --out) from a speed.json's measurements")
    parser.add_argument("--in-process", action="store_true",
                        help="no fresh processes (memory figures then mean little; tests)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--vol", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shared", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    return opts


def main(argv=None):
    opts = parse_args(argv)
    if opts.worker:
        print(json.dumps(run_stage(opts.worker, opts.vol, opts.shared, opts), default=float))
        return 0
    if opts.render:
        report = json.loads(opts.render.read_text())
        report["summary"] = summarize(report)
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "speed.json").write_text(json.dumps(report, indent=1, default=float))
        (opts.out / "speed.md").write_text(markdown(report))
        return 0
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
