"""Automatic beta1 (bids_app.harmonize.beta1) on a tiny flow."""

import numpy as np
import torch

from bids_app.harmonize.beta1 import choose_beta1, map_bits_per_dim, slice_maps
from bids_app.harmonize.paper import blindharmony_paper

SHAPE = (16, 16)


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


def test_identity_maps_score_the_source_itself(lib_flow_factory):
    """With the identity on every slice the Jacobian vanishes: plain bits/dim of the source."""
    flow = lib_flow_factory(SHAPE, dtype=torch.float64, seed=2)
    source = _slices(4, 1)
    maps = np.tile(np.linspace(0, 1, 33), (4, 1))
    expected = flow.bits_per_dim(torch.from_numpy(source)).detach().numpy()
    np.testing.assert_allclose(map_bits_per_dim(flow, source, maps), expected, rtol=1e-6)


def test_scores_ignore_the_scale_of_a_map_but_not_its_shape(lib_flow_factory):
    """Rescaled maps give the same normalized slice and the same score; a contrast change
    that squeezes the head's intensities pays for it in the Jacobian."""
    flow = lib_flow_factory(SHAPE, dtype=torch.float64, seed=2)
    source = _slices(2, 3)
    knots = np.linspace(0, 1, 33)
    identity = np.tile(knots, (2, 1))
    base = map_bits_per_dim(flow, source, identity)
    np.testing.assert_allclose(map_bits_per_dim(flow, source, 0.5 * identity), base, rtol=1e-9)
    np.testing.assert_allclose(map_bits_per_dim(flow, source, 3 * identity + 1), base, rtol=1e-9)
    # g(u) = u**0.25 keeps the pixels' order and the extremes, but squeezes the head (its
    # intensities are 0.4-1 here) into a narrow bright range: slopes 0.25-0.5 there
    squeeze = np.tile(knots**0.25, (2, 1))
    from bids_app.harmonize.intensity import interp_extended

    mapped = np.stack([interp_extended(s, m) for s, m in zip(source, squeeze)])
    plain = flow.bits_per_dim(torch.from_numpy(mapped)).detach().numpy()
    assert np.all(map_bits_per_dim(flow, source, squeeze) > plain + 0.1)


def test_choose_beta1_runs_candidates_in_one_batch(lib_flow_factory):
    flow = lib_flow_factory(SHAPE, dtype=torch.float64, seed=4)
    xs = torch.from_numpy(_slices(3, 5))
    x0 = torch.from_numpy(_slices(3, 6))
    calls = []
    best, results, scores = choose_beta1(flow, xs, x0, candidates=[1.0, 10.0], alpha=1e-3,
                                         beta2=1e-3, iterations=2, n_knots=17,
                                         progress=calls.append)
    assert calls == [1, 1]  # one batched run, not one per candidate
    assert len(results) == 2 and len(scores) == 2 and np.all(np.isfinite(scores))
    assert best == int(np.argmin(scores))
    for beta1, result in zip([1.0, 10.0], results):
        alone, _ = blindharmony_paper(flow, xs, x0, alpha=1e-3, beta1=beta1, beta2=1e-3,
                                      iterations=2)
        torch.testing.assert_close(result, alone, atol=1e-8, rtol=0)
    maps = [slice_maps(xs.numpy(), r.clamp(0, 1).numpy(), 17) for r in results]
    expected = [float(np.mean(map_bits_per_dim(flow, xs.numpy(), m))) for m in maps]
    np.testing.assert_allclose(scores, expected, rtol=1e-10)


def test_beta1_auto_or_fixed_in_the_parameters():
    """``beta1="auto"`` turns the choice on around the prior's value; a number turns it off."""
    from types import SimpleNamespace

    from bids_app.harmonize.volume import resolve_params

    bundle = SimpleNamespace(harmonization={"paper": {"beta1": 400.0}})
    assert resolve_params(bundle, "paper")["auto_beta1"] is False  # default: the prior's
    auto = resolve_params(bundle, "paper", {"beta1": "auto"})
    assert auto["auto_beta1"] is True and auto["beta1"] == 400.0
    fixed = resolve_params(bundle, "paper", {"beta1": 300.0, "auto_beta1": True})
    assert fixed["beta1"] == 300.0 and fixed["auto_beta1"] is True  # explicit wins
    assert resolve_params(bundle, "paper", {"beta1": 300.0})["auto_beta1"] is False
