"""The prior bundle: one file with everything harmonization needs.

A bundle is a ``torch.save`` dictionary that loads with ``weights_only=True`` (no code is
unpickled). It holds the flow's architecture and weights, the reference space (template
image on the slice grid, its affine, the space's name and resolution), ``x0`` (the mean
normalized training slice at every slice position), the preprocessing settings, a
description of the training data, validation bits/dim, the harmonization defaults and
the version of the software that wrote it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from ..__about__ import __version__
from ..errors import MissingInputError, PriorError
from .model import SliceFlow

FORMAT = "blindharmony-prior"
#: Bundle layouts this version reads. Bump when the layout or the model code changes in a
#: way that old weights no longer fit.
FORMAT_VERSION = 1

#: File name of the shipped default prior inside ``bids_app/data/prior``.
DEFAULT_PRIOR = "ixihh_cpu.pt"


def default_prior_path():
    """Path of the prior bundle shipped with the package."""
    return Path(str(resources.files("bids_app") / "data" / "prior" / DEFAULT_PRIOR))


@dataclass
class PriorBundle:
    """A trained flow prior and the reference space it lives in.

    Attributes
    ----------
    flow : SliceFlow
        The flow in eval mode.
    reference : nibabel.Nifti1Image
        Reference template on the slice grid (RAS).
    space : str
        Name of the reference space (a BIDS ``space-`` label).
    x0 : torch.Tensor
        ``(Z, 1, H, W)`` mean normalized training slice per slice position.
    """

    flow: SliceFlow
    reference: nb.Nifti1Image
    space: str
    x0: torch.Tensor
    name: str = "unnamed"
    preprocessing: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    harmonization: dict = field(default_factory=dict)
    software_version: str = __version__
    path: str | None = None
    sha256: str | None = None

    @property
    def resolution(self):
        """Voxel size of the slice grid in mm (isotropic)."""
        return float(np.round(np.linalg.norm(self.reference.affine[:3, 0]), 4))

    @property
    def bits_per_dim(self):
        """Validation bits/dim recorded at training time."""
        return self.metrics.get("val_bits_per_dim")

    def sample(self, n, *, temperature=1.0, seed=None):
        """Draw ``n`` slices from the prior: ``(n, 1, H, W)`` tensor."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.flow.device).manual_seed(seed)
        return self.flow.sample(n, temperature=temperature, generator=generator)

    def to(self, device):
        """Move the flow and ``x0`` to ``device``."""
        self.flow.to(device)
        self.x0 = self.x0.to(device)
        return self

    def save(self, path):
        """Write the bundle to ``path`` (atomically)."""
        path = Path(path)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "software_version": __version__,
            "name": self.name,
            "flow_config": self.flow.config,
            "state_dict": {k: v.detach().cpu() for k, v in self.flow.state_dict().items()},
            "reference": {
                "space": self.space,
                "affine": torch.as_tensor(self.reference.affine, dtype=torch.float64),
                "template": torch.as_tensor(
                    np.asanyarray(self.reference.dataobj, dtype=np.float32)
                ).to(torch.float16),
            },
            "x0": self.x0.detach().cpu().to(torch.float16),
            "preprocessing": self.preprocessing,
            "training": self.training,
            "metrics": self.metrics,
            "harmonization": self.harmonization,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_payload(path):
    """Read a bundle file's dictionary, checking it is a bundle this version can use."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: prior bundle not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PriorError(
            f"{path}: not a readable prior bundle ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'corrupt file'})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PriorError(f"{path}: not a BlindHarmony prior bundle")
    found = payload.get("format_version")
    if found != FORMAT_VERSION:
        raise PriorError(
            f"{path}: prior bundle format {found} was written by blindharmony "
            f"{payload.get('software_version', '?')}; this blindharmony {__version__} reads "
            f"format {FORMAT_VERSION}. Use a matching blindharmony version or retrain the "
            "prior with blindharmony-train."
        )
    return payload


def load_bundle(path=None, *, device="cpu"):
    """Load a prior bundle.

    Parameters
    ----------
    path : str or Path, optional
        Bundle file; ``None`` loads the default prior shipped with the package.
    device : str or torch.device
        Where to put the flow and ``x0``.

    Returns
    -------
    PriorBundle

    Raises
    ------
    MissingInputError
        The file does not exist.
    PriorError
        The file is corrupt, not a bundle, or written in an incompatible format.
    """
    path = Path(path) if path is not None else default_prior_path()
    payload = read_payload(path)
    try:
        flow = SliceFlow(payload["flow_config"])
        flow.load_state_dict(payload["state_dict"])
        ref = payload["reference"]
        reference = nb.Nifti1Image(
            ref["template"].float().numpy(), ref["affine"].double().numpy()
        )
        x0 = payload["x0"].float()
        if tuple(x0.shape) != (reference.shape[2], 1, *flow.config["shape"]):
            raise ValueError(
                f"x0 has shape {tuple(x0.shape)}, the slice grid is {reference.shape}"
            )
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise PriorError(
            f"{path}: prior bundle is incomplete or does not fit this model code "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from None
    flow.eval()
    bundle = PriorBundle(
        flow=flow,
        reference=reference,
        space=ref["space"],
        x0=x0,
        name=payload.get("name", path.stem),
        preprocessing=payload.get("preprocessing", {}),
        training=payload.get("training", {}),
        metrics=payload.get("metrics", {}),
        harmonization=payload.get("harmonization", {}),
        software_version=payload.get("software_version", "?"),
        path=str(path),
        sha256=_sha256(path),
    )
    return bundle.to(device)
