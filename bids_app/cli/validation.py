"""Run the BIDS validator (``bids-validator-deno``) on the input dataset.

Only the selected participants are validated, as in fMRIPrep: the validator runs on a
temporary tree of symbolic links holding the dataset's top-level files and the selected
``sub-*`` folders. A missing validator is a warning, not an error.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ValidationError

LOGGER = logging.getLogger("blindharmony.validation")

VALIDATOR = "bids-validator-deno"
CONFIG_FILE = Path(__file__).parent.parent / "data" / "bids_validator_config.json"


def _link_tree(bids_dir, participant_label, dest):
    """Symlink the top level of ``bids_dir`` and the selected participants into ``dest``."""
    keep = {f"sub-{label}" for label in participant_label}
    Path(dest).mkdir(parents=True, exist_ok=True)
    for entry in Path(bids_dir).iterdir():
        if entry.name.startswith("sub-") and entry.name not in keep:
            continue
        if entry.name in ("derivatives", "sourcedata", "code"):
            continue
        (Path(dest) / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return Path(dest)


def summarize(report, limit=10):
    """One line per error in a ``--format json`` report (at most ``limit``)."""
    issues = report.get("issues", {}).get("issues", [])
    errors = [i for i in issues if i.get("severity") == "error"]
    lines = []
    for issue in errors[:limit]:
        where = issue.get("location", "")
        lines.append(f"{issue.get('code')}: {where}".rstrip(": "))
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more")
    return errors, lines


def validate_bids(bids_dir, participant_label=None, *, config=CONFIG_FILE, executable=None):
    """Validate ``bids_dir`` (restricted to ``participant_label`` when given).

    Returns
    -------
    bool
        ``True`` when the validator ran and found no error, ``False`` when it is not
        installed (a warning is logged).

    Raises
    ------
    ValidationError
        The validator reported errors (exit 16); the message lists them.
    """
    executable = executable or shutil.which(VALIDATOR)
    if executable is None:
        LOGGER.warning(
            "%s is not installed: skipping BIDS validation "
            "(pip install bids-validator-deno)",
            VALIDATOR,
        )
        return False

    with tempfile.TemporaryDirectory(prefix="blindharmony_bids_") as tmp:
        target = Path(bids_dir)
        if participant_label:
            target = _link_tree(bids_dir, participant_label, Path(tmp) / "dataset")
        cmd = [executable, str(target), "--format", "json", "--config", str(config)]
        LOGGER.info("Running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return True
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {}
    _, lines = summarize(report)
    if not lines:
        lines = [(proc.stderr or proc.stdout).strip()[-2000:]]
    raise ValidationError(
        f"the BIDS validator found errors in {bids_dir} "
        "(fix them or use --skip-bids-validation):\n  " + "\n  ".join(lines)
    )
