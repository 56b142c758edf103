"""SliceFlow: invertibility, log-determinant, configuration checks, presets."""

import math

import pytest
import torch

from bids_app.flow.model import (
    PRESETS,
    QUANT_LEVELS,
    SliceFlow,
    count_parameters,
    dequantize,
    flow_config,
)


@pytest.mark.parametrize(
    "preset, shape, overrides",
    [
        ("tiny", (16, 16), {}),
        ("cpu", (32, 32), {"steps_per_level": 1, "hidden_channels": 8}),
    ],
)
def test_round_trip_float64(lib_flow_factory, preset, shape, overrides):
    flow = lib_flow_factory(shape, preset=preset, dtype=torch.float64, **overrides)
    assert not flow.training
    x = torch.rand(3, 1, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        z, logabsdet = flow(x)
        back = flow.inverse(z)
    assert z.shape == (3, shape[0] * shape[1])
    assert logabsdet.shape == (3,)
    assert back.shape == x.shape
    assert (back - x).abs().max().item() < 1e-4
    # the flow is not the identity (it would make the round trip trivial)
    assert (z.view_as(x) - (x - 0.5)).abs().max().item() > 1e-3


def test_actnorm_initialized_by_first_train_forward():
    torch.manual_seed(0)
    flow = SliceFlow(flow_config("tiny", shape=(16, 16))).double()
    flags = [b for n, b in flow.named_buffers() if n.endswith("initialized")]
    assert flags and not any(bool(f) for f in flags)
    flow.train()
    with torch.no_grad():
        flow(torch.rand(8, 1, 16, 16, dtype=torch.float64))
    assert all(bool(f) for f in flags)


@pytest.mark.parametrize("shape, levels", [((4, 4), 1), ((8, 8), 2)])
def test_logabsdet_matches_autograd_jacobian(lib_flow_factory, shape, levels):
    flow = lib_flow_factory(shape, dtype=torch.float64, levels=levels, seed=3)
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def forward(flat):
        return flow(flat.view(1, 1, *shape))[0].view(-1)

    jac = torch.autograd.functional.jacobian(forward, x.view(-1))
    assert jac.shape == (x.numel(), x.numel())
    sign, expected = torch.linalg.slogdet(jac)
    assert sign.item() != 0
    _, logabsdet = flow(x)
    assert logabsdet.item() == pytest.approx(expected.item(), abs=1e-6, rel=1e-8)


@pytest.mark.parametrize("shape", [(30, 32), (32, 30), (18, 18)])
def test_flow_config_rejects_indivisible_shapes(shape):
    # tiny has 2 levels: both sides must be divisible by 4
    with pytest.raises(ValueError, match="divisible"):
        flow_config("tiny", shape=shape)


def test_flow_config_levels_override_changes_divisibility():
    flow_config("tiny", shape=(24, 24))  # divisible by 4
    with pytest.raises(ValueError, match="2\\*\\*levels = 16"):
        flow_config("tiny", shape=(24, 24), levels=4)


def test_slice_flow_checks_config_too():
    config = flow_config("tiny", shape=(16, 16))
    config["shape"] = [18, 16]
    with pytest.raises(ValueError, match="divisible"):
        SliceFlow(config)


def test_flow_config_rejects_unknown_preset():
    with pytest.raises(ValueError, match="Unknown flow preset 'huge'"):
        flow_config("huge", shape=(16, 16))


def test_flow_config_content():
    config = flow_config("tiny", shape=(16, 32), hidden_channels=12)
    assert config["preset"] == "tiny"
    assert config["shape"] == [16, 32]
    assert config["hidden_channels"] == 12
    assert config["levels"] == PRESETS["tiny"]["levels"]
    flow = SliceFlow(config)
    assert flow.dim == 16 * 32
    assert flow.shape == (1, 16, 32)


def test_sample_shape_and_determinism(lib_flow_factory):
    flow = lib_flow_factory((16, 8), levels=2)
    a = flow.sample(5, generator=torch.Generator().manual_seed(7))
    b = flow.sample(5, generator=torch.Generator().manual_seed(7))
    assert a.shape == (5, 1, 16, 8)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    # temperature 0 decodes z = 0 for every sample
    cold = flow.sample(2, temperature=0.0)
    assert torch.allclose(cold[0], cold[1])


def test_bits_per_dim_consistent_with_log_prob(lib_flow_factory):
    flow = lib_flow_factory((16, 16))
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        log_prob = flow.log_prob(x)
        bpd = flow.bits_per_dim(x)
        z, logabsdet = flow(x)
    assert log_prob.shape == bpd.shape == (4,)
    # log_prob = log N(z; 0, I) + log|det|
    gauss = -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
    torch.testing.assert_close(log_prob, gauss + logabsdet, rtol=1e-5, atol=1e-3)
    expected = -log_prob / (256 * math.log(2.0)) + math.log2(QUANT_LEVELS)
    torch.testing.assert_close(bpd, expected)
    # lower bits/dim <=> higher likelihood
    order_lp = torch.argsort(-log_prob)
    order_bpd = torch.argsort(bpd)
    assert torch.equal(order_lp, order_bpd)


def test_dequantize_range_and_grid():
    x = torch.tensor([[0.0, 0.5, 1.0, 1.7, -0.2]])
    out = dequantize(x, generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    levels = torch.floor(out * QUANT_LEVELS)
    expected = torch.round(x.clamp(0, 1) * (QUANT_LEVELS - 1))
    assert torch.equal(levels, expected)


def test_paper_preset_sizes():
    config = flow_config("paper")
    assert config["shape"] == [96, 112]
    assert (config["levels"], config["steps_per_level"]) == (4, 7)
    assert config["hidden_channels"] == 96
    assert config["num_res_blocks"] == 3
    torch.manual_seed(0)
    flow = SliceFlow(config)
    n = count_parameters(flow)
    assert 14.0e6 < n < 15.0e6
    # 4 levels, each: squeeze + 7 x (actnorm, 1x1 conv, coupling) + final 1x1 conv
    levels = flow.transform._transforms
    assert len(levels) == 4
    assert all(len(level._transforms) == 1 + 3 * 7 + 1 for level in levels)
