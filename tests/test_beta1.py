"""Automatic beta1 (bids_app.harmonize.beta1).

The scores are checked on real data: four informative axial slices of a held-out IXI-HH
fixture subject (IXI052, never used to train the prior) registered to the shipped prior's
grid, scored under that prior. The batching is checked on a tiny flow.
"""

import math

import numpy as np
import pytest
import torch

from bids_app.flow.bundle import load_bundle
from bids_app.flow.model import QUANT_LEVELS
from bids_app.harmonize.beta1 import (
    HEAD_FLOOR,
    choose_beta1,
    map_bits_per_dim,
    slice_maps,
)
from bids_app.preprocess.intensity_maps import interp_extended
from bids_app.harmonize.paper import blindharmony_paper
from bids_app.preprocess.slices import scoring_slice_indices
from bids_app.preprocess.slices import normalize_slices

SHAPE = (16, 16)
KNOTS = np.linspace(0, 1, 33)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


@pytest.fixture(scope="module")
def real(bundle, lib_reference_volume):
    """Four informative normalized slices of IXI052 on the prior's grid, and the prior's
    mean training slices at the same positions (Algorithm 1's start in the app)."""
    slices, _, _, valid = normalize_slices(lib_reference_volume)
    index = scoring_slice_indices(slices, valid, 4)
    return slices[index], bundle.x0[index].clone()


def _plain_bits(flow, x):
    """Bits/dim of slices ``x`` (numpy, in [0, 1]) under the flow, no intensity map."""
    with torch.no_grad():
        return flow.bits_per_dim(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


def _maps(values, n=4):
    return np.tile(values, (n, 1))


def _slices(n, seed):
    """Head-like slices in [0, 1]: a bright disc with a darker core on a black background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]] / (SHAPE[0] - 1)
    out = []
    for _ in range(n):
        r = np.hypot(yy - rng.uniform(0.45, 0.55), xx - rng.uniform(0.45, 0.55))
        img = np.where(r < 0.4, 0.9 - 0.5 * np.exp(-(r / 0.15) ** 2), 0.0)
        out.append(img + 0.02 * rng.random(SHAPE) * (r < 0.4))
    x = np.stack(out)[:, None]
    return x / x.max(axis=(1, 2, 3), keepdims=True)


def test_slice_maps_recover_a_monotone_change():
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    ramp = np.clip(1.0 - np.hypot(yy - 0.5, xx - 0.5) / 0.45, 0, 1)  # every intensity
    source = np.stack([ramp, ramp**1.3])[:, None]
    maps = slice_maps(source, source**2, 33)
    assert maps.shape == (2, 33)
    assert np.all(np.diff(maps, axis=1) >= 0)
    knots = np.linspace(0, 1, 33)
    inner = (knots > 0.05) & (knots < 0.9)  # where every bin has pixels
    np.testing.assert_allclose(maps[:, inner], np.tile(knots[inner] ** 2, (2, 1)), atol=0.02)


def test_identity_maps_score_the_source_itself(bundle, real):
    """With the identity on every slice the Jacobian vanishes: the score is the plain
    bits/dim of the real slices under the prior, well below uniform noise's."""
    source, _ = real
    scores = map_bits_per_dim(bundle.flow, source, _maps(KNOTS))
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, _plain_bits(bundle.flow, source), rtol=1e-6)
    assert np.all(scores < math.log2(QUANT_LEVELS) - 2)  # 12 bits/dim: uniform noise


def test_scores_ignore_the_scale_of_a_map(bundle, real):
    """``a g + b`` (a > 0) gives the same normalized slice and the same score as ``g``;
    the score does depend on the map's shape."""
    source, _ = real
    flow = bundle.flow
    for values in (KNOTS, KNOTS**0.7):
        base = map_bits_per_dim(flow, source, _maps(values))
        for scaled in (0.5 * values, 3 * values + 1, 2 * values - 0.3):
            np.testing.assert_allclose(map_bits_per_dim(flow, source, _maps(scaled)), base,
                                       rtol=1e-6)
    identity = map_bits_per_dim(flow, source, _maps(KNOTS))
    assert np.all(np.abs(map_bits_per_dim(flow, source, _maps(KNOTS**0.7)) - identity) > 0.1)


@pytest.mark.parametrize("gamma", [0.25, 0.5])
def test_a_map_that_squeezes_the_head_costs_bits(bundle, real, gamma):
    """``g(u) = u**gamma`` (gamma < 1) keeps the pixels' order and the extremes but squeezes
    the head's intensities into a narrow bright range. The score is the mapped slice's bits
    plus the change of variables: ``-mean log2 g'(u)`` over the head pixels, here checked
    against the analytic derivative ``gamma u**(gamma - 1)``, not the code's segments."""
    source, _ = real
    flow = bundle.flow
    values = KNOTS**gamma
    scores = map_bits_per_dim(flow, source, _maps(values))
    mapped = np.stack([interp_extended(s, values) for s in source])
    plain = _plain_bits(flow, mapped)
    u = source.astype(np.float64)
    analytic = np.array([-np.log2(gamma * s[s > HEAD_FLOOR] ** (gamma - 1)).sum()
                         for s in u]) / flow.dim
    assert np.all(analytic > 0.25)  # a real cost: a quarter of a bit per pixel or more
    np.testing.assert_allclose(scores - plain, analytic, atol=0.05)
    # and it is worse than leaving the source as it is
    assert np.all(scores > _plain_bits(flow, source) + 0.25)


def test_choose_beta1_runs_candidates_in_one_batch(lib_flow_factory):
    """Every candidate in one batched run of Algorithm 1, each with its own beta1."""
    flow = lib_flow_factory(SHAPE, dtype=torch.float64, seed=4)
    xs = torch.from_numpy(_slices(3, 5))
    x0 = torch.from_numpy(_slices(3, 6))
    calls = []
    best, results, scores = choose_beta1(flow, xs, x0, candidates=[1.0, 10.0], alpha=1e-3,
                                         beta2=1e-3, iterations=2, n_knots=17,
                                         progress=calls.append)
    assert calls == [1, 1]  # one batched run, not one per candidate
    assert best in (0, 1) and isinstance(best, int)
    assert len(results) == 2 and len(scores) == 2 and np.all(np.isfinite(scores))
    for beta1, result in zip([1.0, 10.0], results):
        alone, _ = blindharmony_paper(flow, xs, x0, alpha=1e-3, beta1=beta1, beta2=1e-3,
                                      iterations=2)
        torch.testing.assert_close(result, alone, atol=1e-8, rtol=0)
    assert not torch.allclose(results[0], results[1])  # the candidates did differ


# Algorithm 1 with alpha = beta2 = 0 and beta1 = 0 returns its start x0 (up to the flow's
# round trip): that candidate's result is an input of the test. The other candidate is the
# shipped prior's beta1 (651 on this grid). Same source, same candidates; only x0 differs.
CANDIDATES = [0.0, 651.0]
SETTINGS = {"alpha": 0.0, "beta2": 0.0, "iterations": 3, "n_knots": 33}


def test_a_beta1_that_ignores_the_source_is_not_chosen(bundle, real):
    """From the prior's mean slices, beta1 = 0 returns the mean slices: nothing of the
    source, a poor map of it. The prior's beta1 pulls towards the source and is chosen."""
    source, template = real
    xs = torch.from_numpy(source)
    best, results, scores = choose_beta1(bundle.flow, xs, template, candidates=CANDIDATES,
                                         **SETTINGS)
    torch.testing.assert_close(results[0], template, atol=1e-3, rtol=0)
    assert best == 1 and CANDIDATES[best] == 651.0
    assert scores[1] < scores[0] - 0.1


def test_a_beta1_that_leaves_a_monotone_map_of_the_source_is_chosen(bundle, real):
    """From ``source**0.25`` (an exact monotone map of the source), beta1 = 0 keeps it;
    three steps with the prior's beta1 turn the slices into something no monotone map of
    the source explains as well, so the choice flips to the other candidate."""
    source, _ = real
    xs = torch.from_numpy(source)
    start = xs**0.25
    best, results, scores = choose_beta1(bundle.flow, xs, start, candidates=CANDIDATES,
                                         **SETTINGS)
    torch.testing.assert_close(results[0], start, atol=1e-3, rtol=0)
    assert best == 0 and CANDIDATES[best] == 0.0
    assert scores[0] < scores[1] - 0.1
