"""The shapes one fix run passes around: the outcome, a finding's plan, and line/diff helpers.

``FixOutcome`` is what ``apply_fixes`` returns; ``Plan`` is what a rewrite
proposes for one finding (candidate texts, a dispute, or why it cannot be
fixed); ``Site`` is where the finding is in the file's current text.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.contract.protocol import Change, Dispute, FollowUp, Issue, Setting
from shared.tools.fixes.envnames import EnvNames

__all__ = [
    "Candidate",
    "FixOutcome",
    "Plan",
    "Site",
    "Unfixable",
    "Verify",
    "file_diff",
    "map_line",
    "rule_code",
]


Verify = Callable[[], str | None]
"""Checks the workspace after a change: None when all is well, else why not."""


@dataclass
class FixOutcome:
    """What ``apply_fixes`` did: changes kept, changes refused, findings left and why."""

    changes: list[Change] = field(default_factory=list)
    refused: list[Change] = field(default_factory=list)
    unfixable: list[tuple[Issue, str]] = field(default_factory=list)
    disputes: list[Dispute] = field(default_factory=list)
    waived: list[str] = field(default_factory=list)
    # configure before running: environment variables the changed code now reads
    configure: list[Setting] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)

    @property
    def fixed_ids(self) -> set[str]:
        return {c.addresses for c in self.changes if c.addresses}

    @property
    def files(self) -> list[str]:
        return sorted({c.file for c in self.changes if c.diff})


def rule_code(issue: Issue) -> tuple[str, str]:
    """``("bandit", "B506")`` from ``bandit:B506`` (or from ``tool`` plus a bare rule)."""
    if ":" in issue.rule:
        tool, code = issue.rule.split(":", 1)
        return tool.lower(), code
    return issue.tool.lower(), issue.rule


class Unfixable(Exception):
    """The finding cannot be fixed by rewriting; the message says why."""


@dataclass
class Candidate:
    """One way to fix a finding: the new file text, and what applying it asks of the user."""

    text: str
    description: str
    kind: str = "security-fix"
    settings: list[Setting] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)


@dataclass
class Plan:
    candidates: list[Candidate] = field(default_factory=list)
    dispute: Dispute | None = None
    unfixable: str | None = None
    note: str | None = None  # e.g. "already fixed by the same ruff pass"


@dataclass
class Site:
    """Where a finding is: the file (relative path) and the line in its current text."""

    rel: str
    line: int
    issue: Issue
    must_fix: bool
    root: Path = field(default_factory=Path)
    env: EnvNames = field(default_factory=EnvNames)


def map_line(old: str, new: str, line: int) -> int | None:
    """Where line ``line`` of ``old`` is in ``new`` (None when it was deleted)."""
    sm = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if i1 <= line - 1 < i2:
            if tag == "equal":
                return j1 + (line - 1 - i1) + 1
            if tag == "delete":
                return None
            return min(j1 + (line - 1 - i1), j2 - 1) + 1
    return None


def file_diff(rel: str, before: str, after: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{rel}", f"b/{rel}"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
