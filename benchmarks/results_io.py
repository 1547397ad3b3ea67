"""How the benchmark scripts hand over a result: the Markdown table on stdout and, with ``--out``,
``<out>.md`` (the table, for the README) and ``<out>.json`` (the raw numbers, for anyone re-plotting)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def publish(lines: list[str], results: Any, out: Path | None) -> int:
    """Print the table, write it and the raw results beside each other when ``out`` is given; 0."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))
    return 0
