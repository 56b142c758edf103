"""The harmonization methods: one registry of names, parameter types and runners.

Modelled on nitransforms' registry of file formats: :data:`METHODS` maps each method's name
to a :class:`Method` (its frozen parameter type and the function that runs it). The
command line (``--method``'s choices and flags), the Harmonize interface, a prior bundle's
``harmonization`` record and the docs all read it, and nothing else spells the list.

Parameters are resolved once per image by :func:`resolve_params`, in this order: the
parameter type's defaults, the prior bundle's record (its calibration: measured on its
validation images by :func:`~bids_app.harmonize.calibration.calibrate_bundle`), then the
user's overrides (command-line flags, already typed: ``--beta1 auto`` arrives as
``auto_beta1=True``).

``paper``'s beta1 = 1000 belongs to the paper's 144 x 176 slice grid: the step it takes is
``beta1 grad NCC = eta (|x| / |xs| xs - NCC x)`` with ``eta = beta1 / |x|^2``, and
``|x|^2`` (a sum over pixels) grows with the number of pixels, so on our 96 x 112 grid the
same step is beta1 = 1000 * 96 * 112 / (144 * 176) = 424.2
(:func:`bids_app.harmonize.paper.grid_beta1`). ``slice_sigma`` (slices) smooths Algorithm
1's per-slice intensity maps across slices
(:func:`bids_app.harmonize.intensity.smooth_slice_maps`); ``auto_beta1`` (``--beta1
auto``) chooses beta1 per image among ``beta1_factors`` times the prior's value
(:mod:`bids_app.harmonize.beta1`). docs/method.md gives the measurements behind each value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

#: The method a bundle without a record of its own is harmonized with.
DEFAULT_METHOD = "flow-intensity"

#: How ``flow-intensity`` picks its map (``--intensity-model``).
SELECTIONS = ("auto", "power", "quantile")

#: Whether ``flow-intensity`` divides out a smooth field beyond the population's
#: (``--bias-field``).
BIAS_FIELD = ("auto", "off")

#: Knots of the per-slice intensity maps that carry a result to native space.
LUT_KNOTS = 33


@dataclass(frozen=True)
class FlowIntensityParams:
    """``flow-intensity``: one monotone map of the volume (docs/method.md).

    ``knots``/``quantile_knots`` are the knots of the prior's power map and of the
    population quantile map; ``evaluations`` the likelihood evaluations of the power
    search on the ``scoring_slices`` slices holding most head; ``gamma_bias`` and
    ``gate_bits`` the prior's calibrated bias and in-domain gate, ``gamma_slope`` how much
    farther than a power shift its estimate moves (1: as far; bundles calibrated before
    session 9 record none); ``selection``
    (``--intensity-model``) forces a candidate; ``veto_bits``/``veto_consistency`` bound
    the prior's veto of the quantile map. ``span_pixels`` is the change of variables' span
    term that ``gamma_bias`` and ``gate_bits`` were calibrated with (``"counted"``: the
    non-background pixels, as every calibration since session 7 records; ``"all"``: all
    pixels, for bundles calibrated before). ``bias_field`` (``--bias-field``): ``"auto"`` (the
    default) divides a smooth field out of the mapped image when it is beyond the target
    population's (:mod:`~bids_app.harmonize.field`; a bundle without the
    ``population_field`` record has none to compare with), ``"off"`` never.
    ``population``, ``population_brain``, ``stripped`` and ``population_field`` are
    calibration records of the bundle (the
    target population's quantiles in the head and in the brain; the prior's bias on
    brain-masked images; the population's fields).
    """

    knots: int = 33
    quantile_knots: int = 65
    evaluations: int = 14
    scoring_slices: int = 24
    gamma_bias: float = 1.0
    gamma_slope: float = 1.0
    gate_bits: float = 0.0
    selection: str = "auto"
    veto_bits: float = 0.25
    veto_consistency: float = 3.0
    span_pixels: str = "all"
    bias_field: str = "auto"
    population: dict | None = field(default=None, repr=False)
    population_brain: dict | None = field(default=None, repr=False)
    stripped: dict | None = field(default=None, repr=False)
    population_field: dict | None = field(default=None, repr=False)

    #: Fields that are calibration records, not hyperparameters (kept out of sidecars).
    records = ("population", "population_brain", "stripped", "population_field")

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown intensity model {self.selection!r}; choose one of "
                             f"{SELECTIONS}")
        if self.bias_field not in BIAS_FIELD:
            raise ValueError(f"unknown bias-field mode {self.bias_field!r}; choose one of "
                             f"{BIAS_FIELD}")
        if self.span_pixels not in ("counted", "all"):
            raise ValueError(f"span_pixels must be 'counted' or 'all', not {self.span_pixels!r}")


@dataclass(frozen=True)
class PaperParams:
    """``paper``: Algorithm 1 of the paper (docs/method.md).

    ``alpha`` (latent shrinkage), ``beta1`` (cosine-similarity step), ``beta2`` (edge step),
    ``iterations``; ``slice_sigma`` smooths the per-slice maps across slices; with
    ``auto_beta1`` beta1 is chosen per image among ``beta1_factors`` times ``beta1`` on the
    ``scoring_slices`` slices holding most head.
    """

    alpha: float = 1e-3
    beta1: float = 424.2
    beta2: float = 1e-3
    iterations: int = 10
    slice_sigma: float = 4.0
    auto_beta1: bool = False
    beta1_factors: tuple = (0.5, 1.0, 2.0)
    scoring_slices: int = 24

    records = ()


@dataclass
class Problem:
    """One volume to harmonize, as every method's runner receives it.

    ``volume`` is the source on the reference grid; ``slices``, ``low``, ``high`` and
    ``valid`` its per-slice normalization (:func:`~bids_app.preprocess.slices.
    normalize_slices`); ``evidence`` what the input is (:func:`~bids_app.harmonize.
    evidence.assess_input`); ``device`` where the prior runs; ``progress`` whether to
    show a bar.
    """

    volume: object
    slices: object
    low: object
    high: object
    valid: object
    bundle: object
    evidence: dict
    device: object
    progress: bool = False


@dataclass
class Outcome:
    """What a method's runner returns.

    ``harmonized`` slices (per-slice normalized units), ``lut`` their per-slice intensity
    maps (``(Z, K)``, for the way back to native space), ``decision`` (what the method
    decided for this image: recorded apart from the hyperparameters), ``reasons`` for an
    out-of-domain flag raised by the method, and ``global_map`` (``{"values", "scale"}``
    for a method that applies one map to the whole volume, else None).
    """

    harmonized: object
    lut: object
    decision: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)
    global_map: dict | None = None


@dataclass(frozen=True)
class Method:
    """A harmonization method: its name, parameter type, runner and one-line summary.

    ``runner`` is ``"module:function"`` (imported when first run, so that the registry
    itself imports neither torch nor the methods' code); it is called as
    ``function(problem, params)`` with a :class:`Problem` and returns an :class:`Outcome`.
    """

    name: str
    params: type
    runner: str
    summary: str

    def run(self, problem, params):
        from importlib import import_module

        module, function = self.runner.split(":")
        run: Callable = getattr(import_module(module), function)
        return run(problem, params)

    @property
    def options(self):
        """Names of the parameters a user may set (not the calibration records)."""
        return tuple(f.name for f in dataclasses.fields(self.params)
                     if f.name not in self.params.records)


METHODS = {
    m.name: m
    for m in (
        Method("flow-intensity", FlowIntensityParams,
               "bids_app.harmonize.selection:run_flow_intensity",
               "one monotone intensity map of the volume, chosen by the prior's likelihood "
               "and checked against the target population (the default)"),
        Method("paper", PaperParams, "bids_app.harmonize.paper_volume:run_paper",
               "Algorithm 1 of Jeong et al. (ICCV 2023), per slice"),
    )
}


def get_method(name):
    """The :class:`Method` called ``name`` (ValueError naming the choices otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {tuple(METHODS)}") from None


def bundle_method(bundle):
    """The method a prior bundle records as its default (:data:`DEFAULT_METHOD` if none)."""
    return (bundle.harmonization or {}).get("method") or DEFAULT_METHOD


def check_overrides(method, overrides):
    """Refuse overrides ``method`` has no parameter for (ValueError naming them)."""
    spec = get_method(method)
    unknown = sorted(set(overrides or {}) - set(spec.options))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a parameter of --method {method} "
                         f"(its parameters: {', '.join(spec.options)})")


def resolve_params(bundle, method=None, overrides=None):
    """The parameters of ``method`` for ``bundle``: defaults < bundle record < overrides.

    ``method`` None is the bundle's own (:func:`bundle_method`). The bundle's record may
    hold more than the parameter type knows (validation evidence, keys of a newer version):
    those stay in the bundle. Returns ``(method, params)``.
    """
    method = method or bundle_method(bundle)
    spec = get_method(method)
    check_overrides(method, overrides)
    names = {f.name for f in dataclasses.fields(spec.params)}
    record = {k: v for k, v in ((bundle.harmonization or {}).get(method) or {}).items()
              if k in names}
    if "beta1_factors" in record:
        record["beta1_factors"] = tuple(record["beta1_factors"])
    return method, dataclasses.replace(spec.params(**record), **(overrides or {}))


def hyperparameters(params):
    """``params`` as a JSON-ready dict, without the calibration records (for sidecars)."""
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(params).items() if k not in params.records}


def default_record():
    """The ``harmonization`` record of a new bundle: every method's defaults."""
    record = {"method": DEFAULT_METHOD}
    for name, spec in METHODS.items():
        record[name] = hyperparameters(spec.params())
    return record


__all__ = ["DEFAULT_METHOD", "LUT_KNOTS", "METHODS", "SELECTIONS", "FlowIntensityParams", "Method",
           "Outcome", "PaperParams", "Problem", "bundle_method", "check_overrides",
           "default_record", "get_method", "hyperparameters", "resolve_params"]
