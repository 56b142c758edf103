"""The prior's own map estimate: a monotone map and a smooth field, fitted through the flow."""

import numpy as np
import pytest
import torch

from bids_app.flow.bundle import load_bundle
from bids_app.harmonize.prior_map import (apply_map, criterion_nats, field_terms,
                                          field_volume, fit_prior_map, map_values)
from bids_app.preprocess.image import load_t1w
from bids_app.preprocess.registration import register_affine, resample_to_grid
from bids_app.preprocess.slices import normalize_slices, scoring_slice_indices, volume_to_slices

import nibabel as nb


@pytest.fixture(scope="module")
def registered(lib_t1w_path):
    bundle = load_bundle()
    img = nb.as_closest_canonical(load_t1w(lib_t1w_path))
    matrix = register_affine(img, bundle.reference, num_threads=1)
    volume = np.asarray(resample_to_grid(img, bundle.reference, matrix), dtype=np.float32)
    return bundle, volume / volume.max()


def test_the_map_is_increasing_and_its_log_slope_is_its_derivative():
    torch.manual_seed(0)
    theta = torch.randn(8, dtype=torch.float64)
    values = map_values(theta)
    assert values[0] == 0 and values[-1] == pytest.approx(1) and torch.all(torch.diff(values) > 0)
    u = torch.rand(500, dtype=torch.float64) * 0.98 + 0.01
    g, log_slope = apply_map(u, theta)
    g2, _ = apply_map(u + 1e-7, theta)
    inside = ((u * 8) % 1 > 1e-4) & ((u * 8) % 1 < 1 - 1e-4)  # not on a knot
    assert torch.allclose(((g2 - g) / 1e-7)[inside], log_slope.exp()[inside], rtol=1e-4)
    assert torch.all(torch.diff(g[torch.argsort(u)]) >= 0)
    identity, zero = apply_map(u, torch.zeros(8, dtype=torch.float64))
    assert torch.allclose(identity, u) and torch.allclose(zero, torch.zeros_like(u))


def test_field_terms_are_the_volumes_polynomial():
    shape = (12, 14, 10)
    phi = np.linspace(-0.3, 0.3, 9)
    full = field_volume(phi, shape)
    terms = field_terms(shape, [2, 7])
    assert terms.shape == (9, 2, 1, 12, 14)
    on_slices = np.exp(np.tensordot(phi, terms[:, :, 0].numpy(), axes=1))
    assert np.allclose(on_slices[0], full[:, :, 2], atol=1e-6)
    assert np.allclose(on_slices[1], full[:, :, 7], atol=1e-6)
    assert np.allclose(field_volume(np.zeros(9), shape), 1)
    # the first three terms are the coordinates, scaled to [-1, 1] over the volume
    assert terms[0, 0, 0, 0, 0] == -1 and terms[0, 0, 0, -1, 0] == 1
    assert terms[2, 1, 0, 0, 0] == pytest.approx(-1 + 2 * 7 / 9)


def test_the_fit_never_ends_below_the_identity(registered):
    """On a real registered image under the shipped prior, L-BFGS from the identity ends
    at a map the criterion prefers (or the identity itself), and the recorded numbers are
    the criterion's at those maps."""
    bundle, volume = registered
    slices, _, _, valid = normalize_slices(volume)
    chosen = scoring_slice_indices(slices, valid, 4)
    u = torch.from_numpy(volume_to_slices(volume)[chosen])
    terms = field_terms(volume.shape, chosen)
    fit = fit_prior_map(bundle.flow, u, terms, iterations=4)
    assert fit["bits"] >= fit["identity_bits"]
    assert np.all(np.diff(fit["values"]) > 0) and fit["values"][-1] == pytest.approx(1)
    with torch.no_grad():
        at_identity = criterion_nats(bundle.flow, u, terms, torch.zeros(8), torch.zeros(9))
    bits = float(at_identity.sum()) / (len(u) * bundle.flow.dim * np.log(2))
    assert fit["identity_bits"] == pytest.approx(bits, rel=1e-4)
    assert all(p.requires_grad for p in bundle.flow.parameters())
