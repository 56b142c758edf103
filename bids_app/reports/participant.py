"""The per-subject report: ``<output_dir>/sub-<label>.html``, figures in ``sub-<label>/figures/``.

Like fMRIPrep's subject reports, the HTML links its figures by relative path, so the
report and the ``figures`` folder travel together with the output dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..utils.derivatives import atomic_write_text, merge_bidsignore
from . import figures
from .group import METRICS, SCANNER_FIELDS, find_harmonized, read_record
from .html import Markup, esc, figure_html, page, save_figure, table_html
from .stats import ROBUST_Z, out_of_domain_slices

LOGGER = logging.getLogger("blindharmony")

#: .bidsignore lines for the reports (no BIDS-Derivatives schema); ``figures`` without a
#: trailing slash, or bids-validator 3 still flags the folder itself.
REPORT_BIDSIGNORE = ("*.html", "figures", "group_*.tsv")

#: Longest list shown whole in the parameter table.
MAX_LIST = 8


def report_name(subject):
    """File name of a subject's report, relative to the output root."""
    return f"sub-{subject}.html"


def figure_name(record, kind, ext):
    """``<source name without suffix>_desc-<kind>_T1w.<ext>``."""
    stem = record.bids_name.rsplit("_", 1)[0]
    return f"{stem}_desc-{kind}_T1w.{ext}"


def _short(value):
    if isinstance(value, list) and len(value) > MAX_LIST:
        head = ", ".join(str(v) for v in value[:MAX_LIST])
        return f"[{head}, ...] ({len(value)} values)"
    return value


def image_section(record, output_dir, subject):
    """The HTML of one image: mosaic, slice profile and its tables; writes the figures."""
    fig_dir = Path(output_dir) / f"sub-{subject}" / "figures"
    rel = f"sub-{subject}/figures"
    name = record.bids_name
    mosaic_file = figure_name(record, "mosaic", "png")
    profile_file = figure_name(record, "sliceprofile", "svg")
    save_figure(figures.mosaic(record.path, record.source, n_slices=5, title=name),
                fig_dir / mosaic_file)
    flagged = out_of_domain_slices(record.slice_bpd)
    save_figure(
        figures.slice_profile(record.slice_bpd, flagged,
                              source_bpd=record.metrics.get("SourceBitsPerDim"), title=name),
        fig_dir / profile_file,
    )
    source_note = "" if record.source is not None else (
        " The source image was not found in the input dataset: harmonized image only.")
    parts = [
        figure_html(f"{rel}/{mosaic_file}",
                    "Before/after mosaic: for each view, source slices (top row) over the "
                    "harmonized slices (bottom row), same grey window [0, p99.5]."
                    + esc(source_note), f"mosaic of {name}"),
        figure_html(f"{rel}/{profile_file}",
                    "Likelihood of each harmonized axial slice under the prior (bits/dim, "
                    "lower is more typical of the target domain). Red: out-of-domain slices "
                    f"(robust z-score above {ROBUST_Z:g} of the rise above the running-median "
                    "trend of the profile: dotted line).",
                    f"slice profile of {name}"),
    ]
    metrics = record.metrics
    rows = [(k, metrics.get(k)) for k in METRICS if k in metrics]
    reasons = metrics.get("OutOfDomainReasons") or []
    rows.append(("OutOfDomain", Markup(
        f'<span class="flag">yes: {esc("; ".join(reasons))}</span>' if reasons
        else '<span class="ok">no</span>')))
    rows.append(("SkullStripped", "yes" if metrics.get("SkullStripped") else "no"))
    rows.append(("OutOfDomainSlices", Markup(
        f'<span class="flag">{esc(flagged)}</span>' if flagged else '<span class="ok">none</span>'
    )))
    parts.append("<h3>Metrics</h3>" + table_html(("metric", "value"), rows))
    harmonization = dict(record.sidecar.get("Harmonization") or {})
    decision = harmonization.pop("Decision", None) or {}
    if harmonization:
        parts.append("<h3>Harmonization parameters</h3>" + table_html(
            ("parameter", "value"), [(k, _short(v)) for k, v in harmonization.items()]))
    if decision:
        parts.append("<h3>What the method decided</h3>" + table_html(
            ("decision", "value"), [(k, _short(v)) for k, v in decision.items()]))
    prior = record.sidecar.get("Prior") or {}
    scanner = [(k, record.source_meta.get(k)) for k in SCANNER_FIELDS]
    parts.append("<h3>Prior and source scanner</h3>" + table_html(
        ("field", "value"),
        [(f"Prior {k}", v) for k, v in prior.items()] + scanner
        + [("Source", record.sidecar.get("Sources", ["n/a"])[0])],
    ))
    return "".join(parts)


def write_participant_report(output_dir, bids_dir, subject):
    """Write ``sub-<subject>.html`` and its figures; return the report path.

    Parameters
    ----------
    output_dir : path
        The BlindHarmony output dataset.
    bids_dir : path or None
        The input dataset (source images and their scanner metadata).
    subject : str
        Participant label, without ``sub-``.

    Raises
    ------
    FileNotFoundError
        The subject has no harmonized image in ``output_dir``.
    """
    output_dir = Path(output_dir)
    paths = find_harmonized(output_dir, subject)
    if not paths:
        raise FileNotFoundError(f"no harmonized T1w image of sub-{subject} in {output_dir}")
    records = [read_record(p, output_dir, bids_dir) for p in paths]
    sections = [
        (record.bids_name, record.bids_name, image_section(record, output_dir, subject))
        for record in records
    ]
    text = page(
        f"BlindHarmony: sub-{subject}",
        f"{len(records)} harmonized T1w image(s) · output dataset {output_dir}",
        sections,
        nav=[("group_T1w.html", "group report")],
    )
    merge_bidsignore(output_dir / ".bidsignore", REPORT_BIDSIGNORE)
    return atomic_write_text(output_dir / report_name(subject), text)
