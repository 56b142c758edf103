"""Query the input BIDS dataset: participants and their T1-weighted images."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..errors import InputDataError, MissingInputError, NoMatchError, UsageError

LOGGER = logging.getLogger("blindharmony.bids")

#: A BIDS label: alphanumeric only.
LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")

#: Entities a ``--bids-filter-file`` may not override: the query is always anat T1w.
FIXED_ENTITIES = ("subject", "datatype", "suffix", "extension")

#: Extensions of the T1w images we harmonize.
T1W_EXTENSIONS = [".nii.gz", ".nii"]


def strip_label(label, prefix):
    """Drop an optional BIDS prefix from a label and check it is alphanumeric.

    >>> strip_label("sub-01", "sub-")
    '01'
    >>> strip_label("01", "sub-")
    '01'
    """
    label = str(label).strip()
    if label.startswith(prefix):
        label = label[len(prefix) :]
    if not LABEL_RE.match(label):
        raise UsageError(
            f"invalid label {label!r}: BIDS labels are letters and digits only"
        )
    return label


def check_bids_dir(bids_dir):
    """Check that ``bids_dir`` exists and is a BIDS dataset; return its absolute path."""
    bids_dir = Path(bids_dir).absolute()
    if not bids_dir.exists():
        raise MissingInputError(f"BIDS dataset not found: {bids_dir}")
    if not bids_dir.is_dir():
        raise InputDataError(bids_dir, "not a BIDS dataset (not a folder)")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputDataError(bids_dir, "not a BIDS dataset (no dataset_description.json)")
    return bids_dir


def list_participants(bids_dir):
    """Participant labels of a dataset, from its ``sub-*`` folders (no pybids, fast)."""
    return sorted(
        p.name[4:]
        for p in Path(bids_dir).glob("sub-*")
        if p.is_dir() and LABEL_RE.match(p.name[4:])
    )


def check_participants(bids_dir, labels):
    """Raise :class:`MissingInputError` (66) naming requested labels absent from the dataset."""
    present = set(list_participants(bids_dir))
    missing = [label for label in labels if label not in present]
    if missing:
        raise MissingInputError(
            "participant(s) not found in "
            f"{bids_dir}: {', '.join('sub-' + m for m in missing)}"
        )


def load_bids_filters(path):
    """Load and check a ``--bids-filter-file``; return the filters of the ``t1w`` query.

    The file follows fMRIPrep's format, ``{"t1w": {"session": "1", "run": [1, 2]}}``;
    other queries (``bold``, ``t2w``...) are accepted and ignored, so one filter file can
    serve several BIDS Apps. ``null`` selects files without the entity and ``"*"`` files
    with any value of it, as in fMRIPrep.

    Raises
    ------
    MissingInputError
        The file does not exist (exit 66).
    UsageError
        The file is not valid JSON or not of the expected shape (exit 64).
    """
    from bids.layout import Config

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"BIDS filter file not found: {path}")
    try:
        filters = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"--bids-filter-file {path} is not valid JSON: {err}") from None
    if not isinstance(filters, dict):
        raise UsageError(f"--bids-filter-file {path}: expected a JSON object of queries")
    t1w = filters.get("t1w", {})
    if not isinstance(t1w, dict):
        raise UsageError(f"--bids-filter-file {path}: the 't1w' query must be an object")
    known = set(Config.load("bids").entities)
    for key, value in t1w.items():
        if key in FIXED_ENTITIES:
            raise UsageError(
                f"--bids-filter-file {path}: '{key}' cannot be filtered "
                "(use --participant-label for subjects)"
            )
        if key not in known:
            raise UsageError(
                f"--bids-filter-file {path}: unknown BIDS entity '{key}' "
                f"(known: {', '.join(sorted(known - set(FIXED_ENTITIES)))})"
            )
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (str, int)) for v in values):
            raise UsageError(
                f"--bids-filter-file {path}: values of '{key}' must be strings, "
                "integers, null or lists of them"
            )
    return t1w


def _to_query(filters):
    from bids.layout import Query

    def convert(value):
        if value is None:
            return Query.NONE
        if value == "*":
            return Query.ANY
        return value

    return {
        key: [convert(v) for v in value] if isinstance(value, list) else convert(value)
        for key, value in (filters or {}).items()
    }


def _check_unique(files):
    """Two inputs whose derivatives would get the same name (e.g. ``.nii`` and ``.nii.gz``)."""
    from .derivatives import source_entities

    seen = {}
    for path in files:
        key = tuple(sorted(source_entities(path).items()))
        if key in seen:
            raise InputDataError(
                path,
                f"same BIDS entities as {seen[key]}; remove one or select with "
                "--bids-filter-file",
            )
        seen[key] = path


def collect_t1w(bids_dir, participant_label=None, session_label=None, bids_filters=None):
    """Every T1w image of the selected participants: all sessions, acquisitions, runs.

    The dataset is indexed by pybids without validation and with an in-memory
    database, so nothing is written into ``bids_dir``.

    Parameters
    ----------
    bids_dir : path
        The input BIDS dataset.
    participant_label : list of str or None
        Labels without ``sub-``; ``None`` selects every participant.
    session_label : list of str or None
        Labels without ``ses-``; ``None`` selects every session.
    bids_filters : dict or None
        Entity filters of the ``t1w`` query (see :func:`load_bids_filters`).

    Returns
    -------
    dict
        Participant label -> sorted list of absolute T1w paths. Participants without
        any selected T1w are left out (with a warning).

    Raises
    ------
    MissingInputError
        A requested participant is not in the dataset (exit 66).
    NoMatchError
        No T1w image matched the selection at all (exit 18).
    """
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    bids_dir = Path(bids_dir).absolute()
    if participant_label:
        check_participants(bids_dir, participant_label)
    layout = BIDSLayout(
        str(bids_dir),
        validate=False,
        database_path=None,
        indexer=BIDSLayoutIndexer(validate=False, index_metadata=False),
    )
    subjects = list(participant_label) if participant_label else layout.get_subjects()
    query = {
        "datatype": "anat",
        "suffix": "T1w",
        "extension": T1W_EXTENSIONS,
        **_to_query(bids_filters),
    }
    if session_label:
        query["session"] = list(session_label)

    found = {}
    for subject in sorted(subjects):
        files = layout.get(subject=subject, return_type="file", **query)
        if files:
            found[subject] = sorted(str(Path(f).absolute()) for f in files)
            _check_unique(found[subject])
        else:
            LOGGER.warning("sub-%s has no T1w image matching the selection: skipped", subject)
    if not found:
        selection = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("participant", participant_label),
                ("session", session_label),
                ("filters", bids_filters),
            )
            if v
        )
        raise NoMatchError(
            f"no T1w image matched the selection in {bids_dir}"
            + (f" ({selection})" if selection else "")
        )
    return found
