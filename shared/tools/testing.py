"""Run a workspace's tests for real: pytest under coverage, in a clean subprocess.

``run_tests`` answers the "test" step and gates every fix the developer makes;
``run_suite`` also keeps which tests passed (the developer refuses a fix that
breaks a test that passed before); ``performance_profile`` measures the suite's
slowest tests and the code's complexity hot spots for the "performance_check"
step. Nothing is estimated: every figure comes from pytest's JUnit XML,
coverage's JSON report or radon.

The child runs with ``cwd=workspace``, the current interpreter and a minimal
environment (no ``CADRE_*`` settings, ``PYTHONDONTWRITEBYTECODE=1``), with
coverage's data file and every report in a temporary folder, so the workspace
is left exactly as it was.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET  # noqa: S405 - parses the JUnit XML our own pytest run wrote
from configparser import ConfigParser
from configparser import Error as ConfigError
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from radon.complexity import cc_rank
from radon.visitors import Class, ComplexityVisitor, Function

from shared.protocol import TestReport
from shared.workspace import SKIP_DIRS

__all__ = [
    "TestRun",
    "TimedTest",
    "HotSpot",
    "PerformanceProfile",
    "has_tests",
    "run_suite",
    "run_tests",
    "performance_profile",
]

logger = logging.getLogger(__name__)

_TAIL = 3000
_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


@dataclass(frozen=True)
class TestRun:
    """One pytest run: the report, which tests passed, and each test's measured time."""

    __test__ = False  # not a pytest test class

    report: TestReport
    passed_ids: frozenset[str]
    durations: dict[str, float] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0


class TimedTest(msgspec.Struct, frozen=True, kw_only=True):
    test: str
    seconds: float
    outcome: str


class HotSpot(msgspec.Struct, frozen=True, kw_only=True):
    file: str
    name: str
    line: int
    complexity: int
    rank: str


class PerformanceProfile(msgspec.Struct, frozen=True, kw_only=True):
    """Measured figures of a workspace (the "performance_check" step's evidence)."""

    tests: TestReport | None
    wall_seconds: float | None
    test_seconds: float | None
    slowest: list[TimedTest] = []
    hot_spots: list[HotSpot] = []
    functions: int = 0
    mean_complexity: float | None = None


def _py_files(root: Path) -> list[Path]:
    return [
        p
        for p in sorted(root.rglob("*.py"))
        if p.is_file() and not any(part in SKIP_DIRS for part in p.relative_to(root).parts[:-1])
    ]


def _is_test_file(name: str) -> bool:
    return (name.startswith("test_") and name.endswith(".py")) or name.endswith("_test.py")


def has_tests(workspace: Path) -> bool:
    """Whether the workspace holds any pytest-style test module."""
    return any(_is_test_file(p.name) for p in _py_files(workspace))


def _own_pytest_config(root: Path) -> bool:
    """Whether the workspace root carries its own pytest configuration."""
    if (root / "pytest.ini").is_file() or (root / ".pytest.ini").is_file():
        return True
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            if "pytest" in tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}):
                return True
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            pass
    for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        parser = ConfigParser()
        try:
            if parser.read(root / name, encoding="utf-8") and parser.has_section(section):
                return True
        except (ConfigError, UnicodeDecodeError):
            pass
    return False


def _child_env(tmp: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(PYTHONDONTWRITEBYTECODE="1", COVERAGE_FILE=str(tmp / ".coverage"))
    return env


def _omit(root: Path) -> str:
    pats = ("test_*.py", "*/test_*.py", "*_test.py", "conftest.py", "*/conftest.py", "tests/*", "*/tests/*")
    return ",".join(f"{root}/{p}" for p in pats)


def _parse_junit(path: Path) -> tuple[dict[str, str], dict[str, float], int]:
    """Each test's outcome and time, plus collection errors, from pytest's JUnit XML."""
    outcomes: dict[str, str] = {}
    durations: dict[str, float] = {}
    collection_errors = 0
    root = ET.parse(path).getroot()  # noqa: S314 - our own pytest wrote this file
    for case in root.iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        test_id = f"{cls}::{name}" if cls else name
        children = {child.tag for child in case}
        if "error" in children and not cls:
            collection_errors += 1  # a module that failed to import/collect
            outcomes[test_id] = "error"
            continue
        if "failure" in children:
            outcome = "failed"
        elif "error" in children:
            outcome = "error"
        elif "skipped" in children:
            outcome = "skipped"
        else:
            outcome = "passed"
        outcomes[test_id] = outcome
        durations[test_id] = float(case.get("time") or 0.0)
    return outcomes, durations, collection_errors


def _tail(text: str) -> str:
    return text[-_TAIL:]


def run_suite(workspace: Path, timeout: float = 300, *, coverage: bool = True) -> TestRun | None:
    """Run the workspace's tests (under coverage when asked); None when it has no tests."""
    root = workspace.resolve()
    if not has_tests(root):
        return None
    with tempfile.TemporaryDirectory(prefix="cadre-tests-") as tmp_name:
        tmp = Path(tmp_name)
        junit = tmp / "junit.xml"
        pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        if not _own_pytest_config(root):
            # keep pytest from adopting a config file found above the workspace
            (tmp / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
            pytest_args += ["-c", str(tmp / "pytest.ini"), f"--rootdir={root}", f"--confcutdir={root}"]
        if coverage:
            argv = [sys.executable, "-m", "coverage", "run", f"--source={root}", f"--omit={_omit(root)}"]
            argv += pytest_args
            shown = "coverage run --source=. -m pytest -q -p no:cacheprovider"
        else:
            argv = [sys.executable, *pytest_args]
            shown = "python -m pytest -q -p no:cacheprovider"
        env = _child_env(tmp)
        started = time.perf_counter()
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv from the current interpreter, no shell
                argv, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            report = TestReport(
                passed=0,
                failed=0,
                errors=1,
                coverage=None,
                command=shown,
                output_tail=_tail(f"{out}\n[cadre] the test run timed out after {timeout:.0f}s"),
            )
            return TestRun(report, frozenset(), wall_seconds=time.perf_counter() - started)
        wall = time.perf_counter() - started
        # stderr (plugin warnings) first, so the tail ends with pytest's own summary
        output = _tail((proc.stderr + "\n" if proc.stderr.strip() else "") + proc.stdout)
        if proc.returncode == 5:  # pytest: no tests collected
            return None
        if not junit.is_file():
            report = TestReport(
                passed=0, failed=0, errors=1, coverage=None, command=shown, output_tail=output
            )
            return TestRun(report, frozenset(), wall_seconds=wall)
        outcomes, durations, collection_errors = _parse_junit(junit)
        percent = _coverage_percent(root, tmp, env) if coverage else None
    counts = {k: sum(1 for v in outcomes.values() if v == k) for k in ("passed", "failed", "error")}
    report = TestReport(
        passed=counts["passed"],
        failed=counts["failed"],
        errors=counts["error"],
        coverage=percent,
        command=shown,
        output_tail=output,
    )
    logger.info(
        "tests ran workspace=%s passed=%d failed=%d errors=%d (collection %d) coverage=%s secs=%.2f",
        root.name,
        report.passed,
        report.failed,
        report.errors,
        collection_errors,
        percent,
        wall,
    )
    passed = frozenset(t for t, o in outcomes.items() if o == "passed")
    return TestRun(report, passed, durations, outcomes, wall)


def _coverage_percent(root: Path, tmp: Path, env: dict[str, str]) -> float | None:
    out = tmp / "coverage.json"
    proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-m", "coverage", "json", "-q", "-o", str(out)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not out.is_file():
        logger.info("no coverage data workspace=%s: %s", root.name, (proc.stdout + proc.stderr).strip())
        return None
    totals = json.loads(out.read_text(encoding="utf-8")).get("totals", {})
    percent = totals.get("percent_covered")
    return round(float(percent), 1) if percent is not None else None


def run_tests(workspace: Path, timeout: float = 300) -> TestReport | None:
    """Run the workspace's tests under coverage; None when the workspace has no tests."""
    run = run_suite(workspace, timeout, coverage=True)
    return run.report if run is not None else None


def _functions(blocks: list[object]) -> list[Function]:
    out: list[Function] = []
    for block in blocks:
        if isinstance(block, Class):
            out += _functions([*block.methods, *block.inner_classes])
        elif isinstance(block, Function):
            out += [block, *_functions(block.closures)]
    return out


def performance_profile(workspace: Path, timeout: float = 300, top: int = 5) -> PerformanceProfile:
    """Measure the workspace: test wall time and slowest tests, complexity hot spots.

    Tests run without coverage (tracing would distort the timings). Hot spots
    are the ``top`` most complex non-test functions by radon's cyclomatic complexity.
    """
    root = workspace.resolve()
    run = run_suite(root, timeout, coverage=False)
    slowest = []
    if run is not None:
        ranked = sorted(run.durations.items(), key=lambda kv: kv[1], reverse=True)[:top]
        slowest = [TimedTest(test=t, seconds=round(s, 4), outcome=run.outcomes[t]) for t, s in ranked]
    spots: list[HotSpot] = []
    for path in _py_files(root):
        rel = path.relative_to(root)
        if _is_test_file(rel.name) or "tests" in rel.parts[:-1] or rel.name == "conftest.py":
            continue
        try:
            visitor = ComplexityVisitor.from_code(path.read_text(encoding="utf-8"))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        for fn in _functions([*visitor.functions, *visitor.classes]):
            name = f"{fn.classname}.{fn.name}" if fn.classname else fn.name
            spots.append(
                HotSpot(
                    file=rel.as_posix(),
                    name=name,
                    line=fn.lineno,
                    complexity=fn.complexity,
                    rank=cc_rank(fn.complexity),
                )
            )
    mean = round(sum(s.complexity for s in spots) / len(spots), 2) if spots else None
    spots.sort(key=lambda s: (-s.complexity, s.file, s.line))
    return PerformanceProfile(
        tests=run.report if run is not None else None,
        wall_seconds=round(run.wall_seconds, 3) if run is not None else None,
        test_seconds=round(float(sum(run.durations.values())), 3) if run is not None else None,
        slowest=slowest,
        hot_spots=spots[:top],
        functions=len(spots),
        mean_complexity=mean,
    )
