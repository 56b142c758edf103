#!/usr/bin/env python
"""Can a prior judge brain-only slices? The calibration's own check on brain-masked images.

``calibrate_bundle`` records a ``stripped`` power estimate for a prior only if, on the
validation volumes times the template's brain mask, its estimates stay off the search's edge
and follow a known power shift of the same images
(:func:`bids_app.harmonize.calibration.stripped_estimate`). This runs that check alone on
a bundle (e.g. a checkpoint's, ``training/checkpoint_bundle.py``), on the validation
subjects of the registered-slice cache, and prints the fit and the problems (none: the prior
passes). About 3 minutes on one thread for the 8 mm priors.

Usage::

    python training/check_brain_estimates.py BUNDLE.pt --cache WORK/ixihh_slices.npz
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None):
    from prior_contrast import load_validation

    from bids_app.flow.bundle import load_bundle
    from bids_app.harmonize.calibration import stripped_estimate
    from bids_app.harmonize.methods import resolve_params
    from bids_app.preprocess.masks import template_brain_mask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    _, volumes = load_validation(opts.cache)
    brain = template_brain_mask()
    masked = [np.asarray(v) * brain for v in volumes]
    bundle = load_bundle(opts.bundle)
    scoring = resolve_params(bundle, "flow-intensity")[1].scoring_slices
    fit, problems = stripped_estimate(bundle.flow, masked, scoring)
    print(json.dumps({"fit": fit, "problems": problems}, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
