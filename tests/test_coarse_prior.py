"""A prior trained on block-averaged slices (``--downsample 2`` or 4) harmonizes 2 mm images.

The prior sees 4 mm (or 8 mm) slices (the block means of the reference-grid slices,
min-maxed again, as in training); the map it chooses is applied to the 2 mm voxels. Real
data: a held-out IXI-HH fixture subject registered to the shipped template.
"""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from bids_app.flow.bundle import PriorBundle
from bids_app.harmonize.criterion import prior_grid, slice_likelihood
from bids_app.harmonize.volume import harmonize_volume
from bids_app.preprocess.slices import downsample_slices, normalize_slices


@pytest.fixture(scope="module", params=[2, 4], ids=["4mm", "8mm"])
def coarse_bundle(lib_shipped_bundle, request):
    from lib_fixtures import lib_make_flow

    factor = request.param
    height, width = lib_shipped_bundle.reference.shape[:2]
    flow = lib_make_flow((height // factor, width // factor), seed=3)
    return PriorBundle(
        flow=flow, reference=lib_shipped_bundle.reference, space=lib_shipped_bundle.space,
        x0=torch.from_numpy(downsample_slices(lib_shipped_bundle.x0.numpy(), factor)),
        name="coarse-test-prior",
        preprocessing={**lib_shipped_bundle.preprocessing, "downsample": factor},
        harmonization={"method": "flow-intensity"},
    )


def test_prior_grid_is_the_training_downsampling(lib_reference_volume, coarse_bundle):
    slices, _, _, valid = normalize_slices(lib_reference_volume)
    slices = slices[valid]
    fine = torch.from_numpy(slices)
    coarse = prior_grid(coarse_bundle.flow, fine, renormalize=True)
    assert tuple(coarse.shape[-2:]) == tuple(coarse_bundle.flow.config["shape"])
    factor = coarse_bundle.preprocessing["downsample"]
    np.testing.assert_allclose(coarse.numpy(), downsample_slices(slices, factor), atol=1e-6)
    # slices already on the prior's grid pass through; another grid is refused
    assert prior_grid(coarse_bundle.flow, coarse) is coarse
    with pytest.raises(ValueError, match="prior's grid"):
        prior_grid(coarse_bundle.flow, fine[..., :-2])
    # the likelihood of fine slices is the likelihood of their block means
    bpd_fine, _ = slice_likelihood(coarse_bundle.flow, fine[:4])
    bpd_coarse, _ = slice_likelihood(coarse_bundle.flow, coarse[:4])
    np.testing.assert_allclose(bpd_fine, bpd_coarse, rtol=1e-5)


def test_coarse_prior_harmonizes_at_full_resolution(lib_reference_volume, coarse_bundle):
    volume = lib_reference_volume
    shifted = (volume / volume.max()) ** 1.5 * 1000.0
    out, result = harmonize_volume(shifted, coarse_bundle, progress=False)
    assert out.shape == volume.shape
    gamma_hat = result["decision"]["gamma_hat"]
    assert gamma_hat is not None and 0.3 <= gamma_hat <= 3.0
    # one monotone map of the 2 mm voxels: the ranks of the head's voxels are kept, and
    # the fine detail is there (the output is not the 4 mm image upsampled)
    head = shifted > 0.05 * shifted.max()
    assert spearmanr(out[head][::7], shifted[head][::7])[0] > 0.999
    detail = np.abs(np.diff(out, axis=0))[head[1:]].mean()
    source_detail = np.abs(np.diff(shifted, axis=0))[head[1:]].mean()
    assert detail > 0.2 * source_detail * out[head].std() / shifted[head].std()
    assert len(result["metrics"]["SliceBitsPerDim"]) == volume.shape[2]


def test_paper_method_refuses_a_coarse_prior(lib_reference_volume, coarse_bundle):
    with pytest.raises(ValueError, match="reference grid"):
        harmonize_volume(lib_reference_volume, coarse_bundle, method="paper", progress=False)
