"""The reviewer's analysis: real bandit, ruff and radon runs on real workspaces."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest

from shared.contract import protocol
from shared.contract.protocol import Issue
from shared.tools.analysis import analyze, blocking, blocks, is_test_file, python_files, score, verdict

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "auth-api"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the only line of ``path`` containing ``needle``."""
    hits = [n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def found(issues: list[Issue]) -> set[tuple[str, str, str, str | None, int | None]]:
    return {(i.rule, i.severity, i.concern, i.file, i.line) for i in issues}


@pytest.fixture
def example(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "auth-api"))


def test_example_workspace_findings_are_the_planted_weaknesses(example: Path) -> None:
    pkg = example / "auth_api"
    expected = {
        ("bandit:B324", "HIGH", "security", "auth_api/app.py", line_of(pkg / "app.py", "hashlib.md5(")),
        ("bandit:B324", "HIGH", "security", "auth_api/passwords.py", line_of(pkg / "passwords.py", "md5")),
        ("bandit:B602", "HIGH", "security", "auth_api/store.py", line_of(pkg / "store.py", "shell=True")),
        ("bandit:B506", "MEDIUM", "security", "auth_api/config.py", line_of(pkg / "config.py", "yaml.load")),
        ("ruff:F401", "MEDIUM", "correctness", "auth_api/app.py", line_of(pkg / "app.py", "import os")),
        (
            "bandit:B105",
            "MEDIUM",
            "security",
            "auth_api/config.py",
            line_of(pkg / "config.py", "SECRET_KEY ="),
        ),
        ("bandit:B311", "LOW", "security", "auth_api/passwords.py", line_of(pkg / "passwords.py", "random.")),
    }
    issues = analyze(example)
    assert found(issues) == expected
    assert [i.severity for i in issues] == ["HIGH"] * 3 + ["MEDIUM"] * 3 + ["LOW"]
    assert all(len(i.id) == 12 and i.recommendation and i.message for i in issues)
    assert len({i.id for i in issues}) == len(issues)
    yaml_issue = next(i for i in issues if i.rule == "bandit:B506")
    assert "safe_load" in yaml_issue.recommendation


def test_example_first_review_scores_81_and_requests_changes(example: Path) -> None:
    issues = analyze(example)
    total, breakdown = score(issues, None)
    assert total == 81
    assert breakdown == {
        "base": 100,
        "security": -(3 * 4 + 2 * 2 + 1),
        "correctness": -2,
        "style": 0,
        "tests": 0,
        "coverage": 0,
    }
    assert verdict(total, issues, 90) == "changes_requested"
    assert {i.rule for i in issues if i.id in blocking(issues)} == {
        "bandit:B324",
        "bandit:B602",
        "bandit:B506",
        "bandit:B105",
    }


def test_fixing_the_common_findings_approves_and_keeps_ids_of_what_is_left(example: Path) -> None:
    before = {i.rule + ":" + (i.file or ""): i for i in analyze(example)}
    pkg = example / "auth_api"
    edit(pkg / "app.py", "hashlib.md5(body)", "hashlib.md5(body, usedforsecurity=False)")
    edit(pkg / "app.py", "import os\n", "")
    edit(
        pkg / "passwords.py",
        "hashlib.md5((salt + password).encode",
        "hashlib.sha256((salt + password).encode",
    )
    edit(pkg / "store.py", 'f"cp {self.path} {dest}", shell=True', '["cp", str(self.path), str(dest)]')
    edit(pkg / "config.py", "yaml.load(fh, Loader=yaml.Loader)", "yaml.safe_load(fh)")
    still = analyze(example)
    assert score(still, None)[0] >= 90 and verdict(score(still, None)[0], still, 90) == "changes_requested"
    assert [i.rule for i in still if blocks(i)] == ["bandit:B105"]  # the hard-coded signing key
    edit(
        pkg / "config.py",
        'SECRET_KEY = "dev-secret-change-me"',
        'SECRET_KEY = os.environ["AUTH_API_SECRET_KEY"]',
    )
    edit(pkg / "config.py", "from dataclasses", "import os\nfrom dataclasses")
    # lines shift above the findings that stay
    edit(pkg / "passwords.py", '"""Password hashing', '# moved\n\n\n"""Password hashing')
    edit(pkg / "config.py", '"""Settings', '# moved\n"""Settings')

    after = analyze(example)
    total, _ = score(after, None)
    assert total >= 95 and verdict(total, after, 90) == "approved"
    rules = {i.rule for i in after}
    assert not rules & {"bandit:B324", "bandit:B602", "bandit:B506", "ruff:F401", "bandit:B105"}
    assert {"bandit:B311"} <= rules
    for kept in after:
        old = before.get(kept.rule + ":" + (kept.file or ""))
        if old is not None:
            assert kept.id == old.id and kept.line != old.line


def test_analysis_is_deterministic(example: Path) -> None:
    first, second = analyze(example), analyze(example)
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    assert score(first, None) == score(second, None)


def test_test_files_get_quality_findings_but_no_security_findings(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app.py": "import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n",
            "tests/test_app.py": "import os\nimport hashlib\n\n\ndef test_x():\n    assert hashlib.md5(b'x')\n",
            "test_top.py": "def test_y():\n    assert eval('1') == 1\n",
        },
    )
    issues = analyze(tmp_path)
    assert {(i.rule, i.file) for i in issues if i.tool == "bandit"} == {("bandit:B602", "app.py")}
    assert ("ruff:F401", "MEDIUM", "correctness", "tests/test_app.py", 1) in found(issues)


def test_ruff_rules_map_to_concerns_and_severities(tmp_path: Path) -> None:
    code = (
        "def f(items, seen=[]):\n"  # B006
        "    out = []\n"
        "    for x in items:\n"
        "        out.append(x * 2)\n"  # PERF401
        "    if seen == None:\n"  # E711
        "        return undefined_name\n"  # F821
        "    return out\n"
    )
    write(tmp_path, {"m.py": code, "broken.py": "def g(:\n    pass\n"})
    got = found(analyze(tmp_path))
    assert ("ruff:B006", "LOW", "correctness", "m.py", 1) in got
    assert ("ruff:PERF401", "LOW", "performance", "m.py", 4) in got
    assert ("ruff:E711", "LOW", "style", "m.py", 5) in got
    assert ("ruff:F821", "MEDIUM", "correctness", "m.py", 6) in got
    assert ("ruff:syntax-error", "HIGH", "correctness", "broken.py", 1) in got


def test_workspace_is_judged_in_isolation_and_nosec_is_not_trusted(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": '[tool.ruff.lint]\nignore = ["F401"]\n',
            "m.py": "import os\nimport yaml\n\n\ndef load(text):\n    return yaml.load(text)  # nosec\n",
            ".venv/lib/bad.py": "import os\n",
            "build_cache/__pycache__/x.py": "import os\n",
        },
    )
    got = found(analyze(tmp_path))
    assert ("ruff:F401", "MEDIUM", "correctness", "m.py", 1) in got
    assert ("bandit:B506", "MEDIUM", "security", "m.py", 6) in got
    assert {f for *_, f, _ in got} == {"m.py"}


def test_complexity_above_10_is_low_and_above_15_is_medium(tmp_path: Path) -> None:
    def branchy(name: str, n: int) -> str:
        body = "".join(f"    if x == {k}:\n        return {k}\n" for k in range(n))
        return f"def {name}(x):\n{body}    return -1\n"

    write(tmp_path, {"c.py": branchy("small", 9) + "\n\n" + branchy("mid", 12) + "\n\n" + branchy("big", 16)})
    cc = [i for i in analyze(tmp_path) if i.rule == "radon:CC"]
    assert [(i.severity, i.concern, i.message.split()[0]) for i in cc] == [
        ("MEDIUM", "style", "big"),
        ("LOW", "style", "mid"),
    ]
    assert "complexity 17" in cc[0].message and "complexity 13" in cc[1].message


def test_ids_survive_line_shifts_and_identical_lines_get_distinct_ids(tmp_path: Path) -> None:
    src = (
        "import random\n\n\ndef a():\n    return random.random()\n\n\ndef b():\n    return random.random()\n"
    )
    write(tmp_path, {"r.py": src})
    first = [i for i in analyze(tmp_path) if i.rule == "bandit:B311"]
    assert len(first) == 2 and first[0].id != first[1].id
    write(tmp_path, {"r.py": '"""Docs."""\n\n# comment\n' + src})
    second = [i for i in analyze(tmp_path) if i.rule == "bandit:B311"]
    assert [i.id for i in second] == [i.id for i in first]
    assert [i.line for i in second] == [i.line + 3 for i in first]  # type: ignore[operator]


def test_workspace_without_python_has_nothing_to_analyze(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "# hi\n", "node_modules/x.py": "import os\n"})
    assert python_files(tmp_path) == [] and analyze(tmp_path) == []


def test_test_file_detection() -> None:
    assert is_test_file(Path("tests/helpers.py")) and is_test_file(Path("pkg/test_x.py"))
    assert is_test_file(Path("x_test.py")) and is_test_file(Path("conftest.py"))
    assert is_test_file(Path("blog/tests.py"))  # Django's test module
    assert not is_test_file(Path("pkg/testing_utils.py"))
    fixture = "import pytest\n\n\n@pytest.fixture\ndef user():\n    return 1\n"
    script = "import requests\n\nif __name__ == '__main__':\n    requests.get('https://x', verify=False)\n"
    assert is_test_file(Path("tests/helpers.py"), fixture)
    assert not is_test_file(Path("tests/scan_hosts.py"), script)


def test_a_script_under_tests_that_is_not_a_test_gets_the_security_review(tmp_path: Path) -> None:
    script = (
        "import requests\n\n\ndef scan(hosts):\n"
        "    return [requests.get(h, verify=False, timeout=5) for h in hosts]\n"
    )
    write(
        tmp_path,
        {
            "app.py": "X = 1\n",
            "tests/scan_hosts.py": script,
            "tests/test_app.py": "def test_x():\n    assert 1\n",
        },
    )
    got = {(i.rule, i.severity, i.file) for i in analyze(tmp_path) if i.tool == "bandit"}
    assert got == {("bandit:B501", "HIGH", "tests/scan_hosts.py")}


def test_reexports_in_a_package_init_are_not_unused_imports(tmp_path: Path) -> None:
    init = (
        "import os\n"
        "from .models import User\n"
        "from shop.views import (\n    index,\n    detail,\n)\n"
        "from collections import OrderedDict\n"
    )
    write(
        tmp_path,
        {"shop/__init__.py": init, "shop/models.py": "User = 1\n", "shop/views.py": "index = detail = 1\n"},
    )
    unused = sorted(i.line or 0 for i in analyze(tmp_path) if i.rule == "ruff:F401")
    assert unused == [1, 7]  # os and OrderedDict: imported and unused; the package's own names are re-exports


def issue(severity: str, n: int = 0, concern: str = "correctness") -> Issue:
    return Issue(id=f"id{severity}{n}", severity=severity, rule="r", message="m", tool="t", concern=concern)  # type: ignore[arg-type]


def report(failed: int = 0, errors: int = 0, coverage: float | None = 90.0) -> protocol.TestReport:
    return protocol.TestReport(passed=10, failed=failed, errors=errors, coverage=coverage, command="pytest")


def test_score_formula_deductions_cap_and_floor() -> None:
    assert score([], None) == (
        100,
        {"base": 100, "security": 0, "correctness": 0, "style": 0, "tests": 0, "coverage": 0},
    )
    lows = [issue("LOW", n, "security") for n in range(14)]
    assert score(lows, report()) == (
        90,
        {"base": 100, "security": -10, "correctness": 0, "style": 0, "tests": 0, "coverage": 0},
    )
    mixed = [issue("HIGH", 0, "security"), issue("MEDIUM", 0, "security"), issue("LOW", 0, "security")]
    total, breakdown = score(mixed, report(failed=1, coverage=60.0))
    assert total == 100 - 4 - 2 - 1 - 20 - 5
    assert breakdown["tests"] == -20 and breakdown["coverage"] == -5
    assert score(mixed, report(errors=2, coverage=None))[0] == 100 - 7 - 20
    assert score([issue("HIGH", n, "security") for n in range(40)], report(failed=3))[0] == 0


def test_style_and_correctness_findings_cannot_sink_the_score() -> None:
    style = [issue("LOW", n, "style") for n in range(226)] + [issue("MEDIUM", n, "style") for n in range(30)]
    correctness = [issue("MEDIUM", n, "correctness") for n in range(40)]
    total, breakdown = score(style + correctness, None)
    assert breakdown["style"] == -5 and breakdown["correctness"] == -10 and total == 85
    assert verdict(total, style + correctness, 85) == "approved"


def test_verdict_is_refused_while_a_medium_or_higher_security_finding_is_open() -> None:
    assert verdict(90, [issue("MEDIUM", 0, "correctness")], 90) == "approved"
    assert verdict(98, [issue("MEDIUM", 0, "security")], 90) == "changes_requested"
    assert verdict(89, [], 90) == "changes_requested"
    assert verdict(96, [issue("HIGH", 0, "style")], 90) == "changes_requested"
    assert verdict(70, [issue("LOW", 0, "security")], 70) == "approved"
    found = [issue("HIGH", 0, "correctness"), issue("MEDIUM", 1, "security"), issue("LOW", 2, "security")]
    assert blocking(found) == ["idHIGH0", "idMEDIUM1"]


def test_tests_that_could_not_run_for_an_environment_reason_cost_no_points() -> None:
    if "environment_error" not in protocol.TestReport.__struct_fields__:
        pytest.skip("TestReport.environment_error comes with the sandboxed test runner")
    not_run = msgspec.convert(
        {
            "passed": 0,
            "failed": 0,
            "errors": 1,
            "coverage": None,
            "command": "pytest",
            "environment_error": "bubblewrap cannot create a user namespace here",
        },
        protocol.TestReport,
    )
    total, breakdown = score([], not_run)
    assert total == 100 and breakdown["tests"] == 0 and breakdown["coverage"] == 0
    assert score([], report(errors=1))[0] == 80
