"""shared.tools.testing on real temp workspaces: real pytest, real coverage, real radon, the real sandbox."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from shared.tools.pyenv import EnvBuilder
from shared.tools.sandbox import Sandbox
from shared.tools.testing import TestRuntime, has_tests, performance_profile, run_suite, run_tests


def make(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


CALC = """
    def add(a, b):
        return a + b


    def never_called(x):
        if x > 1:
            return x
        return -x
"""

TESTS = """
    from calc import add


    def test_add_passes():
        assert add(1, 2) == 3


    def test_add_fails():
        assert add(1, 2) == 4
"""


def leftovers(root: Path) -> list[str]:
    names = {".coverage", "__pycache__", ".pytest_cache", "coverage.json"}
    return sorted(p.name for p in root.rglob("*") if p.name in names or p.name.startswith(".coverage."))


def test_run_tests_counts_passes_and_failures_and_measures_coverage_of_code_not_tests(tmp_path: Path) -> None:
    ws = make(tmp_path / "ws", {"calc.py": CALC, "tests/test_calc.py": TESTS})
    report = run_tests(ws)
    assert report is not None
    assert (report.passed, report.failed, report.errors) == (1, 1, 0) and not report.ok
    # calc.py: 6 statements, 3 run (two defs, the body of add); with the test file counted it would be 72.7
    assert report.coverage == 50.0
    assert "1 failed, 1 passed" in report.output_tail and "assert 3 == 4" in report.output_tail
    assert report.command.startswith("coverage run")
    assert leftovers(ws) == []


def test_run_suite_names_the_passing_tests(tmp_path: Path) -> None:
    ws = make(tmp_path / "ws", {"calc.py": CALC, "tests/test_calc.py": TESTS})
    run = run_suite(ws, coverage=False)
    assert run is not None and run.report.coverage is None
    assert run.passed_ids == frozenset({"tests.test_calc::test_add_passes"})
    assert run.outcomes["tests.test_calc::test_add_fails"] == "failed"


def test_a_workspace_without_tests_has_no_report(tmp_path: Path) -> None:
    ws = make(tmp_path / "ws", {"calc.py": CALC})
    assert not has_tests(ws) and run_tests(ws) is None


def test_a_module_that_does_not_import_counts_as_an_error(tmp_path: Path) -> None:
    ws = make(tmp_path / "ws", {"calc.py": CALC, "test_broken.py": "import not_a_module_anywhere\n"})
    report = run_tests(ws)
    assert report is not None and report.errors == 1 and report.passed == 0
    assert "not_a_module_anywhere" in report.output_tail


def test_a_pytest_config_above_the_workspace_is_not_adopted(tmp_path: Path) -> None:
    # a config with an option pytest rejects: adopting it would make the run fail as a usage error
    make(tmp_path, {"pytest.ini": "[pytest]\naddopts = --no-such-option-anywhere\n"})
    ws = make(
        tmp_path / "ws",
        {
            "calc.py": CALC,
            "test_calc.py": "from calc import add\n\n\ndef test_ok():\n    assert add(2, 2) == 4\n",
        },
    )
    report = run_tests(ws)
    assert report is not None and (report.passed, report.failed, report.errors) == (1, 0, 0)


def test_a_run_past_its_timeout_is_reported_as_an_error(tmp_path: Path) -> None:
    ws = make(tmp_path / "ws", {"test_hang.py": "import time\n\n\ndef test_hang():\n    time.sleep(30)\n"})
    report = run_tests(ws, timeout=3)
    assert report is not None and report.errors == 1 and "timed out after 3s" in report.output_tail


def test_performance_profile_measures_slow_tests_and_complexity_hot_spots(tmp_path: Path) -> None:
    branchy = (
        "def route(x):\n"
        + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(12))
        + "    return -1\n"
    )
    ws = make(
        tmp_path / "ws",
        {
            "calc.py": CALC,
            "router.py": branchy,
            # the workspace's own test sleeps: that is the slow code being measured
            "tests/test_speed.py": """
                import time

                from calc import add


                def test_slow():
                    time.sleep(0.3)
                    assert add(1, 1) == 2


                def test_fast():
                    assert add(0, 0) == 0
            """,
        },
    )
    profile = performance_profile(ws)
    assert profile.tests is not None and profile.tests.passed == 2 and profile.tests.coverage is None
    assert profile.slowest[0].test == "tests.test_speed::test_slow" and profile.slowest[0].seconds >= 0.3
    assert profile.wall_seconds is not None and profile.wall_seconds >= profile.slowest[0].seconds
    top = profile.hot_spots[0]
    assert (top.file, top.name, top.complexity, top.rank) == ("router.py", "route", 13, "C")
    assert profile.functions == 3 and all(h.file != "tests/test_speed.py" for h in profile.hot_spots)
    assert leftovers(ws) == []


def _runtime(tmp_path: Path, sandbox: Sandbox, install: bool = True) -> TestRuntime:
    return TestRuntime(sandbox, EnvBuilder(sandbox, tmp_path / "envs", install=install))


def test_without_a_sandbox_workspace_code_does_not_run_and_the_report_says_why(tmp_path: Path) -> None:
    ws = make(tmp_path / "ws", {"calc.py": CALC, "tests/test_calc.py": TESTS})
    sandbox = Sandbox(bwrap="/nonexistent/bwrap")
    report = run_tests(ws, runtime=_runtime(tmp_path, sandbox))
    assert report is not None and not report.ok and (report.passed, report.failed) == (0, 0)
    assert report.environment_error is not None
    assert report.environment_error.startswith("sandbox unavailable, workspace code was not run: bubblewrap")
    assert "tests not run" in report.output_tail and not report.sandboxed


def test_running_unsandboxed_needs_the_explicit_setting_and_is_logged_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = make(tmp_path / "ws", {"calc.py": CALC, "tests/test_calc.py": TESTS})
    sandbox = Sandbox(bwrap="/nonexistent/bwrap", allow_unsandboxed=True)
    with caplog.at_level(logging.WARNING, logger="shared.tools.sandbox"):
        report = run_tests(ws, runtime=_runtime(tmp_path, sandbox))
    assert report is not None and (report.passed, report.failed) == (1, 1) and not report.sandboxed
    assert any("UNSANDBOXED" in r.getMessage() for r in caplog.records)


def test_the_sandbox_is_used_when_it_is_available(tmp_path: Path) -> None:
    sandbox = Sandbox()
    if sandbox.unavailable() is not None:
        pytest.skip(f"bubblewrap cannot run here: {sandbox.unavailable()}")
    ws = make(tmp_path / "ws", {"calc.py": CALC, "tests/test_calc.py": TESTS})
    report = run_tests(ws, runtime=_runtime(tmp_path, sandbox))
    assert report is not None and report.sandboxed and report.environment_error is None


def test_declared_dependencies_with_installing_off_are_an_environment_error(tmp_path: Path) -> None:
    ws = make(tmp_path / "ws", {"requirements.txt": "flask>=3\n", "calc.py": CALC, "test_calc.py": TESTS})
    report = run_tests(ws, runtime=_runtime(tmp_path, Sandbox(), install=False))
    assert report is not None and report.environment_error is not None
    assert "flask>=3" in report.environment_error and "CADRE_ENV_INSTALL=false" in report.environment_error


def test_unittest_style_tests_py_files_are_found_and_run(tmp_path: Path) -> None:
    ws = make(
        tmp_path / "ws",
        {
            "calc.py": CALC,
            "pkg/__init__.py": "",
            "pkg/tests.py": """
                import unittest

                from calc import add


                class AddTests(unittest.TestCase):
                    def test_add(self):
                        self.assertEqual(add(2, 3), 5)
            """,
        },
    )
    assert has_tests(ws)
    report = run_tests(ws)
    assert report is not None and (report.passed, report.failed, report.errors) == (1, 0, 0), (
        report.output_tail
    )


def test_without_the_index_the_services_own_env_is_used_when_it_satisfies_the_declarations(
    tmp_path: Path,
) -> None:
    # pyyaml is one of the service's own dependencies; with installing off no venv can be built
    ws = make(
        tmp_path / "ws",
        {
            "requirements.txt": "pyyaml>=6\n",
            "test_yaml.py": "import yaml\n\n\ndef test_loads():\n    assert yaml.safe_load('a: 1') == {'a': 1}\n",
        },
    )
    report = run_tests(ws, runtime=_runtime(tmp_path, Sandbox(), install=False))
    assert report is not None and report.environment_error is None
    assert (report.passed, report.failed, report.errors) == (1, 0, 0), report.output_tail
    assert "installing is off" in report.output_tail and "used instead" in report.output_tail
