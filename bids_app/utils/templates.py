"""The reference template's files, found through TemplateFlow without any network access.

The package carries its reference template as a TemplateFlow tree,
``bids_app/data/templateflow/tpl-MNIColin27/`` (Colin27 on the prior's 2 mm slice grid and
its brain mask; provenance and license: ``bids_app/data/LICENSE-templates.md``). Files are
looked up as nipreps apps do, with ``templateflow.api.get`` on ``$TEMPLATEFLOW_HOME``; when
that variable is unset it is set to the package's tree, so TemplateFlow finds the files
there and neither downloads anything nor writes its skeleton into the user's cache. A
``TEMPLATEFLOW_HOME`` of your own is used as it is (the container image copies the
package's tree into its ``/opt/templateflow``: ``python -m bids_app.utils.templates DEST``).
When TemplateFlow is not installed, or the home has no such file (a TemplateFlow archive
lacks this grid), the package's file is returned.

>>> template_path().name
'tpl-MNIColin27_res-2_T1w.nii.gz'
>>> template_path("mask", desc="brain").name
'tpl-MNIColin27_res-2_desc-brain_mask.nii.gz'
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path

LOGGER = logging.getLogger("blindharmony.templates")

#: The package's TemplateFlow tree.
PACKAGE_HOME = Path(str(resources.files("bids_app") / "data" / "templateflow"))
#: TemplateFlow identifier and resolution index of the reference template.
TEMPLATE = "MNIColin27"
RESOLUTION = 2


def packaged_file(suffix="T1w", *, desc=None):
    """The package's own file of the reference template (TemplateFlow's file name)."""
    name = f"tpl-{TEMPLATE}_res-{RESOLUTION}" + (f"_desc-{desc}" if desc else "")
    return PACKAGE_HOME / f"tpl-{TEMPLATE}" / f"{name}_{suffix}.nii.gz"


@lru_cache(maxsize=None)
def template_path(suffix="T1w", *, desc=None):
    """Path of a file of the reference template (MNIColin27 on the prior's 2 mm grid).

    ``templateflow.api.get("MNIColin27", resolution=2, desc=desc, suffix=suffix)`` on
    ``$TEMPLATEFLOW_HOME`` (the package's tree unless the variable is set); the package's
    file when TemplateFlow is not installed or finds nothing.

    Parameters
    ----------
    suffix : str
        ``"T1w"`` (the template) or ``"mask"`` (with ``desc="brain"``).
    desc : str or None
        TemplateFlow's ``desc`` entity.

    Returns
    -------
    pathlib.Path
    """
    os.environ.setdefault("TEMPLATEFLOW_HOME", str(PACKAGE_HOME))  # before the import
    try:
        from templateflow import api
    except ImportError:  # templateflow is not installed
        return packaged_file(suffix, desc=desc)
    except OSError as exc:  # an empty TEMPLATEFLOW_HOME it cannot write its skeleton into
        LOGGER.warning("TemplateFlow cannot start (%s): using the package's template", exc)
        return packaged_file(suffix, desc=desc)
    try:
        found = api.get(TEMPLATE, resolution=RESOLUTION, desc=desc, suffix=suffix,
                        extension=".nii.gz")
    except Exception as exc:  # e.g. an empty placeholder TemplateFlow cannot download
        LOGGER.warning("TemplateFlow could not get %s (%s): using the package's file",
                       packaged_file(suffix, desc=desc).name, exc)
        found = []
    if isinstance(found, Path):
        return found
    return packaged_file(suffix, desc=desc)


def populate(home):
    """Copy the package's TemplateFlow tree into ``home`` (files already there are kept)."""
    home = Path(home)
    for source in sorted(PACKAGE_HOME.rglob("*")):
        target = home / source.relative_to(PACKAGE_HOME)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return home


def main(argv=None):
    """``python -m bids_app.utils.templates DEST``: populate a TemplateFlow home."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bids_app.utils.templates TEMPLATEFLOW_HOME", file=sys.stderr)
        return 64
    print(f"populated {populate(argv[0])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
