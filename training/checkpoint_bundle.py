#!/usr/bin/env python
"""An evaluation bundle from a training checkpoint's latest weights.

``blindharmony-train`` writes the bundle of its best validation step at the end of each run;
the contrast tables of a prior in training (``benchmarks/prior_contrast.py``) are measured on
the weights of a given step instead. This wraps a checkpoint's weights in the shipped
bundle's reference space (the mean slices ``x0`` block-averaged to the checkpoint's grid,
``preprocessing.downsample`` set to match) with the shipped bundle's harmonization record:
use it for benchmarks that measure what they need, not to harmonize.

Usage::

    python training/checkpoint_bundle.py CHECKPOINT OUT_BUNDLE
"""

import argparse

import torch

from bids_app.flow.bundle import load_bundle
from bids_app.flow.model import SliceFlow
from bids_app.preprocess.slices import downsample_slices


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    opts = parser.parse_args(argv)
    bundle = load_bundle()
    state = torch.load(opts.checkpoint, map_location="cpu", weights_only=True)
    flow = SliceFlow(state["flow_config"])
    flow.load_state_dict(state["state_dict"])
    flow.eval()
    factor = bundle.x0.shape[-2] // int(state["flow_config"]["shape"][0])
    bundle.flow = flow
    bundle.x0 = torch.from_numpy(downsample_slices(bundle.x0.numpy(), factor))
    bundle.preprocessing = {**bundle.preprocessing, "downsample": factor}
    bundle.name = str(opts.checkpoint)
    bundle.training = {"checkpoint": str(opts.checkpoint), "step": state["train_state"]["step"]}
    bundle.save(opts.out)
    print(f"{opts.out}: step {state['train_state']['step']}, downsample {factor}")


if __name__ == "__main__":
    main()
