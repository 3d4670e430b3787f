"""Review and fix the realistic fixture projects of tests/workspaces (real bandit, ruff, libcst).

Each test copies a fixture project, runs the real analysis and the real fixes
(not test-gated here: running a project's own tests with its own packages is
the sandbox's part) and checks the result line by line: only lines a fix
needed change, CRLF and suppression comments survive, each distinct secret
gets its own variable, tokens become random, and approval waits for every
open MEDIUM+ security finding.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

from services.orchestrator.report import markdown_report
from shared.contract.protocol import DevelopmentOutput, FinalResult, Issue, ReviewOutput, StepRecord
from shared.tools.analysis import analyze, blocking, is_test_file, score, verdict
from shared.tools.fixes import FixOutcome, apply_fixes

WORKSPACES = Path(__file__).resolve().parents[1] / "workspaces"
_IMPORT = re.compile(rb"^\s*(import \w|from [\w.]+ import )")


def project(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(WORKSPACES / name, root)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.py"))}


def review_and_fix(root: Path) -> tuple[list[Issue], FixOutcome, dict[str, bytes]]:
    before = snapshot(root)
    findings = analyze(root)
    return findings, apply_fixes(root, findings), before


def changed_lines(before: bytes, after: bytes) -> tuple[list[int], list[bytes]]:
    """The 1-based numbers of the original lines that changed, and the lines put in their place."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    removed: list[int] = []
    added: list[bytes] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += range(i1 + 1, i2 + 1)
            added += new[j1:j2]
    return removed, added


def assert_only_needed_lines_changed(
    root: Path, before: dict[str, bytes], findings: list[Issue], extra: dict[str, set[int]] | None = None
) -> int:
    """Every changed original line is a flagged line, an import, or one listed in ``extra``; every
    new line is an import, a blank line or the replacement of a flagged line. Returns the changed files."""
    after = snapshot(root)
    changed = 0
    for rel, old in before.items():
        if after[rel] == old:
            continue
        changed += 1
        flagged = {i.line for i in findings if i.file == rel and i.line} | (extra or {}).get(rel, set())
        old_lines = old.splitlines()
        removed, added = changed_lines(old, after[rel])
        for n in removed:
            assert n in flagged or _IMPORT.match(old_lines[n - 1]), (rel, n, old_lines[n - 1])
        replacements = [line for line in added if line.strip() and not _IMPORT.match(line)]
        assert len(replacements) <= len([n for n in removed if n in flagged]), (rel, replacements)
    return changed


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- flask_notes: Flask + Flask-SQLAlchemy ---------------------------------------------------------


def test_flask_app_fixes_change_only_the_lines_a_fix_needed(tmp_path: Path) -> None:
    root = project(tmp_path, "flask_notes")
    findings, outcome, before = review_and_fix(root)
    auth = before["notes/auth.py"].decode()
    # the predictable token's input, now unused, goes with it
    now_line = next(n for n, t in enumerate(auth.splitlines(), 1) if "now = str(time.time())" in t)
    assert assert_only_needed_lines_changed(root, before, findings, {"notes/auth.py": {now_line}}) == 2
    init = (root / "notes/__init__.py").read_text()
    # the most common Flask form of a hard-coded key is fixed, not refused
    assert "app.config['SECRET_KEY'] = os.environ[\"NOTES_SECRET_KEY\"]" in init
    fixed = (root / "notes/auth.py").read_text()
    assert "hashlib.md5" not in fixed and "now = " not in fixed
    # suppression comments stay on their line
    assert re.search(r"hashlib\.scrypt\(.*\)\.hex\(\)  # pylint: disable=insecure-hash\n", fixed)
    assert "import jwt  # pylint: disable=import-error\n" in fixed
    assert not {i.rule for i in analyze(root)} & {"ruff:F841", "ruff:F401"}, "a fix left no new finding"


def test_flask_app_secrets_are_listed_to_configure_and_the_narrow_hash_column_is_flagged(
    tmp_path: Path,
) -> None:
    root = project(tmp_path, "flask_notes")
    models = (root / "notes/models.py").read_bytes()
    _, outcome, _ = review_and_fix(root)
    assert [(s.name, s.file, s.required) for s in outcome.configure] == [
        ("NOTES_SECRET_KEY", "notes/__init__.py", True),
        ("NOTES_JWT_SECRET", "notes/auth.py", True),
    ]
    (follow,) = outcome.follow_ups
    assert (follow.file, follow.line) == ("notes/models.py", 10)
    assert "'password_hash' holds 80 characters" in follow.message and "128" in follow.message
    assert (root / "notes/models.py").read_bytes() == models, "flagged, not silently widened"


def test_flask_app_is_not_approved_while_the_sql_injection_is_open(tmp_path: Path) -> None:
    root = project(tmp_path, "flask_notes")
    review_and_fix(root)
    left = analyze(root)
    total, _ = score(left, None)
    assert [i.rule for i in left] == ["bandit:B608"]
    assert total >= 90 and verdict(total, left, 90) == "changes_requested"
    assert blocking(left) == [left[0].id]


def test_flask_package_reexports_are_not_reported_as_unused(tmp_path: Path) -> None:
    findings = analyze(WORKSPACES / "flask_notes")
    assert not [i for i in findings if i.file == "notes/__init__.py" and i.rule == "ruff:F401"]


# --- django_blog: a Django project with tests.py -------------------------------------------------------


def test_django_project_review_scans_a_script_under_tests_but_not_the_test_modules() -> None:
    root = WORKSPACES / "django_blog"
    findings = analyze(root)
    by_file = {(i.rule, i.severity, i.file) for i in findings if i.tool == "bandit"}
    assert ("bandit:B501", "HIGH", "tests/scan_hosts.py") in by_file  # a script, not a test
    assert ("bandit:B608", "MEDIUM", "blog/views.py") in by_file
    assert ("bandit:B301", "MEDIUM", "blog/views.py") in by_file
    assert ("bandit:B105", "MEDIUM", "blog_site/settings.py") in by_file  # Django's signing key
    assert is_test_file(Path("blog/tests.py"))
    assert not any(i.file == "blog/tests.py" for i in findings if i.tool == "bandit")


def test_django_settings_secret_moves_to_one_variable_and_nothing_else_changes(tmp_path: Path) -> None:
    root = project(tmp_path, "django_blog")
    findings, outcome, before = review_and_fix(root)
    assert assert_only_needed_lines_changed(root, before, findings) == 1
    assert [s.name for s in outcome.configure] == ["BLOG_SITE_SECRET_KEY"]
    unfixable = {i.rule for i, _ in outcome.unfixable}
    assert {"bandit:B608", "bandit:B301", "bandit:B501"} <= unfixable
    left = analyze(root)
    assert verdict(score(left, None)[0], left, 0) == "changes_requested"


# --- crlf_pkg: CRLF files, re-exports, suppression comments --------------------------------------------


def test_crlf_files_keep_crlf_comments_and_layout_through_the_fixes(tmp_path: Path) -> None:
    root = project(tmp_path, "crlf_pkg")
    findings, outcome, before = review_and_fix(root)
    assert {i.rule for i in findings} == {"ruff:F401", "bandit:B506", "bandit:B311"}
    assert assert_only_needed_lines_changed(root, before, findings) == 2
    for rel in ("textkit/config.py", "textkit/slug.py"):
        data = (root / rel).read_bytes()
        assert data != before[rel] and data.count(b"\n") == data.count(b"\r\n"), rel
    config = (root / "textkit/config.py").read_bytes()
    assert b"data = yaml.safe_load(fh)  # noqa: S506 - trusted file (it is not)\r\n" in config
    assert b"as fh:  # pylint: disable=unspecified-encoding\r\n" in config
    assert b"DEFAULTS = {'width' : 72, 'lang':'en'}\r\n" in config  # not reformatted
    slug = (root / "textkit/slug.py").read_bytes()
    assert (
        b"secrets.choice(string.ascii_lowercase) for _ in range(4))  # pylint: disable=line-too-long\r\n"
        in slug
    )
    assert (root / "textkit/__init__.py").read_bytes() == before["textkit/__init__.py"]
    assert all(c.diff for c in outcome.changes) and analyze(root) == []


# --- secrets_app: several secrets and a reset token ----------------------------------------------------


EXPECTED_VARS = {
    "ACCOUNTS_DB_PASSWORD": "accounts/db.py",
    "ADMIN_SECRET_KEY": "apps/admin/settings.py",
    "BILLING_SECRET_KEY": "apps/billing/settings.py",
    "SEED_ALICE_PASSWORD": "seed.py",
    "SEED_BOB_PASSWORD": "seed.py",
    "SEED_CAROL_PASSWORD": "seed.py",
    "SEED_DAVE_PASSWORD": "seed.py",
}


def test_each_distinct_secret_gets_its_own_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path, "secrets_app")
    findings, outcome, before = review_and_fix(root)
    assert {s.name: s.file for s in outcome.configure} == EXPECTED_VARS
    assert len(outcome.configure) == len(EXPECTED_VARS)
    for name, rel in EXPECTED_VARS.items():
        reads = [p for p in root.rglob("*.py") if f'os.environ["{name}"]' in p.read_text()]
        assert [p.relative_to(root).as_posix() for p in reads] == [rel]
    assert assert_only_needed_lines_changed(root, before, findings) == 5

    # the fixed modules read their own variable, and fail fast naming it when it is unset
    monkeypatch.setenv("ADMIN_SECRET_KEY", "from-the-environment")
    assert load(root / "apps/admin/settings.py", "admin_settings").SECRET_KEY == "from-the-environment"
    with pytest.raises(KeyError, match="BILLING_SECRET_KEY"):
        load(root / "apps/billing/settings.py", "billing_settings")


def test_a_predictable_reset_token_becomes_a_random_token_of_the_same_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path, "secrets_app")
    _, outcome, _ = review_and_fix(root)
    tokens = (root / "accounts/tokens.py").read_text()
    assert "secrets.token_hex(16)" in tokens and "hashlib" not in tokens and "datetime" not in tokens
    change = next(c for c in outcome.changes if c.file == "accounts/tokens.py")
    assert "password hashing" not in change.description and "random" in change.description
    monkeypatch.syspath_prepend(str(root))
    module = load(root / "accounts/tokens.py", "fixed_tokens")
    first, second = module.password_reset_token("a@example.com"), module.password_reset_token("a@example.com")
    assert len(first) == 32 and int(first, 16) >= 0 and first != second
    assert analyze(root) == []


# --- the report a user reads ---------------------------------------------------------------------------


def test_the_report_lists_what_to_configure_the_follow_ups_and_paths_verbatim(tmp_path: Path) -> None:
    root = project(tmp_path, "flask_notes")
    findings, outcome, _ = review_and_fix(root)
    left = analyze(root)
    dev = DevelopmentOutput(
        summary="fixed", changes=outcome.changes, configure=outcome.configure, follow_ups=outcome.follow_ups
    )
    init_issue = msgspec.structs.replace(left[0], file="notes/__init__.py")
    review = ReviewOutput(
        summary="r", score=98, verdict="changes_requested", issues=[init_issue], blocking=[init_issue.id]
    )
    steps = [
        StepRecord(
            step_id=sid,
            role=role,
            task_type=kind,
            description=sid,
            status="completed",
            attempts=1,
            instance_id=None,
            summary=sid,
            output=out,
        )
        for sid, role, kind, out in (
            ("fix", "developer", "fix", dev),
            ("review", "reviewer", "review", review),
        )
    ]
    text = markdown_report(FinalResult(task_id="t", status="completed", approved=False, steps=steps), [])
    configure = text.split("## Configure before running\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split("`")[1] for line in configure] == ["NOTES_SECRET_KEY", "NOTES_JWT_SECRET"]
    assert "## Follow-ups for a human" in text and "`notes/models.py:10`" in text
    # a path with underscores stays verbatim in Markdown: inside backticks
    assert "`notes/__init__.py:40` (blocking)" in text
