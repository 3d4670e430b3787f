"""Fixed-width columns that may store a hash: flagged when a fix makes the hash longer.

Changing md5 (32 hex characters) to scrypt (128) or sha256 (64) is right, but a
``String(80)`` / ``CharField(max_length=80)`` / ``VARCHAR(80)`` column that
stores the value would truncate it or reject the insert. The fix does not
widen the column (that needs a migration the user owns); it reports the
column as a follow-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shared.contract.workspace import SKIP_DIRS

__all__ = ["Column", "narrow_columns"]


# name = ...String(80) / CharField(max_length=80) / VARCHAR(80), on one line
_MODEL = re.compile(
    r"""^\s*(?P<name>\w+)\s*(?::[^=]*)?=.*?\b(?:String|Unicode|CharField|VARCHAR|CHAR)\s*\(\s*"""
    r"""(?:(?:length|max_length)\s*=\s*)?(?P<width>\d+)""",
    re.IGNORECASE,
)
# password_hash VARCHAR(80) inside SQL text
_SQL = re.compile(
    r"""\b(?P<name>\w+)\s+(?:VARCHAR|CHAR|CHARACTER VARYING)\s*\(\s*(?P<width>\d+)\s*\)""", re.IGNORECASE
)


@dataclass(frozen=True)
class Column:
    file: str
    line: int
    name: str
    width: int


def narrow_columns(root: Path, width: int, words: tuple[str, ...]) -> list[Column]:
    """Columns of the workspace's Python files that look like they store the hash (their name
    contains one of ``words``, e.g. ``password``) and hold fewer than ``width`` characters."""
    out: list[Column] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for n, line in enumerate(lines, 1):
            for rx in (_MODEL, _SQL):
                for found in rx.finditer(line):
                    name, size = found["name"], int(found["width"])
                    if size < width and any(w in name.lower() for w in words):
                        out.append(Column(rel.as_posix(), n, name, size))
    return out
