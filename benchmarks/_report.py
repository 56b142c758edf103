"""Writing a benchmark's report: ``NAME.json`` and ``NAME.md`` under ``--out``."""

from __future__ import annotations

import json


def write_report(out, name, report, markdown):
    """Write ``report`` as ``out/name.json`` and ``markdown(report)`` as ``out/name.md``,
    print the markdown, and return 0 (the benchmark's exit status)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / f"{name}.md").write_text(text)
    print(text)
    return 0
