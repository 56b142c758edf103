"""Command-line arguments of the ``blindharmony`` BIDS App.

:func:`get_parser` builds the :mod:`argparse` parser (BIDS-Apps positionals, fMRIPrep
spellings and aliases); :func:`parse_args` parses and checks the arguments and returns
an :class:`Options` of validated values, raising a :class:`~bids_app.errors.BlindHarmonyError`
(with its exit code) on the first problem. Nothing here imports nipype or torch and
nothing is written to disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..__about__ import __packagename__, __version__
from ..errors import MissingInputError, UsageError
from ..harmonize.methods import BIAS_FIELD, METHODS, SELECTIONS
from ..utils.bids import check_bids_dir, check_participants, load_bids_filters, strip_label

DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("auto", "simpleitk", "flirt")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (exit 64, not 2)."""

    def error(self, message):
        raise UsageError(message)


def _positive_int(value):
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _nonnegative_float(value):
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return number


def _beta1(value):
    """``--beta1``: a number, or ``auto`` (chosen per image)."""
    return "auto" if value == "auto" else _nonnegative_float(value)


def _positive_float(value):
    number = _nonnegative_float(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return number


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where the text states its own or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def get_parser():
    """The argument parser of ``blindharmony``."""
    parser = _Parser(
        prog=__packagename__,
        description="BlindHarmony: blind harmonization of T1-weighted MRI with a "
        "normalizing-flow prior, as a BIDS App.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the input BIDS dataset")
    parser.add_argument(
        "output_dir",
        type=Path,
        help="the output folder (a BIDS-Derivatives dataset; may be "
        "<bids_dir>/derivatives/<name>)",
    )
    parser.add_argument(
        "analysis_level", choices=["participant", "group"], help="processing stage"
    )

    g_bids = parser.add_argument_group("Selecting the input")
    g_bids.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        metavar="LABEL",
        help="participants to process (with or without 'sub-'); default: all",
    )
    g_bids.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        metavar="LABEL",
        help="sessions to process (with or without 'ses-'); default: all",
    )
    g_bids.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        dest="bids_filter_file",
        type=Path,
        metavar="FILE",
        help='JSON file of pybids filters for the T1w query, e.g. {"t1w": {"run": 1}}',
    )
    g_bids.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        dest="skip_bids_validation",
        action="store_true",
        help="do not run the BIDS validator on the input",
    )

    g_perf = parser.add_argument_group("Resources")
    g_perf.add_argument(
        "--nprocs",
        "--nthreads",
        "--n_cpus",
        "--n-cpus",
        dest="nprocs",
        type=_positive_int,
        help="maximum number of processes/threads in total (default: CPUs available)",
    )
    g_perf.add_argument(
        "--omp-nthreads",
        "--omp_nthreads",
        dest="omp_nthreads",
        type=_positive_int,
        help="threads per process (registration, torch) (default: min(nprocs, 8))",
    )
    g_perf.add_argument(
        "--mem-gb",
        "--mem_gb",
        "--mem",
        dest="mem_gb",
        type=_positive_float,
        help="memory limit in GB for the MultiProc scheduler",
    )
    g_perf.add_argument(
        "--use-plugin",
        "--use_plugin",
        dest="use_plugin",
        type=Path,
        metavar="FILE",
        help="nipype plugin configuration (YAML: plugin, plugin_args)",
    )
    g_perf.add_argument(
        "-w",
        "--work-dir",
        "--work_dir",
        dest="work_dir",
        type=Path,
        help="folder for intermediate results (default: ./work)",
    )

    g_model = parser.add_argument_group("Harmonization")
    g_model.add_argument(
        "--prior",
        type=Path,
        metavar="FILE",
        help="prior bundle (default: the prior shipped with BlindHarmony)",
    )
    g_model.add_argument("--device", choices=DEVICES, default="auto", help="torch device")
    g_model.add_argument(
        "--method", choices=tuple(METHODS), default=None,
        help="harmonization method (default: the one the prior records, flow-intensity "
        "for the shipped prior): "
        + "; ".join(f"{name}: {m.summary}" for name, m in METHODS.items()),
    )
    g_model.add_argument(
        "--alpha", type=_nonnegative_float, help="prior weight (default: from the prior)"
    )
    g_model.add_argument(
        "--beta1",
        type=_beta1,
        metavar="VALUE|auto",
        help="paper only: data term weight (default: from the prior); 'auto' chooses it per "
        "image among 0.5, 1 and 2 times the prior's value, by the prior's likelihood of the "
        "source (docs/method.md)",
    )
    g_model.add_argument(
        "--beta2", type=_nonnegative_float, help="edge term weight (default: from the prior)"
    )
    g_model.add_argument(
        "--iterations", type=_positive_int, help="iterations (default: from the prior)"
    )
    g_model.add_argument(
        "--slice-smoothing",
        "--slice_smoothing",
        dest="slice_smoothing",
        type=_nonnegative_float,
        metavar="SLICES",
        help="paper only: Gaussian width, in slices, over which the per-slice intensity maps "
        "are smoothed across slices against striping (default: from the prior, 4; 0: off)",
    )
    g_model.add_argument(
        "--intensity-model",
        "--intensity_model",
        dest="intensity_model",
        choices=SELECTIONS,
        help="flow-intensity only: how the contrast change is chosen. auto (default): the "
        "prior's estimate (identity or a power map) when it is consistent with the target "
        "population's intensity quantiles, else the population quantile map; power or "
        "quantile force one of them",
    )
    g_model.add_argument(
        "--bias-field",
        "--bias_field",
        dest="bias_field",
        choices=BIAS_FIELD,
        help="flow-intensity only: auto (default) divides a smooth (B1-like) field out of "
        "the harmonized image when its field is farther from the target population's than "
        "95 %% of the prior's training images are; off never does (docs/method.md)",
    )
    g_model.add_argument(
        "--registration-engine",
        "--registration_engine",
        dest="registration_engine",
        choices=ENGINES,
        default="auto",
        help="affine registration to the reference: FSL FLIRT when installed (auto), "
        "or SimpleITK",
    )

    g_other = parser.add_argument_group("Other")
    g_other.add_argument(
        "--version", action="version", version=f"{__packagename__} v{__version__}"
    )
    g_other.add_argument(
        "-v", "--verbose", dest="verbose", action="count", default=0,
        help="more log messages (-vv for debug)",
    )
    g_other.add_argument(
        "--write-graph", "--write_graph", dest="write_graph", action="store_true",
        help="also write the workflow graph (SVG, in the work folder)",
    )
    g_other.add_argument(
        "--stop-on-first-crash", "--stop_on_first_crash", dest="stop_on_first_crash",
        action="store_true", help="stop at the first node that fails",
    )
    g_other.add_argument(
        "--notrack", action="store_true",
        help="accepted for fMRIPrep familiarity; BlindHarmony never tracks usage",
    )
    return parser


@dataclass
class Options:
    """The validated command-line options (absolute paths, labels without prefixes)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: list | None = None
    session_label: list | None = None
    bids_filters: dict = field(default_factory=dict)
    skip_bids_validation: bool = False
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: dict | None = None
    prior: Path | None = None
    device: str = "auto"
    method: str | None = None
    overrides: dict = field(default_factory=dict)
    registration_engine: str = "auto"
    verbose: int = 0
    write_graph: bool = False
    stop_on_first_crash: bool = False


#: Command-line flags of the methods' parameters (``dest`` -> the parameter's name).
PARAMETER_FLAGS = {"alpha": "--alpha", "beta1": "--beta1", "auto_beta1": "--beta1",
                   "beta2": "--beta2", "iterations": "--iterations",
                   "slice_sigma": "--slice-smoothing", "selection": "--intensity-model",
                   "bias_field": "--bias-field"}


def _overrides(ns):
    """The methods' parameters given on the command line, typed (``--beta1 auto`` is the
    ``auto_beta1`` switch); parameters not given are absent."""
    given = {"alpha": ns.alpha, "beta2": ns.beta2, "iterations": ns.iterations,
             "slice_sigma": ns.slice_smoothing, "selection": ns.intensity_model,
             "bias_field": ns.bias_field}
    overrides = {k: v for k, v in given.items() if v is not None}
    if ns.beta1 == "auto":
        overrides["auto_beta1"] = True  # the candidates are factors of the prior's beta1
    elif ns.beta1 is not None:
        overrides.update(beta1=ns.beta1, auto_beta1=False)  # a beta1 given is a beta1 fixed
    return overrides


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _is_within(path, folder):
    return path == folder or folder in path.parents


def _load_plugin(path):
    import yaml

    if not path.is_file():
        raise MissingInputError(f"nipype plugin file not found: {path}")
    try:
        plugin = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"--use-plugin {path} is not valid YAML: {err}") from None
    if not isinstance(plugin, dict) or not isinstance(plugin.get("plugin"), str):
        raise UsageError(f"--use-plugin {path}: expected a mapping with a 'plugin' name")
    args = plugin.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise UsageError(f"--use-plugin {path}: 'plugin_args' must be a mapping")
    return {"plugin": plugin["plugin"], "plugin_args": args}


def _check_folders(ns):
    """``(bids_dir, output_dir, work_dir)``, absolute, once checked against each other."""
    bids_dir = check_bids_dir(ns.bids_dir)
    output_dir = ns.output_dir.absolute()
    if output_dir == bids_dir:
        raise UsageError(
            "output_dir must differ from bids_dir (use e.g. <bids_dir>/derivatives/blindharmony)"
        )
    if bids_dir in output_dir.parents and not _is_within(
        output_dir, bids_dir / "derivatives"
    ):
        raise UsageError(
            f"output_dir {output_dir} is inside the BIDS dataset; put it under "
            f"{bids_dir / 'derivatives'} or outside the dataset"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output_dir {output_dir} exists and is not a folder")

    work_dir = (ns.work_dir or Path("work")).absolute()
    if _is_within(work_dir, bids_dir):
        raise UsageError(
            f"the work folder {work_dir} is inside the BIDS dataset; choose another "
            "with -w/--work-dir"
        )
    if _is_within(work_dir, output_dir):
        raise UsageError(
            f"the work folder {work_dir} is inside output_dir; choose another with "
            "-w/--work-dir"
        )
    return bids_dir, output_dir, work_dir


def _labels(ns, bids_dir):
    """``(participant_label, session_label)``: sorted, unique, prefix-free, or None."""
    participant_label = (
        sorted(dict.fromkeys(strip_label(s, "sub-") for s in ns.participant_label))
        if ns.participant_label
        else None
    )
    if participant_label:
        check_participants(bids_dir, participant_label)
    session_label = (
        sorted(dict.fromkeys(strip_label(s, "ses-") for s in ns.session_label))
        if ns.session_label
        else None
    )
    return participant_label, session_label


def _prior(ns):
    """The prior bundle's absolute path (which must exist), or None for the default."""
    if ns.prior is None:
        return None
    prior = ns.prior.absolute()
    if not prior.exists():
        raise MissingInputError(f"prior bundle not found: {prior}")
    return prior


def _resources(ns):
    """``(nprocs, omp_nthreads, plugin)``: processes, threads per process, plugin settings."""
    nprocs = ns.nprocs or _cpu_count()
    omp_nthreads = ns.omp_nthreads or min(nprocs, 8)
    if omp_nthreads > nprocs:
        raise UsageError(
            f"--omp-nthreads ({omp_nthreads}) cannot exceed --nprocs ({nprocs})"
        )
    plugin = _load_plugin(ns.use_plugin.absolute()) if ns.use_plugin else None
    return nprocs, omp_nthreads, plugin


def _check_engine(ns):
    """Refuse ``--registration-engine flirt`` when FSL's flirt is not installed."""
    if ns.registration_engine == "flirt" and shutil.which("flirt") is None:
        raise UsageError(
            "--registration-engine flirt: FSL's flirt is not on the PATH "
            "(use 'simpleitk' or 'auto')"
        )


def parse_args(argv=None):
    """Parse and check the command line; return :class:`Options`.

    Raises
    ------
    UsageError (64)
        Bad option values; output folder equal to (or inside, but not under
        ``derivatives/`` of) the BIDS folder; work folder inside the BIDS or output
        folder; filter or plugin files that do not parse; ``flirt`` requested but not
        installed; more threads per process than processes.
    MissingInputError (66)
        ``bids_dir``, the prior, a filter or plugin file does not exist; a requested
        participant is not in the dataset.
    InputDataError (65)
        ``bids_dir`` is not a BIDS dataset (no ``dataset_description.json``).
    """
    ns = get_parser().parse_args(argv)
    bids_dir, output_dir, work_dir = _check_folders(ns)
    participant_label, session_label = _labels(ns, bids_dir)
    bids_filters = load_bids_filters(ns.bids_filter_file) if ns.bids_filter_file else {}
    prior = _prior(ns)
    nprocs, omp_nthreads, plugin = _resources(ns)
    _check_engine(ns)

    return Options(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=ns.analysis_level,
        work_dir=work_dir,
        participant_label=participant_label,
        session_label=session_label,
        bids_filters=bids_filters,
        skip_bids_validation=ns.skip_bids_validation,
        nprocs=nprocs,
        omp_nthreads=omp_nthreads,
        mem_gb=ns.mem_gb,
        plugin=plugin,
        prior=prior,
        device=ns.device,
        method=ns.method,
        overrides=_overrides(ns),
        registration_engine=ns.registration_engine,
        verbose=ns.verbose,
        write_graph=ns.write_graph,
        stop_on_first_crash=ns.stop_on_first_crash,
    )
