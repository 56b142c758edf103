"""What the package installs: its data files and the BIDS validator's configuration."""

import configparser
import fnmatch
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bids_app"


def _package_data():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup["options.package_data"]["bids_app"].split()


def _globbed(path, pattern):
    """Whether setuptools' glob ``pattern`` (``*`` stays within a folder) matches ``path``."""
    parts, pats = path.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(map(fnmatch.fnmatchcase, parts, pats))


def test_validator_config_copy_is_the_top_level_file():
    """``bids_validator_config.json`` (top level) is the source; the package installs
    ``bids_app/data/bids_validator_config.json``, which must be the same file."""
    from bids_app.cli.validation import CONFIG_FILE

    source = ROOT / "bids_validator_config.json"
    assert Path(CONFIG_FILE).resolve() == PACKAGE / "data" / "bids_validator_config.json"
    assert Path(CONFIG_FILE).read_bytes() == source.read_bytes(), (
        "bids_app/data/bids_validator_config.json differs from bids_validator_config.json: "
        "edit the top-level file and copy it into bids_app/data/")
    config = json.loads(source.read_text())
    assert set(config) <= {"ignore", "warning", "error"}
    assert all(set(rule) == {"code"} for rules in config.values() for rule in rules)


def test_every_data_file_is_installed():
    """Each file under bids_app/data matches a package_data pattern of setup.cfg (a file
    outside them would be missing from a wheel)."""
    patterns = _package_data()
    files = [p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "data").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert any(f.startswith("data/templateflow/tpl-MNIColin27/") for f in files)
    missing = [f for f in files if not any(_globbed(f, pat) for pat in patterns)]
    assert not missing, f"not in setup.cfg's package_data: {missing}"
