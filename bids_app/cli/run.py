"""The ``blindharmony`` command: a BIDS App (participant and group levels).

Order of a participant-level run, chosen so that bad input never leaves a partial
derivative dataset behind: parse and check the arguments, validate the BIDS dataset,
collect the T1w images and read every one of them, load the prior; only then create the
output and work folders and run the nipype workflow. (Loading the prior imports
matplotlib, whose font cache goes to ``<work dir>/.matplotlib``: that cache is the only
thing a run that fails its checks may leave, never in the output folder.) Errors end the
program with one line ``blindharmony: error: <message>`` on stderr and the exit code of
:mod:`bids_app.errors`; a crashed node's crash file goes to
``<output_dir>/logs/<run id>/``.
"""

from __future__ import annotations

import os

# Before nipype is imported anywhere: no update check over the network.
os.environ.setdefault("NIPYPE_NO_ET", "1")

import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

from .. import errors  # noqa: E402
from ..__about__ import __packagename__  # noqa: E402

LOGGER = logging.getLogger("blindharmony")


def main(argv=None):
    """Entry point of ``blindharmony``: run and exit with the BIDS-Apps exit code."""
    sys.exit(run(argv))


def run(argv=None):
    """Run the BIDS App on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    from .parser import get_parser, parse_args

    try:
        opts = parse_args(argv)
    except errors.UsageError as err:
        sys.stderr.write(get_parser().format_usage())
        return _fail(err)
    except errors.BlindHarmonyError as err:
        return _fail(err)

    _setup_logging(opts.verbose)
    # Caches of libraries (matplotlib's font list) go to the work folder, never to $HOME.
    os.environ.setdefault("MPLCONFIGDIR", str(Path(opts.work_dir).absolute() / ".matplotlib"))
    try:
        if opts.analysis_level == "group":
            return run_group_level(opts)
        return run_participant_level(opts)
    except errors.BlindHarmonyError as err:
        return _fail(err)


def _fail(err):
    # one line: the last line of stderr is the whole error
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    message = message or type(err).__name__
    sys.stderr.write(f"{__packagename__}: error: {message}\n")
    return err.exit_code


def _setup_logging(verbose):
    """Log to the current ``sys.stderr`` (again on every in-process run)."""
    level = logging.DEBUG if verbose else logging.INFO
    handler = next((h for h in LOGGER.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(message)s", "%H:%M:%S"))
        LOGGER.addHandler(handler)
    else:
        # a previous run's stderr may be gone (replaced, closed): write to this one's
        # (not setStream, which flushes the old stream first)
        handler.stream = sys.stderr
    LOGGER.setLevel(level)


_HANDLER_NAME = "blindharmony-stderr"


def run_group_level(opts):
    """The group level (``bids_app.workflows.group.run_group``)."""
    try:
        from ..workflows.group import run_group
    except ImportError as err:
        # NOT IMPLEMENTED YET: the group level arrives with issue #4.
        if getattr(err, "name", None) in (None, "bids_app.workflows.group"):
            raise errors.UsageError("the group level arrives with issue #4") from None
        raise
    return run_group(opts.output_dir, opts.bids_dir, prior_path=opts.prior) or errors.EX_OK


def check_inputs(subject_files):
    """Read every selected T1w image; the first bad one raises ``InputDataError`` (65)."""
    from ..preprocess.image import load_t1w

    for files in subject_files.values():
        for path in files:
            load_t1w(path)


def run_participant_level(opts):
    """The participant level; returns the exit code."""
    from ..utils.bids import collect_t1w
    from ..utils.derivatives import init_output_dir
    from .validation import validate_bids
    from .workflow import build_workflow, load_prior, resolve_device

    if not opts.skip_bids_validation:
        validate_bids(opts.bids_dir, opts.participant_label)

    subject_files = collect_t1w(
        opts.bids_dir, opts.participant_label, opts.session_label, opts.bids_filters
    )
    n_files = sum(len(files) for files in subject_files.values())
    LOGGER.info(
        "%d T1w image(s) of %d participant(s): %s",
        n_files,
        len(subject_files),
        ", ".join(f"sub-{s}" for s in subject_files),
    )
    check_inputs(subject_files)
    device = resolve_device(opts.device)
    prior = load_prior(opts.prior)

    # Nothing was written before this point.
    init_output_dir(opts.output_dir, opts.bids_dir)
    log_dir = run_log_dir(opts.output_dir)
    try:
        opts.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise errors.OutputError(f"cannot create work folder {opts.work_dir}: {err}") from None
    configure_nipype(opts, log_dir)

    workflow = build_workflow(opts, subject_files, prior=prior, device=device)
    if opts.write_graph:
        try:
            workflow.write_graph(graph2use="colored", format="svg", simple_form=True)
        except Exception as err:  # graphviz missing: not worth failing the run
            LOGGER.warning("could not write the workflow graph: %s", err)

    plugin, plugin_args = plugin_settings(opts)
    started = time.time()
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except Exception as err:
        # MultiProc raises a RuntimeError; Linear re-raises the failed node's own exception
        crashes = sorted(str(p) for p in log_dir.glob("crash-*"))
        where = (
            "; crash file(s): " + ", ".join(crashes)
            if crashes
            else f" ({_one_line(err)})"
        )
        LOGGER.debug("workflow failed", exc_info=True)
        raise errors.BlindHarmonyError(
            f"a workflow node failed{where}", exit_code=errors.EX_CRASH
        ) from None
    LOGGER.info(
        "Harmonized %d T1w image(s) into %s in %.0f s",
        n_files,
        opts.output_dir,
        time.time() - started,
    )
    return errors.EX_OK


def run_log_dir(output_dir):
    """This run's crash-file folder: ``<output_dir>/logs/<date>-<time>_<random id>/``.

    One folder per run, so runs of several participants writing into one output
    folder at the same time never report each other's crash files. nipype creates it
    when it writes the first crash file: a run without a crash leaves nothing.

    Parameters
    ----------
    output_dir : Path
        The output dataset.

    Returns
    -------
    Path
    """
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:8]}"
    return Path(output_dir) / "logs" / run_id


def _one_line(err):
    """``Type: first line of the message`` of an exception, for a one-line error."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def configure_nipype(opts, log_dir):
    """Keep nipype's files in the work and log folders (nothing in ``$HOME``)."""
    os.environ.setdefault("NIPYPE_CONFIG_DIR", str(Path(opts.work_dir) / ".nipype"))
    from nipype import config, logging as nlogging

    nipype_level = "DEBUG" if opts.verbose > 1 else "INFO" if opts.verbose else "WARNING"
    # nipype's distributed plugins (SLURM, SGE, ...) poll their scheduler every
    # execution.poll_sleep_duration seconds and ignore the plugin file's own value: take it
    # from the --use-plugin file, so that a cluster is not asked 20 times a second
    poll = (opts.plugin or {}).get("plugin_args", {}).get("poll_sleep_duration", 0.05)
    if (opts.plugin or {}).get("plugin") in ("SLURM", "SLURMGraph"):
        os.environ.setdefault("LOGNAME", os.environ.get("USER") or _user_name())
    config.update_config(
        {
            "execution": {
                "crashdump_dir": str(log_dir),
                "crashfile_format": "txt",
                "check_version": "false",
                "stop_on_first_crash": str(bool(opts.stop_on_first_crash)).lower(),
                "remove_unnecessary_outputs": "true",
                "get_linked_libs": "false",
                "poll_sleep_duration": str(poll),
                "create_report": "true",
            },
            "logging": {
                "log_directory": str(log_dir),
                "log_to_file": "false",
                "workflow_level": nipype_level,
                "interface_level": nipype_level,
                "utils_level": "WARNING" if opts.verbose < 2 else "DEBUG",
            },
        }
    )
    nlogging.update_logging(config)


def _user_name():
    """The login name (nipype's SLURM plugin reads ``LOGNAME``, which cron-like
    environments and containers may not set)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def plugin_settings(opts):
    """(plugin name, plugin_args): the ``--use-plugin`` file, Linear or MultiProc."""
    if opts.plugin:
        return opts.plugin["plugin"], dict(opts.plugin["plugin_args"])
    if opts.nprocs // max(1, opts.omp_nthreads or 1) <= 1:
        # one job at a time: no process pool needed
        return "Linear", {}
    args = {
        "n_procs": opts.nprocs,
        # fork after torch has run deadlocks MultiProc's workers; start them clean
        "mp_context": "forkserver",
        "poll_sleep_duration": 0.05,
        "raise_insufficient": False,
    }
    if opts.mem_gb:
        args["memory_gb"] = opts.mem_gb
    return "MultiProc", args


if __name__ == "__main__":  # pragma: no cover
    main()
