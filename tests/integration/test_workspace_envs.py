"""A project's own environment, installed from the package index into a per-task venv inside the sandbox.

These reach the package index (uv, through its shared cache) once per module;
the tests themselves run with no network.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shared.contract import protocol
from shared.tools.analysis import TESTS_FAILED_PENALTY, score
from shared.tools.pyenv import EnvBuilder, declared
from shared.tools.sandbox import Sandbox
from shared.tools.testing import TestRuntime, run_suite, run_tests

pytestmark = pytest.mark.skipif(Sandbox().unavailable() is not None, reason="bubblewrap cannot run here")


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> TestRuntime:
    sandbox = Sandbox()
    return TestRuntime(sandbox, EnvBuilder(sandbox, tmp_path_factory.mktemp("envs")))


FLASK_APP = """
    from flask import Flask, jsonify

    app = Flask(__name__)


    @app.get("/health")
    def health():
        return jsonify(status="ok")
"""

FLASK_TESTS = """
    from app import app


    def test_health_answers_ok():
        assert app.test_client().get("/health").get_json() == {"status": "ok"}


    def test_unknown_path_is_404():
        assert app.test_client().get("/nope").status_code == 404
"""


def test_a_flask_app_gets_flask_installed_in_its_own_env_and_its_tests_pass(
    tmp_path: Path, runtime: TestRuntime
) -> None:
    ws = _write(
        tmp_path / "ws",
        {"requirements.txt": "flask>=3\n", "app.py": FLASK_APP, "tests/test_app.py": FLASK_TESTS},
    )
    report = run_tests(ws, runtime=runtime)
    assert report is not None, "tests were found"
    assert report.environment_error is None, report.output_tail
    assert (report.passed, report.failed, report.errors) == (2, 0, 0), report.output_tail
    assert report.sandboxed and report.ok and report.coverage == 100.0

    # the second step of the task (and the next task) reuses the environment: nothing is rebuilt
    env_dir = runtime.envs.cache_dir / "envs" / declared(ws).digest
    marker = (env_dir / ".complete").stat().st_mtime_ns
    again = run_suite(ws, coverage=False, runtime=runtime)
    assert again is not None and again.report.passed == 2
    assert (env_dir / ".complete").stat().st_mtime_ns == marker
    assert sorted(p.name for p in (runtime.envs.cache_dir / "envs").iterdir() if p.is_dir()) == [env_dir.name]


def test_an_undeclared_import_is_an_environment_error_the_score_does_not_punish(
    tmp_path: Path, runtime: TestRuntime
) -> None:
    ws = _write(tmp_path / "ws", {"app.py": FLASK_APP, "test_app.py": FLASK_TESTS})
    report = run_tests(ws, runtime=runtime)
    assert report is not None and not report.ok
    assert report.environment_error is not None and "missing dependency" in report.environment_error
    assert "'flask'" in report.environment_error
    total, breakdown = score([], report)
    assert breakdown["tests"] == 0 and total == 100
    broken = protocol.TestReport(passed=0, failed=1, errors=0, coverage=None, command="pytest")
    assert score([], broken)[1]["tests"] == -TESTS_FAILED_PENALTY


def test_dependencies_that_cannot_be_installed_say_so_in_one_line(
    tmp_path: Path, runtime: TestRuntime
) -> None:
    ws = _write(
        tmp_path / "ws",
        {"requirements.txt": "flask==0.0.0.1\n", "app.py": FLASK_APP, "test_app.py": FLASK_TESTS},
    )
    report = run_tests(ws, runtime=runtime)
    assert report is not None and report.environment_error is not None
    assert report.environment_error.startswith("the declared dependencies could not be installed")
    assert "flask" in report.environment_error and "\n" not in report.environment_error
    assert score([], report)[1]["tests"] == 0


MANAGE = """
    import os
    import sys

    if __name__ == "__main__":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
"""

SETTINGS = """
    SECRET_KEY = "only-for-tests"
    DEBUG = True
    ALLOWED_HOSTS = ["*"]
    INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "polls"]
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    ROOT_URLCONF = "mysite.urls"
    USE_TZ = True
    DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

POLLS_TESTS = """
    from django.test import SimpleTestCase

    from polls.views import shout


    class ViewTests(SimpleTestCase):
        def test_index_says_hello(self):
            self.assertEqual(self.client.get("/").content, b"hello")

        def test_shout_upper_cases(self):
            self.assertEqual(shout("hi"), "HI!")

        def test_shout_is_broken_here(self):
            self.assertEqual(shout("a"), "a")
"""


def test_a_django_project_runs_its_tests_py_with_manage_py_test(tmp_path: Path, runtime: TestRuntime) -> None:
    ws = _write(
        tmp_path / "ws",
        {
            "requirements.txt": "django>=4.2\n",
            "manage.py": MANAGE,
            "mysite/__init__.py": "",
            "mysite/settings.py": SETTINGS,
            "mysite/urls.py": 'from django.urls import path\n\nfrom polls import views\n\nurlpatterns = [path("", views.index)]\n',
            "polls/__init__.py": "",
            "polls/views.py": """
                from django.http import HttpResponse


                def index(request):
                    return HttpResponse("hello")


                def shout(text):
                    return text.upper() + "!"
            """,
            "polls/tests.py": POLLS_TESTS,
        },
    )
    run = run_suite(ws, runtime=runtime)
    assert run is not None and run.report.runner == "django", "Django's tests.py is found"
    assert run.report.environment_error is None, run.report.output_tail
    assert (run.report.passed, run.report.failed, run.report.errors) == (2, 1, 0), run.report.output_tail
    assert run.report.command.startswith("coverage run") and "manage.py test" in run.report.command
    assert "polls.tests.ViewTests.test_index_says_hello" in run.passed_ids
    assert run.outcomes["polls.tests.ViewTests.test_shout_is_broken_here"] == "failed"
    assert run.report.coverage is not None and run.report.coverage > 50
