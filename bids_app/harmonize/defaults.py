"""Default harmonization settings, recorded in every prior bundle trained by this version.

The paper's beta1 = 1000 belongs to its 144 x 176 slice grid: the step it takes is
``beta1 grad NCC = eta (|x| / |xs| xs - NCC x)`` with ``eta = beta1 / |x|^2``, and ``|x|^2``
(a sum over pixels) grows with the number of pixels, so on our 96 x 112 grid the same step
is beta1 = 1000 * 96 * 112 / (144 * 176) = 424.2
(:func:`bids_app.harmonize.paper.grid_beta1`). The earlier rule, 651, scaled with the
square root of the number of pixels and took a step 1.53 times the paper's.

``slice_sigma`` (slices) smooths Algorithm 1's per-slice intensity maps across slices
(:func:`bids_app.harmonize.intensity.smooth_slice_maps`). Measured on a validation subject
(reference space): striping 6.7 % -> 1.0 % (identity; the unshifted image has 0.6 %) and
11.2 % -> 1.9 % (Gamma 1.5), PSNR -0.4 and +0.6 dB; sigma 2 left 1.6 % and 3.0 %.

``auto_beta1`` (``--beta1 auto``) chooses beta1 per image among ``beta1_factors`` times the
prior's value (:mod:`bids_app.harmonize.beta1`); off by default: with the shipped prior it
trails the best fixed value by 0.1-0.8 dB on every shift (docs/method.md).
"""

DEFAULTS = {
    "method": "flow-intensity",
    "paper": {"alpha": 1e-3, "beta1": 424.2, "beta2": 1e-3, "iterations": 10,
              "slice_sigma": 4.0, "auto_beta1": False, "beta1_factors": (0.5, 1.0, 2.0),
              "scoring_slices": 24},
    "flow-intensity": {"knots": 33, "quantile_knots": 65, "evaluations": 14,
                       "scoring_slices": 24, "gamma_bias": 1.0, "gate_bits": 0.0,
                       "selection": "auto", "veto_bits": 0.25,
                       "veto_consistency": 3.0},
}

#: How ``flow-intensity`` picks its map (``harmonize.volume.select_map``; ``--intensity-model``).
SELECTIONS = ("auto", "power", "quantile")
