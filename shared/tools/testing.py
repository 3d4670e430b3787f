"""Run a workspace's tests for real, sandboxed, in the project's own environment.

``run_tests`` answers the "test" step and gates every fix the developer makes;
``run_suite`` also keeps which tests passed (the developer refuses a fix that
breaks a test that passed before); ``performance_profile`` measures the suite's
slowest tests and the code's complexity hot spots for the "performance_check"
step. Nothing is estimated: every figure comes from pytest's JUnit XML,
unittest's verbose lines (Django), coverage's JSON report or radon.

Workspace code is untrusted: the tests run in a bubblewrap sandbox
(``shared.tools.sandbox``) on a throw-away copy of the workspace, with the
interpreter of the project's own environment (``shared.tools.pyenv``) and the
project's own runner (``shared.tools.runners``). The workspace is left exactly
as it was. When the tests cannot run for an environment reason (no sandbox,
dependencies that cannot be installed, an undeclared import) the report's
``environment_error`` says why in one line.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import tomllib
import xml.etree.ElementTree as ET  # noqa: S405 - parses the JUnit XML our own pytest run wrote
from configparser import ConfigParser
from configparser import Error as ConfigError
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from radon.complexity import cc_rank

from shared.contract.protocol import TestReport
from shared.contract.workspace import SKIP_DIRS
from shared.tools.analysis import is_test_file, python_files, radon_functions
from shared.tools.pyenv import EnvBuilder, EnvUnavailable, declared
from shared.tools.runners import Layout, detect_layout, missing_dependency, parse_unittest_verbose
from shared.tools.sandbox import Sandbox

if TYPE_CHECKING:
    from shared.agent.settings import AgentSettings

__all__ = [
    "TestRun",
    "TestRuntime",
    "TimedTest",
    "HotSpot",
    "PerformanceProfile",
    "default_runtime",
    "has_tests",
    "run_suite",
    "run_tests",
    "performance_profile",
    "hot_spots",
]

logger = logging.getLogger(__name__)

_TAIL = 3000
_PARSE_LIMIT = 1024 * 1024  # bytes of runner output / report files read back from the sandbox


@dataclass(frozen=True)
class TestRuntime:
    """Where workspace tests run: the sandbox and the per-project environment builder."""

    __test__ = False  # not a pytest test class

    sandbox: Sandbox
    envs: EnvBuilder

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> TestRuntime:
        sandbox = Sandbox.from_settings(settings)
        envs = EnvBuilder(
            sandbox,
            settings.env_cache_dir,
            install=settings.env_install,
            allow_builds=settings.env_allow_builds,
        )
        return cls(sandbox, envs)


@functools.cache
def default_runtime() -> TestRuntime:
    """The default sandbox and an environment cache in ``~/.cache/cadre/envs`` (services pass their own)."""
    sandbox = Sandbox()
    return TestRuntime(sandbox, EnvBuilder(sandbox, Path.home() / ".cache" / "cadre" / "envs"))


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


def has_tests(workspace: Path) -> bool:
    """Whether the workspace holds tests its runner would find (pytest, unittest ``tests.py``, Django)."""
    return detect_layout(workspace.resolve()) is not None


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


def _child_env(out: Path, copy: Path) -> dict[str, str]:
    env = {"PYTHONDONTWRITEBYTECODE": "1", "COVERAGE_FILE": str(out / ".coverage"), "LANG": "C.UTF-8"}
    if (copy / "src").is_dir():
        env["PYTHONPATH"] = str(
            copy / "src"
        )  # src layout: the project is not installed, its code is on the path
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


def _not_run(reason: str, command: str, runner: str = "pytest") -> TestRun:
    """A report for tests that could not run for an environment reason (the score skips it)."""
    logger.warning("tests not run: %s", reason)
    report = TestReport(
        passed=0,
        failed=0,
        errors=0,
        coverage=None,
        command=command,
        output_tail=f"[cadre] tests not run: {reason}",
        environment_error=reason,
        runner=runner,
    )
    return TestRun(report, frozenset())


def _copy_workspace(root: Path, dest: Path) -> None:
    """The sandbox's own copy: symlinks stay links (resolved inside the sandbox), caches are left out."""
    shutil.copytree(root, dest, symlinks=True, ignore=shutil.ignore_patterns(*SKIP_DIRS, ".coverage"))


def _argv(layout: Layout, python: Path, copy: Path, out: Path, coverage: bool) -> tuple[list[str], str]:
    """The command run inside the sandbox and the one shown in the report."""
    if layout.runner == "django":
        tail = [str(copy / "manage.py"), "test", "--noinput", "-v", "2"]
        shown_tail = "manage.py test --noinput -v 2"
    else:
        junit = out / "junit.xml"
        tail = ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        shown_tail = "-m pytest -q -p no:cacheprovider"
        if not _own_pytest_config(copy):
            # keep pytest from adopting a config file found above the workspace
            ini = out / "pytest.ini"
            ini.write_text("[pytest]\npython_files = test_*.py *_test.py tests.py\n", encoding="utf-8")
            tail += ["-c", str(ini), f"--rootdir={copy}", f"--confcutdir={copy}"]
    if coverage:
        pre = [str(python), "-m", "coverage", "run", f"--source={copy}", f"--omit={_omit(copy)}"]
        return pre + tail, f"coverage run --source=. {shown_tail.removeprefix('-m ')}"
    return [str(python), *tail], f"python {shown_tail}"


def run_suite(
    workspace: Path,
    timeout: float = 300,
    *,
    coverage: bool = True,
    runtime: TestRuntime | None = None,
) -> TestRun | None:
    """Run the workspace's tests in the sandbox (under coverage when asked); None when it has no tests.

    The tests run on a copy of the workspace, in the project's own environment
    (see ``shared.tools.pyenv``), with the project's own runner (pytest, or
    Django's ``manage.py test``). When they cannot run for an environment
    reason the report says so in ``environment_error``.
    """
    root = workspace.resolve()
    layout = detect_layout(root)
    if layout is None:
        return None
    rt = runtime or default_runtime()
    shown = "manage.py test" if layout.runner == "django" else "python -m pytest"
    reason = rt.sandbox.unavailable()
    if reason is not None and not rt.sandbox.allow_unsandboxed:
        return _not_run(f"sandbox unavailable, workspace code was not run: {reason}", shown, layout.runner)
    try:
        env = rt.envs.ensure(declared(root))
    except EnvUnavailable as exc:
        return _not_run(exc.reason, shown, layout.runner)
    # one uid for the run and its coverage report (the second reads what the first wrote)
    with tempfile.TemporaryDirectory(prefix="cadre-tests-") as tmp_name, rt.sandbox.slot() as box:
        tmp = Path(tmp_name).resolve()
        copy, out = tmp / "ws", tmp / "out"
        _copy_workspace(root, copy)
        out.mkdir()
        argv, shown = _argv(layout, env.python, copy, out, coverage)
        box.prepare(tmp)
        limits = box.with_limits(wall_seconds=min(timeout, box.limits.wall_seconds))
        child_env = _child_env(out, copy)
        ro = [env.root] if env.root else []
        res = box.run(
            argv, cwd=copy, rw=[copy, out], ro=ro, env=child_env, limits=limits, tail_chars=_PARSE_LIMIT
        )
        output = (f"[cadre] {env.note}\n" if env.note else "") + _tail(res.output)

        def failed_run(tail: str) -> TestRun:
            report = TestReport(
                passed=0,
                failed=0,
                errors=1,
                coverage=None,
                command=shown,
                output_tail=_tail(tail),
                sandboxed=res.sandboxed,
                runner=layout.runner,
            )
            return TestRun(report, frozenset(), wall_seconds=res.wall_seconds)

        if res.timed_out:
            return failed_run(f"{output}\n[cadre] the test run timed out after {limits.wall_seconds:.0f}s")
        durations: dict[str, float] = {}
        if layout.runner == "django":
            parsed = parse_unittest_verbose(res.stderr)
            if parsed.ran == 0:  # Django found no tests ("Ran 0 tests")
                return None
            outcomes, collection_errors = parsed.outcomes, 0
        else:
            if res.returncode == 5:  # pytest: no tests collected
                return None
            junit = out / "junit.xml"
            if not junit.is_file() or junit.stat().st_size > _PARSE_LIMIT * 16:
                return failed_run(output)
            try:
                outcomes, durations, collection_errors = _parse_junit(junit)
            except ET.ParseError as exc:
                return failed_run(f"{output}\n[cadre] unreadable JUnit XML: {exc}")
        if not outcomes and res.returncode != 0:
            collection_errors = 1
            outcomes = {"<run>": "error"}
        percent = _coverage_percent(box, env.python, copy, out, child_env, ro) if coverage else None
    counts = {k: sum(1 for v in outcomes.values() if v == k) for k in ("passed", "failed", "error")}
    missing = missing_dependency(res.output, root, counts["passed"], counts["failed"])
    report = TestReport(
        passed=counts["passed"],
        failed=counts["failed"],
        errors=counts["error"],
        coverage=percent,
        command=shown,
        output_tail=output if missing is None else _tail(f"{output}\n[cadre] {missing}"),
        environment_error=missing,
        sandboxed=res.sandboxed,
        runner=layout.runner,
    )
    logger.info(
        "tests ran workspace=%s runner=%s passed=%d failed=%d errors=%d (collection %d) coverage=%s secs=%.2f",
        root.name,
        layout.runner,
        report.passed,
        report.failed,
        report.errors,
        collection_errors,
        percent,
        res.wall_seconds,
    )
    passed = frozenset(t for t, o in outcomes.items() if o == "passed")
    return TestRun(report, passed, durations, outcomes, res.wall_seconds)


def _coverage_percent(
    box: Sandbox, python: Path, copy: Path, out: Path, env: dict[str, str], ro: list[Path]
) -> float | None:
    """Coverage's JSON report, made inside the sandbox too (the data file is the workspace's output)."""
    report = out / "coverage.json"
    res = box.run(
        [str(python), "-m", "coverage", "json", "-q", "-o", str(report)],
        cwd=copy,
        rw=[copy, out],
        ro=ro,
        env=env,
        limits=box.with_limits(wall_seconds=120.0),
    )
    if res.returncode != 0 or not report.is_file() or report.stat().st_size > _PARSE_LIMIT * 16:
        logger.info("no coverage data workspace=%s: %s", copy.name, res.output.strip()[-300:])
        return None
    try:
        totals = json.loads(report.read_text(encoding="utf-8")).get("totals", {})
        percent = float(totals.get("percent_covered"))
    except (ValueError, TypeError, AttributeError):
        return None
    return round(percent, 1) if 0.0 <= percent <= 100.0 else None


def run_tests(
    workspace: Path, timeout: float = 300, *, runtime: TestRuntime | None = None
) -> TestReport | None:
    """Run the workspace's tests under coverage; None when the workspace has no tests."""
    run = run_suite(workspace, timeout, coverage=True, runtime=runtime)
    return run.report if run is not None else None


def hot_spots(root: Path) -> list[HotSpot]:
    """Every function of the workspace's code (not its tests) with its radon complexity.

    Test code is what the reviewer calls test code (``analysis.is_test_file``): a script
    that only lives in a tests folder counts as code.
    """
    spots: list[HotSpot] = []
    for rel in python_files(root):
        try:
            text = (root / rel).read_text(encoding="utf-8")
            if is_test_file(rel, text):
                continue
            functions = radon_functions(text)
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        for fn in functions:
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
    return spots


def performance_profile(
    workspace: Path, timeout: float = 300, top: int = 5, *, runtime: TestRuntime | None = None
) -> PerformanceProfile:
    """Measure the workspace: test wall time and slowest tests, complexity hot spots.

    Tests run without coverage (tracing would distort the timings). Hot spots
    are the ``top`` most complex non-test functions by radon's cyclomatic complexity.
    """
    root = workspace.resolve()
    run = run_suite(root, timeout, coverage=False, runtime=runtime)
    slowest = []
    if run is not None:
        ranked = sorted(run.durations.items(), key=lambda kv: kv[1], reverse=True)[:top]
        slowest = [TimedTest(test=t, seconds=round(s, 4), outcome=run.outcomes[t]) for t, s in ranked]
    spots = hot_spots(root)
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
