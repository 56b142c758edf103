"""Algorithm 1 of BlindHarmony (blindharmony_paper) on a tiny flow."""

import numpy as np
import pytest
import torch

from bids_app.harmonize.operators import cosine_similarity
from bids_app.harmonize.paper import blindharmony_paper

SHAPE = (16, 16)


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
    # z is the (shrunk) latent of the last iterate, and x its inverse
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-8, rtol=0)


def test_no_data_terms_is_the_flow_round_trip(flow):
    xs, x0 = _blobs(2, 2), _blobs(2, 3)
    x, z = blindharmony_paper(flow, xs, x0, alpha=0.0, beta1=0.0, beta2=0.0, iterations=3)
    with torch.no_grad():
        round_trip = flow.inverse(flow(x0)[0])
        z0 = flow(x0)[0]
    torch.testing.assert_close(x, round_trip, atol=1e-8, rtol=0)
    torch.testing.assert_close(x, x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(z, z0, atol=1e-6, rtol=1e-6)


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

    masks = edge_mask(xs)
    plain, _ = blindharmony_paper(flow, xs, x0, alpha=0.0, beta1=0.0, beta2=0.0, iterations=3)
    smooth, _ = blindharmony_paper(flow, xs, x0, alpha=0.0, beta1=0.0, beta2=2e-3, iterations=3)
    assert masks[0].sum() > 0
    assert torch.all(edge_penalty(smooth, masks) < edge_penalty(plain, masks))


class _BrokenInverse(torch.nn.Module):
    """Wraps a flow; its inverse returns NaN for the first slice of the batch."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x):
        return self.flow(x)

    def inverse(self, z):
        x = self.flow.inverse(z).clone()
        x[0] = float("nan")
        return x


def test_non_finite_slice_keeps_its_previous_value(flow):
    xs, x0 = _blobs(3, 7), _blobs(3, 8)
    x, _ = blindharmony_paper(_BrokenInverse(flow), xs, x0, alpha=0.05, beta1=0.0, beta2=0.0,
                              iterations=2)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[0], x0[0], atol=0, rtol=0)
    assert (x[1:] - x0[1:]).abs().max() > 1e-4  # alpha moved the others


def test_paper_method_maps_are_smoothed_across_slices(lib_t1w_path):
    """Real data, shipped prior: smoothing the per-slice maps removes striping."""
    import nibabel as nb

    from bids_app.evaluation.metrics import striping, white_matter_mask
    from bids_app.flow.bundle import load_bundle
    from bids_app.harmonize.intensity import interp_extended
    from bids_app.harmonize.volume import harmonize_volume
    from bids_app.preprocess.registration import register_affine, resample_to_grid
    from bids_app.preprocess.slices import normalize_slices

    bundle = load_bundle()
    img = nb.as_closest_canonical(nb.load(str(lib_t1w_path)))
    matrix = register_affine(img, bundle.reference, num_threads=1)
    volume = np.asarray(resample_to_grid(img, bundle.reference, matrix), dtype=np.float32)
    wm = white_matter_mask(volume)
    # unsmoothed with beta1 fixed; smoothed with the automatic beta1
    runs = {sigma: harmonize_volume(volume, bundle, method="paper", progress=False,
                                    params={"iterations": 3, "slice_sigma": sigma, **extra})
            for sigma, extra in ((0.0, {"beta1": 651.0}), (4.0, {"beta1": "auto"}))}
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
    params = result["params"]
    assert params["auto_beta1"] is True
    assert params["beta1_candidates"] == [325.5, 651.0, 1302.0]
    assert params["beta1"] in params["beta1_candidates"]
    scores = params["beta1_bits_per_dim"]
    assert len(scores) == 3 and np.all(np.isfinite(scores))
    assert params["beta1"] == params["beta1_candidates"][int(np.argmin(scores))]
    fixed = runs[0.0][1]["params"]
    assert fixed["beta1"] == 651.0 and fixed["auto_beta1"] is False
    assert "beta1_candidates" not in fixed
