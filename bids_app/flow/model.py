"""The flow prior: a Glow-like multiscale Neural Spline Flow on 2D slices, built from nflows.

Each of ``levels`` scales squeezes the image (2x2 space to depth), runs
``steps_per_level`` steps of actnorm, an invertible 1x1 convolution (LU) and a
rational-quadratic spline coupling (Durkan et al., 2019) whose parameters come from a
residual convolutional network with batch norm, closes with one more 1x1 convolution,
and factors out half of its channels (Dinh et al., 2017; Kingma & Dhariwal, 2018).

The flow maps a slice ``x`` in [0, 1] (shape ``(B, 1, H, W)``) to a flat Gaussian latent
``z`` (shape ``(B, H * W)``); :meth:`SliceFlow.forward` is ``f`` of Algorithm 1 and
:meth:`SliceFlow.inverse` is ``f^-1``.
"""

from __future__ import annotations

import math
from copy import deepcopy

import numpy as np
import torch
from nflows.distributions.normal import StandardNormal
from nflows.nn.nets import ConvResidualNet
from nflows.transforms import (
    ActNorm,
    CompositeTransform,
    MultiscaleCompositeTransform,
    OneByOneConvolution,
    PiecewiseRationalQuadraticCouplingTransform,
    SqueezeTransform,
)
from torch import nn

#: Named architectures. ``paper`` is the network of Jeong et al. (ICCV 2023);
#: ``cpu`` is the default, sized by measurement on 2 CPU cores (docs/prior.md).
PRESETS = {
    "paper": {
        "levels": 4,
        "steps_per_level": 7,
        "hidden_channels": 96,
        "num_res_blocks": 3,
    },
    "cpu": {
        "levels": 4,
        "steps_per_level": 3,
        "hidden_channels": 32,
        "num_res_blocks": 1,
    },
    "cpu-4mm": {
        "levels": 3,
        "steps_per_level": 4,
        "hidden_channels": 64,
        "num_res_blocks": 1,
    },
    "cpu-8mm": {
        "levels": 2,
        "steps_per_level": 6,
        "hidden_channels": 64,
        "num_res_blocks": 1,
    },
    "tiny": {
        "levels": 2,
        "steps_per_level": 1,
        "hidden_channels": 8,
        "num_res_blocks": 1,
    },
}

#: Settings shared by every preset (the paper's spline and subnetwork choices).
COMMON = {
    "num_bins": 8,
    "tail_bound": 3.0,
    "tails": "linear",
    "use_batch_norm": True,
    "dropout": 0.0,
}

#: Intensities are quantized to this many levels before dequantization (12 bit).
QUANT_LEVELS = 4096


def flow_config(preset="cpu", *, shape=(96, 112), **overrides):
    """Return the full architecture configuration of a named preset.

    Parameters
    ----------
    preset : str
        A key of :data:`PRESETS`.
    shape : tuple of int
        Slice size ``(H, W)``; both must be divisible by ``2 ** levels``.
    **overrides
        Any architecture key to change (e.g. ``hidden_channels=48``).

    Returns
    -------
    dict
        A JSON-serializable configuration accepted by :class:`SliceFlow`.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown flow preset {preset!r}; choose one of {sorted(PRESETS)}.")
    config = {"preset": preset, **COMMON, **PRESETS[preset], **overrides}
    config["shape"] = [int(s) for s in shape]
    _check_config(config)
    return config


def _check_config(config):
    factor = 2 ** config["levels"]
    height, width = config["shape"]
    if height % factor or width % factor:
        raise ValueError(
            f"Slice shape {height}x{width} is not divisible by 2**levels = {factor}."
        )


class _Conv1x1(OneByOneConvolution):
    """nflows' LU 1x1 convolution, made device-safe on torch >= 2.

    nflows 0.14 calls the deprecated ``torch.triangular_solve`` and builds its identity
    matrix on the CPU; this subclass uses :func:`torch.linalg.solve_triangular` with
    tensors on the parameters' device and dtype.
    """

    def inverse_no_cache(self, inputs):
        lower, upper = self._create_lower_upper()
        outputs = (inputs - self.bias).t()
        outputs = torch.linalg.solve_triangular(lower, outputs, upper=False, unitriangular=True)
        outputs = torch.linalg.solve_triangular(upper, outputs, upper=True)
        logabsdet = -self.logabsdet() * inputs.new_ones(inputs.shape[0])
        return outputs.t(), logabsdet

    def weight_inverse(self):
        lower, upper = self._create_lower_upper()
        identity = torch.eye(self.features, device=lower.device, dtype=lower.dtype)
        lower_inverse = torch.linalg.solve_triangular(
            lower, identity, upper=False, unitriangular=True
        )
        return torch.linalg.solve_triangular(upper, lower_inverse, upper=True)


def _coupling(channels, parity, config):
    mask = [1 if (i + parity) % 2 else 0 for i in range(channels)]

    def make_net(in_channels, out_channels):
        return ConvResidualNet(
            in_channels=in_channels,
            out_channels=out_channels,
            hidden_channels=config["hidden_channels"],
            num_blocks=config["num_res_blocks"],
            use_batch_norm=config["use_batch_norm"],
            dropout_probability=config["dropout"],
        )

    return PiecewiseRationalQuadraticCouplingTransform(
        mask=mask,
        transform_net_create_fn=make_net,
        num_bins=config["num_bins"],
        tails=config["tails"],
        tail_bound=config["tail_bound"],
    )


def _build_transform(config):
    channels, (height, width) = 1, config["shape"]
    multiscale = MultiscaleCompositeTransform(num_transforms=config["levels"])
    for _ in range(config["levels"]):
        channels, height, width = channels * 4, height // 2, width // 2
        steps = [SqueezeTransform()]
        for step in range(config["steps_per_level"]):
            steps += [ActNorm(channels), _Conv1x1(channels), _coupling(channels, step, config)]
        steps.append(_Conv1x1(channels))
        next_shape = multiscale.add_transform(
            CompositeTransform(steps), (channels, height, width)
        )
        if next_shape is not None:
            channels, height, width = next_shape
    return multiscale


class SliceFlow(nn.Module):
    """Normalizing flow prior over min-max normalized 2D slices.

    Parameters
    ----------
    config : dict
        Architecture configuration, see :func:`flow_config`.

    Notes
    -----
    Inputs are slices in [0, 1]; internally the flow sees ``x - 0.5`` (a volume-preserving
    shift), so log-densities are densities of ``x`` itself.
    """

    def __init__(self, config):
        super().__init__()
        _check_config(config)
        self.config = deepcopy(config)
        height, width = config["shape"]
        self.shape = (1, height, width)
        self.dim = height * width
        self.transform = _build_transform(config)
        self.base = StandardNormal((self.dim,))

    @property
    def device(self):
        return next(self.parameters()).device

    def forward(self, x):
        """Map slices ``(B, 1, H, W)`` to latents ``(B, H*W)``; return ``(z, logabsdet)``."""
        return self.transform(x - 0.5)

    def inverse(self, z):
        """Map latents ``(B, H*W)`` back to slices ``(B, 1, H, W)``."""
        x, _ = self.transform.inverse(z)
        return x.reshape(-1, *self.shape) + 0.5

    def log_prob(self, x):
        """Log-density (nats) of each slice in ``x``: shape ``(B,)``."""
        z, logabsdet = self.forward(x)
        return self.base.log_prob(z) + logabsdet

    def bits_per_dim(self, x):
        """Bits per pixel of 12-bit quantized slices, the usual flow metric: shape ``(B,)``."""
        return self._bits(self.log_prob(x))

    def _bits(self, log_prob):
        return -log_prob / (self.dim * math.log(2.0)) + math.log2(QUANT_LEVELS)

    @torch.no_grad()
    def evaluate(self, x, *, batch_size=32):
        """Bits per pixel and latent RMS norm of each slice of ``x``, in batches.

        Returns two numpy arrays ``(B,)``: :meth:`bits_per_dim`, and ``|z| / sqrt(D)``, close
        to 1 for slices the prior knows (its base is a standard normal).
        """
        bits, norm = [], []
        for start in range(0, len(x), batch_size):
            z, logabsdet = self.forward(x[start : start + batch_size])
            bits.append(self._bits(self.base.log_prob(z) + logabsdet))
            norm.append(z.norm(dim=1) / math.sqrt(self.dim))
        if not bits:
            return np.zeros(0), np.zeros(0)
        return torch.cat(bits).cpu().numpy(), torch.cat(norm).cpu().numpy()

    @torch.no_grad()
    def sample(self, n, *, temperature=1.0, generator=None):
        """Draw ``n`` slices from the prior (eval mode), shape ``(n, 1, H, W)``."""
        z = torch.randn(n, self.dim, generator=generator, device=self.device)
        return self.inverse(temperature * z)


def dequantize(x, *, generator=None):
    """Quantize slices in [0, 1] to 12 bits and add uniform noise (training only)."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (torch.round(x.clamp(0, 1) * (QUANT_LEVELS - 1)) + noise) / QUANT_LEVELS


def count_parameters(module):
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "PRESETS",
    "QUANT_LEVELS",
    "SliceFlow",
    "count_parameters",
    "dequantize",
    "flow_config",
]
