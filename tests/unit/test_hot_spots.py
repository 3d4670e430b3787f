"""The performance profile and the reviewer agree on what test code is, and walk radon the same way."""

from __future__ import annotations

from pathlib import Path

from shared.tools.analysis import COMPLEXITY_LOW, analyze, is_test_file
from shared.tools.testing import hot_spots

# a function with cyclomatic complexity 13: over the reviewer's limit
_BRANCHY = (
    "def {name}(x):\n"
    + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(12))
    + "    return -1\n"
)
_TEST_CODE = "import unittest\n\n\nclass TestIt(unittest.TestCase):\n    pass\n\n\n"


def _workspace(root: Path) -> Path:
    files = {
        "app.py": _BRANCHY.format(name="route") + "\n\nclass Box:\n    def put(self):\n        def inner():\n"
        "            return 1\n\n        return inner()\n",
        "tests.py": _TEST_CODE + _BRANCHY.format(name="django_case"),  # Django's tests module
        "test/check_api.py": _TEST_CODE + _BRANCHY.format(name="check"),  # test code in a test folder
        "tests/scan.py": _BRANCHY.format(name="scan"),  # a script that only lives under tests/
        "conftest.py": _BRANCHY.format(name="fixture_maker"),
        ".venv/lib/site.py": _BRANCHY.format(name="vendored"),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_hot_spots_skip_what_the_reviewer_calls_test_code_and_keep_scripts_under_tests(
    tmp_path: Path,
) -> None:
    spots = hot_spots(_workspace(tmp_path))
    assert {(s.file, s.name) for s in spots} == {
        ("app.py", "route"),
        ("app.py", "Box.put"),
        ("app.py", "inner"),  # closures are walked too, once each
        ("tests/scan.py", "scan"),
    }
    assert next(s for s in spots if s.name == "route").complexity == 13


def test_the_reviewers_complexity_findings_on_code_are_the_hot_spots_over_its_limit(tmp_path: Path) -> None:
    root = _workspace(tmp_path)
    findings = {(i.file or "", i.line) for i in analyze(root) if i.rule == "radon:CC"}
    on_code = {f for f in findings if not is_test_file(Path(f[0]), (root / f[0]).read_text())}
    over = {(s.file, s.line) for s in hot_spots(root) if s.complexity > COMPLEXITY_LOW}
    assert over == on_code == {("app.py", 1), ("tests/scan.py", 1)}
    assert ("tests.py", 8) in findings  # the reviewer still looks at the tests' own complexity
