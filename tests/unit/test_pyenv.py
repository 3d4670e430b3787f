"""What a workspace declares, read without running its code; how the runner is chosen and read."""

from __future__ import annotations

import textwrap
from pathlib import Path

from shared.tools.poetry_deps import poetry_constraint
from shared.tools.pyenv import declared
from shared.tools.runners import detect_layout, missing_dependency, parse_unittest_verbose


def make(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def test_pyproject_dependencies_test_extras_and_groups_are_declared(tmp_path: Path) -> None:
    ws = make(
        tmp_path,
        {
            "pyproject.toml": """
                [project]
                name = "my-app"
                dependencies = ["Flask>=3", "requests"]
                [project.optional-dependencies]
                test = ["pytest-mock", "my-app[extra]"]
                docs = ["sphinx"]
                [dependency-groups]
                dev = ["freezegun", {include-group = "test"}]
            """
        },
    )
    decl = declared(ws)
    assert decl.requirements == ("Flask>=3", "freezegun", "pytest-mock", "requests")
    assert decl.sources == ("pyproject.toml",)


def test_requirements_files_keep_plain_requirements_and_ignore_options_and_urls(tmp_path: Path) -> None:
    ws = make(
        tmp_path,
        {
            "requirements.txt": """
                # the app
                django>=4.2,<6  # LTS
                -r requirements/extra.txt
                -r ../../etc/elsewhere.txt
                --index-url https://evil.example/simple
                -e .
                pkg @ https://evil.example/pkg.whl
                not a requirement !!
            """,
            "requirements/extra.txt": "PyJWT>=2.8\n",
        },
    )
    decl = declared(ws)
    assert decl.requirements == ("django<6,>=4.2", "PyJWT>=2.8")
    assert decl.sources == ("requirements.txt", "requirements/extra.txt")
    assert any("-r outside the workspace" in i for i in decl.ignored)
    assert any("--index-url" in i for i in decl.ignored)
    assert any(i.endswith("option not honoured: -e") for i in decl.ignored)
    assert any("direct URL" in i for i in decl.ignored) and any(
        "not a requirement" in i for i in decl.ignored
    )


def test_setup_cfg_install_requires_and_test_extras_are_declared(tmp_path: Path) -> None:
    ws = make(
        tmp_path,
        {
            "setup.cfg": """
                [options]
                install_requires =
                    attrs>=22
                    click
                [options.extras_require]
                testing = hypothesis
            """,
            "setup.py": "raise SystemExit('never executed')\n",
        },
    )
    assert declared(ws).requirements == ("attrs>=22", "click", "hypothesis")


def test_the_environment_hash_follows_the_declared_requirements_only(tmp_path: Path) -> None:
    a = make(tmp_path / "a", {"requirements.txt": "flask>=3\n", "app.py": "x = 1\n"})
    b = make(tmp_path / "b", {"requirements.txt": "# same deps\nflask>=3\n", "other.py": "y = 2\n"})
    c = make(tmp_path / "c", {"requirements.txt": "flask>=3\nrequests\n"})
    assert declared(a).digest == declared(b).digest != declared(c).digest
    assert declared(tmp_path / "empty").requirements == ()


def test_the_runner_is_the_projects_own(tmp_path: Path) -> None:
    django = make(
        tmp_path / "dj", {"manage.py": "import django\n", "polls/tests.py": "", "polls/__init__.py": ""}
    )
    assert detect_layout(django) is not None and detect_layout(django).runner == "django"  # type: ignore[union-attr]
    pyt = make(tmp_path / "py", {"tests/test_x.py": ""})
    assert detect_layout(pyt) is not None and detect_layout(pyt).runner == "pytest"  # type: ignore[union-attr]
    assert detect_layout(make(tmp_path / "none", {"app.py": ""})) is None


def test_unittest_verbose_lines_give_each_outcome() -> None:
    text = textwrap.dedent(
        """
        test_a (polls.tests.T.test_a) ... ok
        test_b (polls.tests.T.test_b)
        Docstring line. ... FAIL
        test_c (polls.tests.T.test_c) ... ERROR
        test_d (polls.tests.T.test_d) ... skipped 'later'

        Ran 4 tests in 0.010s
        """
    )
    parsed = parse_unittest_verbose(text)
    assert parsed.outcomes == {
        "polls.tests.T.test_a": "passed",
        "polls.tests.T.test_b": "failed",
        "polls.tests.T.test_c": "error",
        "polls.tests.T.test_d": "skipped",
    }
    assert parsed.ran == 4


def test_a_missing_third_party_module_is_the_environment_but_a_missing_own_module_is_a_bug(
    tmp_path: Path,
) -> None:
    ws = make(tmp_path, {"myapp/__init__.py": ""})
    out = "E   ModuleNotFoundError: No module named 'flask'\n"
    assert "'flask'" in (missing_dependency(out, ws, passed=0, failed=0) or "")
    assert missing_dependency("No module named 'myapp.views'", ws, passed=0, failed=0) is None
    assert missing_dependency(out, ws, passed=1, failed=0) is None


def test_poetry_constraints_are_translated_to_pep_508() -> None:
    cases = {
        "^1.2.3": ">=1.2.3,<2.0.0",
        "^0.2.3": ">=0.2.3,<0.3.0",
        "^0.0.3": ">=0.0.3,<0.0.4",
        "~1.2.3": ">=1.2.3,<1.3.0",
        "~1": ">=1,<2",
        "*": "",
        "1.2": "==1.2",
        ">= 1.2, <2": ">=1.2,<2",
    }
    assert {k: poetry_constraint(k) for k in cases} == cases


def test_a_poetry_project_declares_its_main_and_test_groups_and_not_git_dependencies(tmp_path: Path) -> None:
    ws = make(
        tmp_path,
        {
            "pyproject.toml": """
                [tool.poetry]
                name = "svc"
                [tool.poetry.dependencies]
                python = "^3.11"
                flask = "^3.0"
                requests = {version = "~2.31", extras = ["socks"]}
                mylib = {git = "https://example.invalid/mylib.git"}
                [tool.poetry.group.test.dependencies]
                pytest-mock = "*"
                [tool.poetry.group.docs.dependencies]
                sphinx = "*"
            """
        },
    )
    decl = declared(ws)
    assert decl.requirements == ("flask<4.0,>=3.0", "pytest-mock", "requests[socks]<2.32,>=2.31")
    assert any("mylib" in i for i in decl.ignored)
