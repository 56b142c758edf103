"""Algorithm 1 of BlindHarmony (blindharmony_paper): on a tiny flow, and on real slices.

The paper's rules (the cosine step's size on our grid, the quantization and clamp after each
round trip, the failed round trip) are checked on informative axial slices of a held-out
IXI-HH fixture subject (IXI052, never used to train the prior) registered to the shipped
prior's grid, with the shipped prior's mean training slices as the start.
"""

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from bids_app.harmonize.methods import PaperParams, resolve_params
from bids_app.harmonize.operators import cosine_similarity
from bids_app.harmonize.paper import (
    PAPER_BETA1,
    PAPER_GRID,
    QUANT_LEVELS,
    blindharmony_paper,
    grid_beta1,
    quantize,
)
from bids_app.preprocess.slices import normalize_slices, scoring_slice_indices

#: The package's settings of Algorithm 1.
DEFAULT = PaperParams()

SHAPE = (16, 16)


@pytest.fixture(scope="module")
def bundle(lib_shipped_bundle):
    return lib_shipped_bundle


@pytest.fixture(scope="module")
def real(bundle, lib_reference_volume):
    """Four informative normalized slices of IXI052 on the prior's grid, and the prior's
    mean training slices at the same positions (Algorithm 1's start in the app)."""
    slices, _, _, valid = normalize_slices(lib_reference_volume)
    index = scoring_slice_indices(slices, valid, 4)
    return torch.from_numpy(slices[index]), bundle.x0[index].clone()


def _exp_shift(slices):
    """The paper's Exp source domain: ``exp(gt)``, min-maxed per slice (a darker image)."""
    y = torch.exp(slices.double())
    low = y.amin(dim=(1, 2, 3), keepdim=True)
    high = y.amax(dim=(1, 2, 3), keepdim=True)
    return ((y - low) / (high - low)).float()


class _ExactRoundTrip:
    """A flow whose round trip is exact (latent = image): Algorithm 1's data step alone."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __call__(self, x):
        return x.flatten(1), x.new_zeros(len(x))

    def inverse(self, z):
        return z.view(len(z), 1, *self.shape)


def _shrink_toward_source(xs, x0, beta1):
    """How much one cosine step (no prior, no edge term) shrinks the part of ``x0``
    orthogonal to the source, per slice: 0 keeps it, 1 removes it."""
    x, _ = blindharmony_paper(_ExactRoundTrip(xs.shape[2:]), xs, x0, alpha=0.0, beta1=beta1,
                              beta2=0.0, iterations=1)
    s = xs.flatten(1) / xs.flatten(1).norm(dim=1, keepdim=True)

    def orthogonal(v):
        v = v.flatten(1).double()
        return (v - (v * s).sum(1, keepdim=True) * s).norm(dim=1)

    return (1.0 - orthogonal(x) / orthogonal(x0)).numpy()


def _blobs(n, seed, dtype=torch.float64):
    """Smooth head-like slices in [0, 1]: a bright ellipse with an inner darker blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]] / (np.array(SHAPE)[:, None, None] - 1)
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.4, 0.6, 2)
        ry, rx = rng.uniform(0.25, 0.4, 2)
        head = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) ** 2)
        inner = rng.uniform(0.2, 0.6) * np.exp(-(((yy - cy) / (ry / 2)) ** 2
                                                 + ((xx - cx) / (rx / 2)) ** 2))
        img = np.clip(head - inner, 0, None)
        out.append(img / img.max())
    return torch.from_numpy(np.stack(out)[:, None]).to(dtype)


@pytest.fixture
def flow(lib_flow_factory):
    return lib_flow_factory(SHAPE, dtype=torch.float64, seed=5)


def test_shape_finite_and_iterations(flow):
    xs, x0 = _blobs(3, 0), _blobs(3, 1)
    calls = []
    x, z = blindharmony_paper(flow, xs, x0, iterations=4, beta1=5.0, progress=calls.append)
    assert calls == [1, 1, 1, 1]
    assert x.shape == xs.shape and x.dtype == xs.dtype
    assert z.shape == (3, SHAPE[0] * SHAPE[1])
    assert torch.isfinite(x).all() and torch.isfinite(z).all()
    assert not torch.equal(x, x0)
    # x0 is not modified in place
    torch.testing.assert_close(x0, _blobs(3, 1))
    # z is the (shrunk) latent of the last iterate, and x its inverse, quantized
    torch.testing.assert_close(quantize(flow.inverse(z)), x, atol=1e-8, rtol=0)


def test_no_data_terms_is_the_flow_round_trip(flow):
    xs, x0 = _blobs(2, 2), _blobs(2, 3)
    x, z = blindharmony_paper(flow, xs, x0, alpha=0.0, beta1=0.0, beta2=0.0, iterations=3)
    with torch.no_grad():
        round_trip = flow.inverse(flow(x0)[0])
        z0 = flow(x0)[0]
    # each round trip is quantized down to the 1/4080 grid: at most a level per iteration
    torch.testing.assert_close(x, quantize(round_trip), atol=3.0 / QUANT_LEVELS, rtol=0)
    torch.testing.assert_close(x, x0, atol=3.0 / QUANT_LEVELS + 1e-6, rtol=0)
    torch.testing.assert_close(z, z0, atol=3e-3, rtol=0)


def test_latent_shrinkage_moves_toward_the_prior_mode(flow):
    xs, x0 = _blobs(2, 2), _blobs(2, 3)
    _, z_free = blindharmony_paper(flow, xs, x0, alpha=0.0, beta1=0.0, beta2=0.0, iterations=2)
    _, z_shrunk = blindharmony_paper(flow, xs, x0, alpha=0.1, beta1=0.0, beta2=0.0, iterations=2)
    assert torch.all(z_shrunk.norm(dim=1) < z_free.norm(dim=1))


def test_large_beta1_increases_similarity_to_source(flow):
    xs, x0 = _blobs(4, 4), _blobs(4, 5)
    start = cosine_similarity(x0, xs)
    assert torch.all(start < 0.99)
    x, _ = blindharmony_paper(flow, xs, x0, beta1=20.0, iterations=5)
    end = cosine_similarity(x, xs)
    assert torch.all(end > start + 0.01), (start, end)
    weak, _ = blindharmony_paper(flow, xs, x0, beta1=1.0, iterations=5)
    assert torch.all(cosine_similarity(weak, xs) < end)


def test_per_slice_beta1_equals_separate_runs(flow):
    """Several beta1 values in one batch give what each value gives on its own."""
    xs, x0 = _blobs(2, 4), _blobs(2, 5)
    both, _ = blindharmony_paper(flow, xs.repeat(2, 1, 1, 1), x0.repeat(2, 1, 1, 1),
                                 beta1=torch.tensor([1.0, 1.0, 20.0, 20.0]), iterations=3)
    weak, _ = blindharmony_paper(flow, xs, x0, beta1=1.0, iterations=3)
    strong, _ = blindharmony_paper(flow, xs, x0, beta1=20.0, iterations=3)
    torch.testing.assert_close(both, torch.cat([weak, strong]), atol=1e-8, rtol=0)
    assert (weak - strong).abs().max() > 1e-3


def test_edge_term_smooths_non_edge_regions(flow):
    xs = _blobs(2, 6)
    x0 = (xs + 0.05 * torch.randn(xs.shape, generator=torch.Generator().manual_seed(0),
                                  dtype=xs.dtype)).clamp(0, 1)
    from bids_app.harmonize.operators import edge_mask, edge_penalty

    mask = edge_mask(xs)
    plain, _ = blindharmony_paper(flow, xs, x0, alpha=0.0, beta1=0.0, beta2=0.0, iterations=3)
    smooth, _ = blindharmony_paper(flow, xs, x0, alpha=0.0, beta1=0.0, beta2=2e-3, iterations=3)
    assert torch.all(mask.sum((1, 2, 3)) > 0)
    assert torch.all(edge_penalty(smooth, mask) < edge_penalty(plain, mask))


class _BrokenInverse(torch.nn.Module):
    """Wraps a flow; its inverse corrupts the first slice of the batch (``kind``)."""

    def __init__(self, flow, kind):
        super().__init__()
        self.flow, self.kind = flow, kind

    def forward(self, x):
        return self.flow(x)

    def inverse(self, z):
        x = self.flow.inverse(z).clone()
        if self.kind == "nan":
            x[0, 0, 0, 0] = float("nan")
        elif self.kind == "inf":
            x[0, 0, 5, 5] = float("inf")
        elif self.kind == "zero":
            x[0] = 0.0
        else:  # one pixel at this value
            x[0, 0, 40, 50] = float(self.kind)
        return x


@pytest.mark.parametrize("kind", ["nan", "inf", "zero", 100.5])
def test_a_failed_round_trip_keeps_the_image_from_before_it(bundle, real, kind):
    """Real slices, shipped prior: a slice whose round trip is not finite, all zero or
    above 100 keeps its image from before the round trip (here ``x0``: no data terms), the
    other slices go on."""
    source, x0 = real
    settings = {"alpha": 0.05, "beta1": 0.0, "beta2": 0.0, "iterations": 1}
    x, _ = blindharmony_paper(_BrokenInverse(bundle.flow, kind), source, x0, **settings)
    clean, _ = blindharmony_paper(bundle.flow, source, x0, **settings)
    assert torch.equal(x[0], x0[0])
    assert torch.equal(x[1:], clean[1:])
    assert (clean[0] - x0[0]).abs().max() > 1e-3  # the round trip would have moved it


def test_a_value_of_100_is_a_round_trip_and_is_clamped(bundle, real):
    source, x0 = real
    settings = {"alpha": 0.05, "beta1": 0.0, "beta2": 0.0, "iterations": 1}
    x, _ = blindharmony_paper(_BrokenInverse(bundle.flow, 100.0), source, x0, **settings)
    clean, _ = blindharmony_paper(bundle.flow, source, x0, **settings)
    assert x[0, 0, 40, 50] == 1.0  # kept, clamped
    x[0, 0, 40, 50] = clean[0, 0, 40, 50]
    assert torch.equal(x, clean)


def test_round_trips_are_quantized_and_clamped(bundle, real):
    """Real Exp-shifted slices, shipped prior, the package's settings: after three
    iterations the flow's output leaves [0, 1] on both sides (the cosine step brightens the
    dark source towards the mean slice's norm); the result is that output quantized to
    ``floor(4080 x) / 4080`` and clamped."""
    truth, x0 = real
    params = {"alpha": DEFAULT.alpha, "beta1": DEFAULT.beta1, "beta2": DEFAULT.beta2}
    x, z = blindharmony_paper(bundle.flow, _exp_shift(truth), x0, iterations=3, **params)
    with torch.no_grad():
        raw = bundle.flow.inverse(z)
    assert raw.min() < 0.0 and raw.max() > 1.0
    assert x.min() >= 0.0 and x.max() <= 1.0 and torch.any(x == 1.0) and torch.any(x == 0.0)
    levels = x.double() * QUANT_LEVELS
    assert (levels - levels.round()).abs().max() < 1e-3  # on the 1/4080 grid
    inside = (raw >= 0) & (raw <= 1)
    assert torch.all(x[inside] <= raw[inside])  # floor: never brighter
    assert torch.all(raw[inside] - x[inside] < 1.0 / QUANT_LEVELS + 1e-6)
    assert torch.equal(x, quantize(raw))


def test_the_cosine_step_is_the_papers_step_on_our_grid(real):
    """The step of ``beta1 grad NCC`` relative to the image is ``beta1 / |x|^2``, and
    ``|x|^2`` is a sum over pixels: the paper's 1000 on its 144 x 176 grid takes the step
    the package's beta1 takes on 96 x 112. Checked on real slices and the same slices
    resampled to 144 x 176: the share of ``x0``'s departure from the source's direction
    that one step removes. The earlier rule (651, square root of the pixel count) removed
    half as much again."""
    truth, x0 = real
    source = truth**1.5
    factors = (PAPER_GRID[0] / source.shape[2], PAPER_GRID[1] / source.shape[3])

    def resample(t):
        return torch.from_numpy(np.stack([zoom(s[0].numpy(), factors, order=1)
                                          for s in t])[:, None].astype(np.float32))

    paper = _shrink_toward_source(resample(source), resample(x0), PAPER_BETA1)
    ours = _shrink_toward_source(source, x0, DEFAULT.beta1)
    assert np.all(paper > 0.05)  # a real step
    np.testing.assert_allclose(ours, paper, rtol=0.01)
    assert np.all(_shrink_toward_source(source, x0, 651.0) > 1.4 * paper)
    assert DEFAULT.beta1 == round(grid_beta1(source.shape[2:]), 1)
    # the function's default is the package's
    exact = _ExactRoundTrip(source.shape[2:])
    default, _ = blindharmony_paper(exact, source, x0, iterations=1)
    given, _ = blindharmony_paper(exact, source, x0, iterations=1,
                                  beta1=DEFAULT.beta1)
    assert torch.equal(default, given)


def test_paper_method_maps_are_smoothed_across_slices(bundle, lib_reference_volume):
    """Real data, shipped prior: smoothing the per-slice maps removes striping."""
    from bids_app.evaluation.metrics import striping, white_matter_mask
    from bids_app.harmonize.volume import harmonize_volume
    from bids_app.preprocess.intensity_maps import interp_extended

    volume = lib_reference_volume
    wm = white_matter_mask(volume)
    # unsmoothed with beta1 fixed; smoothed with the automatic beta1
    runs = {sigma: harmonize_volume(volume, bundle, method="paper", progress=False,
                                    params={"iterations": 3, "slice_sigma": sigma, **extra})
            for sigma, extra in ((0.0, {"beta1": DEFAULT.beta1}), (4.0, {"auto_beta1": True}))}
    direct, smoothed = striping(runs[0.0][0], wm), striping(runs[4.0][0], wm)
    assert smoothed < 0.5 * direct
    assert smoothed < striping(volume, wm) + 1.0  # close to the image's own anatomy
    # the reference-space output is the source through the smoothed per-slice maps, so the
    # native image (carried by the same maps) agrees with it
    out, result = runs[4.0]
    slices, low, high, valid = normalize_slices(volume)
    k = int(np.nonzero(valid)[0][len(np.nonzero(valid)[0]) // 2])
    expected = low[k] + (high[k] - low[k]) * interp_extended(slices[k, 0], result["lut"][k])
    np.testing.assert_allclose(out[:, :, k], expected, rtol=1e-4, atol=1e-3 * high[k])
    assert result["params"]["slice_sigma"] == 4.0
    # the automatic beta1 tried its candidates and reports the chosen one and the scores
    assert result["params"]["auto_beta1"] is True
    decision = result["decision"]
    base = resolve_params(bundle, "paper")[1].beta1  # the prior's record, else the package's
    assert decision["beta1_candidates"] == [round(base * f, 1) for f in (0.5, 1.0, 2.0)]
    scores = decision["beta1_bits_per_dim"]
    assert len(scores) == 3 and np.all(np.isfinite(scores))
    assert decision["beta1"] == decision["beta1_candidates"][int(np.argmin(scores))]
    fixed = runs[0.0][1]
    assert fixed["params"]["beta1"] == DEFAULT.beta1 and fixed["params"]["auto_beta1"] is False
    assert "beta1_candidates" not in fixed["decision"]
