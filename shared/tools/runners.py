"""Which runner a project's own tests use, and how to read what it printed.

- **Django**: a ``manage.py`` at the root that mentions Django -> ``manage.py
  test --noinput -v 2`` (Django's runner finds ``tests.py`` and ``test*.py``);
  each test's outcome is read from unittest's verbose lines.
- **pytest** otherwise, for ``test_*.py``/``*_test.py`` files and, when the
  project has no pytest configuration of its own, ``tests.py`` files too (the
  unittest pattern pytest does not collect by default; pytest runs
  ``unittest.TestCase`` classes itself).

``missing_dependency`` turns a run where nothing could even start because a
module is missing into the one-line environment reason the score respects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.contract.workspace import SKIP_DIRS

__all__ = ["Layout", "UnittestOutcome", "detect_layout", "missing_dependency", "parse_unittest_verbose"]

Runner = Literal["pytest", "django"]

_VERBOSE = re.compile(
    r"^(?P<name>\S+) \((?P<id>[\w.]+)\)(?:\n(?:[^\n]*))? \.\.\. "
    r"(?P<res>ok|FAIL|ERROR|skipped[^\n]*|expected failure|unexpected success)$",
    re.MULTILINE,
)
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")


@dataclass(frozen=True)
class Layout:
    """How the workspace's tests are run (``runner``) and what was found (``why``)."""

    runner: Runner
    why: str


@dataclass(frozen=True)
class UnittestOutcome:
    outcomes: dict[str, str]
    ran: int | None


def _files(root: Path, pattern: str) -> list[Path]:
    return [
        p
        for p in root.rglob(pattern)
        if p.is_file() and not any(part in SKIP_DIRS for part in p.relative_to(root).parts[:-1])
    ]


def detect_layout(root: Path) -> Layout | None:
    """The runner the project's own tests need, or ``None`` when the workspace has no tests."""
    manage = root / "manage.py"
    if manage.is_file() and manage.stat().st_size < 64 * 1024:
        text = manage.read_text(encoding="utf-8", errors="replace")
        if "django" in text.lower():
            if _files(root, "test*.py"):
                return Layout("django", "manage.py (Django) and test modules")
            return None
    if _files(root, "test_*.py") or _files(root, "*_test.py"):
        return Layout("pytest", "test_*.py / *_test.py modules")
    if _files(root, "tests.py"):
        return Layout("pytest", "tests.py modules (unittest naming)")
    return None


def parse_unittest_verbose(text: str) -> UnittestOutcome:
    """Each test's outcome from unittest's ``-v 2`` lines (``name (module.Class.name) ... ok``)."""
    outcomes: dict[str, str] = {}
    for match in _VERBOSE.finditer(text):
        res = match["res"]
        if res in ("ok", "unexpected success"):
            outcome = "passed"
        elif res == "FAIL":
            outcome = "failed"
        elif res == "ERROR":
            outcome = "error"
        else:
            outcome = "skipped"
        outcomes[match["id"]] = outcome
    ran = re.search(r"^Ran (\d+) tests? in", text, re.MULTILINE)
    return UnittestOutcome(outcomes, int(ran[1]) if ran else None)


def missing_dependency(output: str, root: Path, passed: int, failed: int) -> str | None:
    """One line when the tests could not start because a module outside the workspace is missing.

    Only when nothing passed or failed (every error is an import error): a
    test that ran and failed is the project's problem, not the environment's.
    """
    if passed or failed:
        return None
    missing = []
    for name in dict.fromkeys(_NO_MODULE.findall(output)):
        top = name.split(".")[0]
        if (root / top).is_dir() or (root / f"{top}.py").is_file() or (root / "src" / top).exists():
            continue  # the workspace's own module: a real bug in the project
        missing.append(top)
    if not missing:
        return None
    return (
        f"missing dependency: the tests import {', '.join(repr(m) for m in missing)}, which the project does not"
        " declare installably (pyproject.toml, requirements*.txt, setup.cfg)"
    )
