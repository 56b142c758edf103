"""The group report ``group_T1w.html``: one standalone page, every figure embedded."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from . import figures
from .group import PLOTTED_METRICS, metric_values
from .html import Markup, data_uri, esc, figure_html, page, table_html
from .participant import report_name
from .stats import (
    FOREGROUND_FRACTION,
    METRIC_DIRECTION,
    ROBUST_Z,
    SCALE_PERCENTILE,
    flag_outliers,
    normalize_intensities,
    out_of_domain_slices,
)

LOGGER = logging.getLogger("blindharmony")

#: Columns of the image table (besides the name, group and flags).
TABLE_METRICS = ("NCCToSource", "LatentNorm", "BitsPerDim", "SourceBitsPerDim",
                 "HarmonizedSlices", "RunTimeSeconds")


def _label(record):
    return record.bids_name.rsplit("_", 1)[0]


def _intensities(path):
    if path is None:
        return None
    try:
        return normalize_intensities(figures.load_canonical(path)[0], stride=2)
    except Exception as err:  # an unreadable image must not sink the whole report
        LOGGER.warning("cannot read %s for the histograms: %s", path, err)
        return None


def summary_section(records):
    """Counts per site/scanner group, the priors used and the number of flags."""
    groups = Counter(r.group for r in records)
    priors = Counter((r.sidecar.get("Prior") or {}).get("Name", "n/a") for r in records)
    flagged = sum(bool(r.outliers) for r in records)
    domain = sum(bool(r.metrics.get("OutOfDomain")) for r in records)
    stripped = sum(bool(r.metrics.get("SkullStripped")) for r in records)
    subjects = len({r.subject for r in records})
    rows = [(g, n) for g, n in sorted(groups.items())]
    text = (f"<p>{len(records)} harmonized T1w image(s) of {subjects} participant(s); "
            f"prior(s): {esc(', '.join(f'{k} ({v})' for k, v in priors.items()))}. "
            f'<span class="{"flag" if flagged else "ok"}">{flagged} image(s) flagged as '
            "outliers</span> (see the metrics and the table); "
            f'<span class="{"flag" if domain else "ok"}">{domain} image(s) out of the '
            "prior's domain</span> (left unchanged or to be checked: the reason is in the "
            f"table); {stripped} skull-stripped input(s) harmonized in the brain.</p>")
    return text + table_html(("site / scanner group", "images"), rows)


def histogram_section(records, reference):
    """Before/after intensity histograms with the target-domain reference."""
    before = [_intensities(r.source) for r in records]
    after = [_intensities(r.path) for r in records]
    fig = figures.intensity_histograms(before, after, [r.group for r in records],
                                       reference=reference)
    ref_note = ("The dashed black line is the target domain: the prior's reference "
                "template (the mean training image), normalized the same way."
                if reference is not None else
                "The prior's reference template could not be loaded: no target-domain line.")
    caption = (
        "Foreground intensity distributions of each image (one line per image, colour by "
        "site/scanner group), before and after harmonization. Each image is divided by the "
        f"{SCALE_PERCENTILE:g}th percentile of its non-zero voxels and voxels above "
        f"{FOREGROUND_FRACTION:g} are kept (the head; images are not skull-stripped). "
        + ref_note + " After harmonization the lines of all groups should gather around it."
    )
    return figure_html(data_uri(fig, "svg"), esc(caption), "intensity histograms")


def metrics_section(records):
    """Strip/box plots of the metrics, outliers flagged."""
    values = {m: metric_values(records, m) for m in PLOTTED_METRICS}
    values = {m: v for m, v in values.items() if np.isfinite(v).any()}
    if not values:
        return "<p>No metrics in the sidecars.</p>"
    flags = {m: flag_outliers(v, METRIC_DIRECTION[m]) for m, v in values.items()}
    fig = figures.metric_strips(values, [r.group for r in records],
                                [_label(r) for r in records], flags)
    caption = (
        "One point per image (colour: site/scanner group). Outliers (red ring, named) have a "
        f"modified z-score (0.6745·(x − median)/MAD, Iglewicz–Hoaglin) beyond {ROBUST_Z:g} on "
        "the bad side: low NCCToSource (harmonization changed the image a lot), high "
        "LatentNorm / BitsPerDim (the prior finds the harmonized image far from its domain), "
        "high SourceBitsPerDim (the source was far from the target domain)."
    )
    return figure_html(data_uri(fig, "svg"), esc(caption), "metrics")


def slices_section(records):
    """All per-slice likelihood profiles, with the robust-z heat strip."""
    profiles = [r.slice_bpd for r in records]
    if not any(profiles):
        return "<p>No per-slice likelihoods (SliceBitsPerDim) in the sidecars.</p>"
    fig = figures.slice_profiles_overview(profiles, [r.group for r in records],
                                          [_label(r) for r in records])
    caption = (
        "Top: bits/dim of each harmonized axial slice (reference grid) of every image. "
        "Bottom: each slice's rise above the running-median trend of its image's profile, "
        "in units of the profile's slice-to-slice noise (robust z); slices above "
        f"{ROBUST_Z:g} are out of domain (counted in the table)."
    )
    return figure_html(data_uri(fig, "png"), esc(caption), "slice likelihood profiles")


def table_section(records):
    """One row per image; links to the subject reports; flagged rows highlighted."""
    rows, classes = [], []
    for r in records:
        link = Markup(f'<a href="{esc(report_name(r.subject))}#{esc(r.bids_name)}">'
                      f"{esc(r.bids_name)}</a>")
        ood = out_of_domain_slices(r.slice_bpd)
        flags = ", ".join(r.outliers) if r.outliers else ""
        reasons = "; ".join(r.metrics.get("OutOfDomainReasons") or [])
        rows.append([link, r.group, *(r.metrics.get(m) for m in TABLE_METRICS),
                     "yes" if r.metrics.get("SkullStripped") else "no",
                     Markup(f'<span class="flag">{esc(reasons)}</span>' if reasons
                            else '<span class="ok">no</span>'),
                     len(ood), Markup(f'<span class="flag">{esc(flags)}</span>')])
        classes.append("outlier" if r.outliers or reasons else "")
    header = ("image (subject report)", "site / scanner", *TABLE_METRICS, "skull-stripped",
              "out of domain (why)", "out-of-domain slices", "outlier in")
    return '<div class="scroll">' + table_html(header, rows, classes) + "</div>"


def images_section(records):
    """Per image: a compact before/after mosaic and its slice profile."""
    cards = []
    for r in records:
        mosaic = figures.mosaic(r.path, r.source, n_slices=1, compact=True,
                                title=r.bids_name)
        flagged = out_of_domain_slices(r.slice_bpd)
        profile = figures.slice_profile(r.slice_bpd, flagged, small=True,
                                        source_bpd=r.metrics.get("SourceBitsPerDim"))
        flag = (f' <span class="flag">outlier: {esc(", ".join(r.outliers))}</span>'
                if r.outliers else "")
        cards.append(
            f'<div class="card"><h3><a href="{esc(report_name(r.subject))}">'
            f"{esc(r.bids_name)}</a> · {esc(r.group)}{flag}</h3>"
            + figure_html(data_uri(mosaic, "png"), "Source (top) over harmonized (bottom): "
                          "axial, coronal, sagittal; same grey window.",
                          f"mosaic of {r.bids_name}")
            + figure_html(data_uri(profile, "svg"), "Per-slice bits/dim; red: out of domain.",
                          f"slice profile of {r.bids_name}")
            + "</div>"
        )
    return '<div class="images">' + "".join(cards) + "</div>"


def render_group_report(records, *, reference=None, output_dir=""):
    """The HTML text of the group report.

    Parameters
    ----------
    records : list of :class:`bids_app.reports.group.ImageRecord`
        Outliers already flagged (:func:`bids_app.reports.group.collect_records`).
    reference : 1-D array or None
        Normalized intensities of the target domain's reference template.
    output_dir : str
        Shown in the header.
    """
    subjects = sorted({r.subject for r in records})
    sections = [
        ("summary", "Summary", summary_section(records)),
        ("intensities", "Intensity distributions", histogram_section(records, reference)),
        ("metrics", "Harmonization metrics", metrics_section(records)),
        ("slices", "Per-slice likelihood", slices_section(records)),
        ("table", "Images", table_section(records)),
        ("mosaics", "Before / after", images_section(records)),
    ]
    nav = [(report_name(s), f"sub-{s}") for s in subjects[:20]]
    return page("BlindHarmony group report (T1w)", f"Output dataset {output_dir}", sections,
                nav=nav)
