"""Build the nipype workflow from the validated command-line options."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..harmonize.methods import bundle_method

LOGGER = logging.getLogger("blindharmony")


@dataclass
class PriorInfo:
    """What the workflow needs to know about the prior bundle (without loading it again)."""

    path: str | None
    name: str
    sha256: str
    space: str
    resolution: float
    version: str | None = None
    method: str = "flow-intensity"

    @classmethod
    def from_bundle(cls, bundle, path=None):
        """Describe a loaded :class:`~bids_app.flow.bundle.PriorBundle`."""
        return cls(
            path=None if path is None else str(path),
            name=str(bundle.name),
            sha256=str(bundle.sha256),
            space=str(bundle.space),
            resolution=float(bundle.resolution),
            version=getattr(bundle, "software_version", None),
            method=bundle_method(bundle),
        )

    def record(self):
        """The ``Prior`` entry of the sidecars."""
        record = {"Name": self.name, "Version": self.version, "SHA256": self.sha256}
        return {k: v for k, v in record.items() if v is not None}


def load_prior(path, *, device="cpu"):
    """Load (and so check) the prior before anything is written; return :class:`PriorInfo`.

    Raises :class:`~bids_app.errors.PriorError` for a missing or corrupt bundle.
    """
    from ..flow.bundle import load_bundle

    return PriorInfo.from_bundle(load_bundle(path, device=device), path)


def cli_overrides(opts, method):
    """The parameters given on the command line that ``method`` has.

    Each method has its own (:data:`~bids_app.harmonize.methods.METHODS`: ``--alpha``,
    ``--beta1``, ``--beta2``, ``--iterations`` and ``--slice-smoothing`` are ``paper``'s,
    ``--intensity-model`` and ``--bias-field`` are ``flow-intensity``'s); the others are
    ignored with a warning.
    """
    from ..harmonize.methods import get_method
    from .parser import PARAMETER_FLAGS

    options = get_method(method).options
    ignored = sorted({PARAMETER_FLAGS.get(k, k) for k in opts.overrides if k not in options})
    if ignored:
        LOGGER.warning("%s ignored with --method %s", ", ".join(ignored), method)
    return {k: v for k, v in opts.overrides.items() if k in options}


def resolve_device(device):
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    from ..errors import UsageError

    if device == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise UsageError("--device cuda: no CUDA device is available")
    return "cuda" if available else "cpu"


def build_workflow(opts, subject_files, *, prior=None, device=None):
    """The participant-level workflow for ``opts`` (:class:`~bids_app.cli.parser.Options`).

    Parameters
    ----------
    opts : Options
        Validated command-line options.
    subject_files : dict
        Participant label -> list of T1w paths.
    prior : PriorInfo or None
        The prior, when already loaded by the caller; loaded here otherwise.
    device : str or None
        The resolved torch device; resolved from ``opts.device`` otherwise.
    """
    from ..workflows.base import init_blindharmony_wf

    if prior is None:
        prior = load_prior(opts.prior)
    if device is None:
        device = resolve_device(opts.device)
    method = opts.method or prior.method
    return init_blindharmony_wf(
        subject_files=subject_files,
        bids_dir=str(opts.bids_dir),
        output_dir=str(opts.output_dir),
        work_dir=str(opts.work_dir),
        prior_path=prior.path,
        space=prior.space,
        resolution=prior.resolution,
        prior=prior.record(),
        method=method,
        params=cli_overrides(opts, method),
        device=device,
        registration_engine=opts.registration_engine,
        omp_nthreads=opts.omp_nthreads,
    )
