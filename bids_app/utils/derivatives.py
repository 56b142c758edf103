"""The BIDS-Derivatives output dataset: file names, sidecars and atomic writes.

Every file is written under a temporary name in its destination folder and then moved
into place with :func:`os.replace`, so a reader (or a concurrent participant job writing
into the same output folder) never sees a half-written file, and re-running a
participant replaces its outputs in one step.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from ..__about__ import __packagename__, __url__, __version__
from ..errors import OutputError

BIDS_VERSION = "1.10.0"
PATTERNS_FILE = Path(__file__).parent.parent / "data" / "derivatives_patterns.json"

#: Lines the output's .bidsignore must hold (transforms have no BIDS-Derivatives schema).
BIDSIGNORE = ("*_xfm.*", "logs/")

#: Entities of a source T1w file carried into its derivatives' names.
SOURCE_ENTITIES = (
    "subject", "session", "acquisition", "ceagent", "reconstruction", "run", "part", "chunk"
)

README_TEXT = """\
# BlindHarmony derivatives

T1-weighted images harmonized to the target domain of a normalizing-flow prior
(BlindHarmony). For each input T1w image:

- `*_desc-harmonized_T1w.nii.gz`: the harmonized image on the input's native grid;
- `*_space-<ref>_res-<r>_desc-harmonized_T1w.nii.gz`: the harmonized image on the
  prior's reference grid;
- `*_from-T1w_to-<ref>_mode-image_xfm.txt`: the affine from the native image to the
  reference (ITK text format, listed in `.bidsignore`).

Each image's JSON sidecar records its source, the prior (name, version, SHA256), the
harmonization hyperparameters and quality metrics. `logs/` holds crash files.
"""


@lru_cache(maxsize=1)
def _patterns():
    return json.loads(PATTERNS_FILE.read_text())["default_path_patterns"]


def source_entities(source_file):
    """The naming entities of a raw BIDS file (subject, session, acq, ce, rec, run)."""
    from bids.layout import parse_file_entities

    entities = parse_file_entities(str(source_file))
    return {k: entities[k] for k in SOURCE_ENTITIES if entities.get(k) is not None}


def resolution_label(resolution):
    """A BIDS ``res-`` label for a voxel size in mm: ``2.0 -> '2'``, ``1.5 -> '1p5'``."""
    value = float(resolution)
    if value.is_integer():
        return str(int(value))
    return f"{value:g}".replace(".", "p")


def derivative_path(source_file, *, suffix, extension, **entities):
    """Relative path (a :class:`~pathlib.Path`) of a derivative of ``source_file``.

    Built with pybids' ``build_path`` and our own pattern in strict mode, so an entity
    the pattern cannot hold raises instead of being silently dropped.

    >>> str(derivative_path("/d/sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz",
    ...     suffix="T1w", extension=".nii.gz", desc="harmonized"))
    'sub-01/ses-1/anat/sub-01_ses-1_run-2_desc-harmonized_T1w.nii.gz'
    """
    from bids.layout.writing import build_path

    values = {
        **source_entities(source_file),
        "datatype": "anat",
        "suffix": suffix,
        "extension": extension,
        **{k.rstrip("_"): v for k, v in entities.items() if v is not None},
    }
    path = build_path(values, _patterns(), strict=True)
    if path is None:
        raise ValueError(f"no derivative name for entities {values}")
    return Path(path)


def bids_uri(path, bids_dir, dataset="raw"):
    """``bids:<dataset>:<path relative to bids_dir>`` (a BIDS URI, see DatasetLinks)."""
    rel = Path(path).absolute().relative_to(Path(bids_dir).absolute())
    return f"bids:{dataset}:{rel.as_posix()}"


def _tmp_name(path):
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; move it onto ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create folder {path.parent}: {err}") from None
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path, data):
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_copy(src, dst):
    """Copy ``src`` onto ``dst`` atomically (a re-run replaces the old file in one step)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def sidecar_path(path):
    """The JSON sidecar of a NIfTI (or other) derivative file."""
    path = Path(path)
    name = path.name
    for ext in (".nii.gz", ".nii", ".txt", ".h5"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def write_derivative(in_file, out_file, metadata=None):
    """Copy ``in_file`` to ``out_file`` and write its JSON sidecar, both atomically.

    The sidecar is written first, so a complete image always has its metadata.
    """
    out_file = Path(out_file)
    if metadata is not None:
        atomic_write_json(sidecar_path(out_file), metadata)
    atomic_copy(in_file, out_file)
    return out_file


def t1w_sidecar(
    *,
    source_file,
    bids_dir,
    output_dir=None,
    sources=(),
    prior=None,
    harmonization=None,
    metrics=None,
    space=None,
    resolution=None,
):
    """The JSON sidecar of a harmonized T1w image.

    Parameters
    ----------
    source_file : path
        The raw T1w image, inside ``bids_dir``.
    bids_dir : path
        The input dataset (the ``raw`` entry of DatasetLinks).
    output_dir : path
        The output dataset, needed when ``sources`` is not empty.
    sources : list of path
        Files of the output dataset the image also derives from (the transform).
    prior : dict
        ``{"Name", "Version", "SHA256"}`` of the prior bundle.
    harmonization : dict
        ``{"Method", "Alpha", "Beta1", "Beta2", "Iterations", "Device"}``.
    metrics : dict
        Quality metrics returned by the harmonization.
    space, resolution : str, float or None
        The reference space and its voxel size (mm) for a reference-space image;
        ``None`` for the native image.
    """
    source_uri = bids_uri(source_file, bids_dir)
    meta = {
        "Sources": [source_uri] + [bids_uri(f, output_dir, dataset="") for f in sources],
        "SkullStripped": bool((metrics or {}).get("SkullStripped", False)),
    }
    if space is None:
        meta["SpatialReference"] = source_uri
    else:
        meta["SpatialReference"] = f"https://www.templateflow.org/browse/#tpl-{space}"
        if resolution is not None:
            meta["Resolution"] = {
                resolution_label(resolution): f"{float(resolution):g} mm isotropic "
                "on the prior's slice grid"
            }
    if prior:
        meta["Prior"] = dict(prior)
    if harmonization:
        meta["Harmonization"] = dict(harmonization)
    if metrics:
        meta["Metrics"] = dict(metrics)
    return meta


def save_derivative(
    in_file,
    *,
    output_dir,
    bids_dir,
    source_file,
    suffix,
    extension,
    entities=None,
    sidecar=True,
    **sidecar_args,
):
    """Name, write and describe one derivative of ``source_file``; return its paths.

    ``entities`` may hold ``desc``, ``space``, ``res``, ``from_``, ``to``, ``mode``;
    ``space`` and ``res`` also go into the sidecar (with ``resolution`` in mm).

    Returns
    -------
    (Path, Path or None)
        The written file and its JSON sidecar (``None`` when ``sidecar`` is false).
    """
    entities = dict(entities or {})
    out_file = Path(output_dir) / derivative_path(
        source_file, suffix=suffix, extension=extension, **entities
    )
    meta = None
    if sidecar:
        meta = t1w_sidecar(
            source_file=source_file,
            bids_dir=bids_dir,
            output_dir=output_dir,
            space=entities.get("space"),
            **sidecar_args,
        )
    write_derivative(in_file, out_file, meta)
    return out_file, (sidecar_path(out_file) if sidecar else None)


def dataset_description(bids_dir):
    """The ``dataset_description.json`` of the output dataset."""
    uri = Path(bids_dir).absolute().as_uri()
    generated = {
        "Name": __packagename__,
        "Version": __version__,
        "CodeURL": __url__,
    }
    container_type = os.getenv("BLINDHARMONY_CONTAINER_TYPE")
    if container_type:
        generated["Container"] = {"Type": container_type}
        tag = os.getenv("BLINDHARMONY_CONTAINER_TAG")
        if tag:
            generated["Container"]["Tag"] = tag
    return {
        "Name": "BlindHarmony: harmonized T1-weighted images",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": uri}],
        "DatasetLinks": {"raw": uri},
    }


def init_output_dir(output_dir, bids_dir):
    """Create the output dataset's root files; safe with concurrent participant jobs.

    Writes ``dataset_description.json`` (atomically; every job writes the same
    content), merges our lines into ``.bidsignore``, writes a ``README`` when there is
    none and creates ``logs/``.

    Raises
    ------
    OutputError
        The folder cannot be created, or it holds another pipeline's derivatives
        (exit 73).
    """
    output_dir = Path(output_dir)
    try:
        (output_dir / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {output_dir}: {err}") from None

    desc_file = output_dir / "dataset_description.json"
    if desc_file.exists():
        try:
            old = json.loads(desc_file.read_text())
            names = [g.get("Name") for g in old.get("GeneratedBy", [])]
        except (ValueError, AttributeError, TypeError):
            names = [None]
        if names and names[0] != __packagename__:
            raise OutputError(
                f"{output_dir} holds derivatives of another pipeline ({names[0]}); "
                "choose an empty or BlindHarmony output folder"
            )
    atomic_write_json(desc_file, dataset_description(bids_dir))
    merge_bidsignore(output_dir / ".bidsignore", BIDSIGNORE)
    readme = output_dir / "README.md"
    if not readme.exists():
        atomic_write_text(readme, README_TEXT)
    return output_dir


def merge_bidsignore(path, lines):
    """Add ``lines`` to a ``.bidsignore`` file, keeping what it holds, atomically."""
    path = Path(path)
    old = path.read_text().splitlines() if path.exists() else []
    merged = list(dict.fromkeys([*old, *lines]))
    if merged != old:
        atomic_write_text(path, "\n".join(merged) + "\n")
    return path
