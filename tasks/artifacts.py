"""Small helpers for the Prefect artifacts loopml publishes."""

from __future__ import annotations

from typing import Any


def artifact_key(project: str, kind: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) for a project's artifact kind."""
    raw = f"{project}-{kind}".lower()
    return "".join(c if c.isalnum() else "-" for c in raw)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-style markdown table from dict rows (columns from the first row)."""
    if not rows:
        return "_(none)_"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")
