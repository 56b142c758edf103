"""The group level: ``group_T1w.tsv`` and ``group_T1w.html`` from the participant outputs.

No nipype graph: the group level reads sidecars and images and writes two files (each
atomically: a temporary file moved into place), plus the subject reports that are
missing (e.g. from a participant run of an older version).

The target domain in the intensity histograms is the prior bundle's reference template
(the mean training image on the slice grid), normalized like every other image
(:func:`bids_app.reports.stats.normalize_intensities`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BlindHarmonyError, NoMatchError
from ..reports.group import collect_records, table
from ..reports.group_report import render_group_report
from ..reports.participant import REPORT_BIDSIGNORE, report_name, write_participant_report
from ..reports.stats import normalize_intensities
from ..utils.derivatives import atomic_write_text, merge_bidsignore

LOGGER = logging.getLogger("blindharmony")

GROUP_TSV = "group_T1w.tsv"
GROUP_HTML = "group_T1w.html"


def reference_intensities(prior_path=None, records=()):
    """Normalized intensities of the prior's reference template, or None (logged).

    A prior whose SHA256 differs from the one recorded in the sidecars is used with a
    warning (the participant level may have run with another ``--prior``).
    """
    from ..flow.bundle import load_bundle

    try:
        bundle = load_bundle(prior_path)
    except BlindHarmonyError as err:
        LOGGER.warning("no target-domain histogram: %s", err)
        return None
    used = {(r.sidecar.get("Prior") or {}).get("SHA256") for r in records} - {None}
    if used and bundle.sha256 not in used:
        LOGGER.warning("the prior %s is not the one recorded in the sidecars; its reference "
                       "template stands for the target domain anyway", bundle.name)
    return normalize_intensities(np.asanyarray(bundle.reference.dataobj))


def run_group(output_dir, bids_dir, *, prior_path=None, reference=None):
    """Write the group table and report of a BlindHarmony output dataset.

    Parameters
    ----------
    output_dir : path
        The output dataset of the participant level.
    bids_dir : path
        The input dataset (source images and their scanner metadata).
    prior_path : path or None
        Prior bundle whose reference template is the target domain (default: shipped).
    reference : nibabel image or None
        Use this image as the target-domain reference instead of the prior's.

    Returns
    -------
    int
        0 (the exit code).

    Raises
    ------
    NoMatchError
        No harmonized image in ``output_dir`` (exit 18).
    """
    output_dir = Path(output_dir)
    records = collect_records(output_dir, bids_dir) if output_dir.is_dir() else []
    if not records:
        raise NoMatchError(
            f"no participant outputs (sub-*/**/*_desc-harmonized_T1w.nii.gz) in {output_dir}: "
            "run the participant level first"
        )
    LOGGER.info("Group report of %d harmonized T1w image(s)", len(records))
    if reference is not None:
        ref_values = normalize_intensities(np.asanyarray(reference.dataobj))
    else:
        ref_values = reference_intensities(prior_path, records)

    for subject in sorted({r.subject for r in records}):
        if not (output_dir / report_name(subject)).exists():
            write_participant_report(output_dir, bids_dir, subject)

    atomic_write_text(output_dir / GROUP_TSV, table(records))
    html = render_group_report(records, reference=ref_values, output_dir=str(output_dir))
    atomic_write_text(output_dir / GROUP_HTML, html)
    merge_bidsignore(output_dir / ".bidsignore", REPORT_BIDSIGNORE)
    LOGGER.info("Wrote %s and %s", output_dir / GROUP_TSV, output_dir / GROUP_HTML)
    return 0
