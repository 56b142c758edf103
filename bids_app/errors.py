"""Errors that the command line turns into BIDS-Apps exit codes.

Exit codes follow the BIDS execution specification (and ``sysexits.h``):

====  =======================================================
code  meaning
====  =======================================================
0     success
1     a workflow node crashed (crash file in the log folder)
16    BIDS validation failed
18    no T1w image matched the selection at all
64    command-line usage error (also: output_dir == bids_dir,
      work dir inside bids_dir, a filter file that is not JSON)
65    bad input data (unreadable, 4D, NaN, constant image...;
      a bids_dir without dataset_description.json)
66    missing input (bids_dir, prior file, filter file, or a
      --participant-label that is not in the dataset)
73    cannot create the output
====  =======================================================

A requested participant that does not exist is a missing input (66), named in the
message, as fMRIPrep does; 18 is kept for a selection that is valid but matches no T1w
image (e.g. a session or filter that no T1w has).
"""

EX_OK = 0
EX_CRASH = 1
EX_VALIDATION = 16
EX_NO_MATCH = 18
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73


class BlindHarmonyError(Exception):
    """Base class: an error with a message for the user and an exit code."""

    exit_code = EX_CRASH

    def __init__(self, message, *, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BlindHarmonyError):
    """Inconsistent command-line arguments."""

    exit_code = EX_USAGE


class InputDataError(BlindHarmonyError):
    """An input image that cannot be harmonized; the message names the file."""

    exit_code = EX_DATAERR

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class MissingInputError(BlindHarmonyError):
    """A required input (dataset, prior bundle) does not exist."""

    exit_code = EX_NOINPUT


class NoMatchError(BlindHarmonyError):
    """No input image matched the selection."""

    exit_code = EX_NO_MATCH


class ValidationError(BlindHarmonyError):
    """The BIDS validator reported errors."""

    exit_code = EX_VALIDATION


class OutputError(BlindHarmonyError):
    """The output (or work) folder cannot be written."""

    exit_code = EX_CANTCREAT


class PriorError(BlindHarmonyError):
    """A prior bundle that is missing, corrupt or made by an incompatible version."""

    exit_code = EX_DATAERR
