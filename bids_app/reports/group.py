"""Collect the participant outputs of a BlindHarmony dataset into one table.

One row per harmonized T1w image (the native-space ``*_desc-harmonized_T1w.nii.gz``):
its BIDS entities (from the file name), the scanner and site of its source image (from
the source's JSON sidecars, following the BIDS inheritance principle), and the metrics
of its own sidecar.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils.derivatives import SOURCE_ENTITIES, sidecar_path, source_entities
from .stats import METRIC_DIRECTION, flag_outliers, out_of_domain_slices

LOGGER = logging.getLogger("blindharmony")

#: Source-sidecar fields that describe the scanner and the site.
SCANNER_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "InstitutionName",
    "StationName",
)

#: Scalar metrics of our sidecars, in table order (``SliceBitsPerDim`` is summarized).
METRICS = (
    "NCCToSource",
    "LatentNorm",
    "BitsPerDim",
    "SourceBitsPerDim",
    "HarmonizedSlices",
    "Device",
    "RunTimeSeconds",
)

#: Metrics plotted and screened for outliers in the group report.
PLOTTED_METRICS = ("NCCToSource", "LatentNorm", "BitsPerDim", "SourceBitsPerDim")

IMAGE_GLOB = "**/*_desc-harmonized_T1w.nii.gz"


@dataclass
class ImageRecord:
    """One harmonized image and what is known about it."""

    path: Path
    sidecar: dict
    entities: dict
    source: Path | None = None
    source_meta: dict = field(default_factory=dict)
    outliers: list = field(default_factory=list)

    @property
    def subject(self):
        return self.entities["subject"]

    @property
    def bids_name(self):
        """The source's name without extension, e.g. ``sub-01_ses-1_T1w``."""
        return self.path.name.replace("_desc-harmonized", "").split(".")[0]

    @property
    def metrics(self):
        return self.sidecar.get("Metrics") or {}

    @property
    def slice_bpd(self):
        return self.metrics.get("SliceBitsPerDim") or []

    @property
    def group(self):
        """Site/scanner label: ``<site> · <manufacturer> <model> <B0>T``, or ``unknown``."""
        meta = self.source_meta
        site = meta.get("InstitutionName") or meta.get("StationName")
        scanner = " ".join(
            str(p)
            for p in (
                meta.get("Manufacturer"),
                meta.get("ManufacturersModelName"),
                f"{meta['MagneticFieldStrength']:g}T"
                if isinstance(meta.get("MagneticFieldStrength"), (int, float))
                else None,
            )
            if p
        )
        label = " · ".join(p for p in (site, scanner) if p)
        return label or "unknown"

    def row(self):
        """The TSV row (a dict; missing values are ``None``)."""
        row = {"bids_name": self.bids_name}
        row.update({k: self.entities.get(k) for k in SOURCE_ENTITIES})
        row.update({k: self.source_meta.get(k) for k in SCANNER_FIELDS})
        row["group"] = self.group
        row.update({k: self.metrics.get(k) for k in METRICS})
        row["OutOfDomain"] = self.metrics.get("OutOfDomain")
        row["OutOfDomainReasons"] = "; ".join(self.metrics.get("OutOfDomainReasons") or []) or None
        row["SkullStripped"] = self.metrics.get("SkullStripped")
        row["OutOfDomainSlices"] = len(out_of_domain_slices(self.slice_bpd))
        harmonization = self.sidecar.get("Harmonization") or {}
        row["Method"] = harmonization.get("Method")
        decision = harmonization.get("Decision") or {}
        row["IntensityModel"] = decision.get("Selected")
        row["BiasFieldCorrected"] = (decision.get("BiasField") or {}).get("corrected")
        row["Prior"] = (self.sidecar.get("Prior") or {}).get("Name")
        row["Outliers"] = ";".join(self.outliers) or None
        return row


def find_harmonized(output_dir, subject=None):
    """Native-space harmonized images (no ``space-`` entity) under ``output_dir``, sorted."""
    output_dir = Path(output_dir)
    pattern = f"sub-{subject or '*'}/{IMAGE_GLOB}"
    return sorted(
        p for p in output_dir.glob(pattern) if "_space-" not in p.name and p.parent.name == "anat"
    )


def source_of(path, sidecar, output_dir, bids_dir):
    """The raw T1w a derivative comes from (its sidecar's ``bids:raw:`` source), or None."""
    if bids_dir is None:
        return None
    for uri in sidecar.get("Sources") or []:
        if isinstance(uri, str) and uri.startswith("bids:raw:"):
            candidate = Path(bids_dir) / uri[len("bids:raw:"):]
            if candidate.exists():
                return candidate
    rel = Path(path).relative_to(output_dir)
    candidate = Path(bids_dir) / rel.with_name(rel.name.replace("_desc-harmonized", ""))
    return candidate if candidate.exists() else None


def inherited_metadata(source, bids_dir):
    """The JSON metadata of ``source`` after the BIDS inheritance principle.

    Sidecars named ``[<entities>_]<suffix>.json`` in ``bids_dir`` and in each folder down
    to the file's own are merged, the closest (then the most specific) winning; a sidecar
    applies when its entities are a subset of the file's.
    """
    source, bids_dir = Path(source), Path(bids_dir)
    name = source.name.split(".")[0]
    suffix = name.rsplit("_", 1)[-1]
    own = set(name.split("_")[:-1])
    folders = [bids_dir]
    for part in source.parent.relative_to(bids_dir).parts:
        folders.append(folders[-1] / part)
    merged = {}
    for folder in folders:
        found = []
        for candidate in folder.glob(f"*{suffix}.json"):
            parts = candidate.name[: -len(".json")].split("_")
            if parts[-1] != suffix or not set(parts[:-1]) <= own:
                continue
            found.append((len(parts), candidate))
        for _, candidate in sorted(found):
            try:
                merged.update(json.loads(candidate.read_text()))
            except (OSError, ValueError) as err:
                LOGGER.warning("cannot read sidecar %s: %s", candidate, err)
    return merged


def read_record(path, output_dir, bids_dir):
    """An :class:`ImageRecord` for one harmonized image."""
    path = Path(path)
    try:
        sidecar = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError) as err:
        LOGGER.warning("no readable sidecar for %s: %s", path, err)
        sidecar = {}
    source = source_of(path, sidecar, output_dir, bids_dir)
    meta = inherited_metadata(source, bids_dir) if source is not None else {}
    return ImageRecord(path, sidecar, source_entities(path), source, meta)


def collect_records(output_dir, bids_dir, subject=None):
    """Records of every harmonized image (of one ``subject`` if given), outliers flagged."""
    records = [read_record(p, output_dir, bids_dir) for p in find_harmonized(output_dir, subject)]
    flag_records(records)
    return records


def flag_records(records):
    """Set each record's ``outliers`` to the metrics where it is a robust outlier."""
    for metric in PLOTTED_METRICS:
        values = metric_values(records, metric)
        for record, bad in zip(records, flag_outliers(values, METRIC_DIRECTION[metric])):
            if bad:
                record.outliers.append(metric)
    return records


def metric_values(records, metric):
    """Float array of one metric across records (``NaN`` where missing)."""
    out = []
    for record in records:
        value = record.metrics.get(metric)
        out.append(float(value) if isinstance(value, (int, float)) else np.nan)
    return np.array(out, dtype=float)


def table(records):
    """TSV text: one row per record; entity columns that no row has are left out."""
    rows = [r.row() for r in records]
    columns = [c for c in rows[0]
               if c not in SOURCE_ENTITIES or any(r[c] is not None for r in rows)]

    def cell(value):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "n/a"
        return str(value).replace("\t", " ").replace("\n", " ")

    lines = ["\t".join(columns)]
    lines += ["\t".join(cell(r[c]) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"
