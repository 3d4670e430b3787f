"""Each rewrite of shared.tools.fixes on real source: before/after, still compiles, same behaviour.

The findings are built by hand (rule id + the line of the flagged code); one
test runs the real analyser (bandit, ruff) before and after to show the
findings are really gone. Gating by tests uses real pytest runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from shared.contract.protocol import Issue
from shared.tools.analysis import analyze
from shared.tools.fixes import FixOutcome, apply_fixes
from shared.tools.testing import run_suite


def issue(rule: str, file: str, line: int, ident: str | None = None) -> Issue:
    return Issue(
        id=ident or hashlib.sha1(f"{rule}{file}{line}".encode()).hexdigest()[:12],
        severity="HIGH",
        rule=rule,
        message=f"{rule} finding",
        tool=rule.split(":")[0],
        concern="security",
        file=file,
        line=line,
    )


def line_of(source: str, needle: str) -> int:
    return next(i for i, text in enumerate(source.splitlines(), 1) if needle in text)


def write(root: Path, name: str, source: str) -> str:
    source = textwrap.dedent(source).lstrip()
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return source


def fix(
    root: Path, name: str, source: str, rule: str, needle: str, **kwargs: object
) -> tuple[str, FixOutcome, Issue]:
    source = write(root, name, source)
    found = issue(rule, name, line_of(source, needle))
    outcome = apply_fixes(root, [found], **kwargs)  # type: ignore[arg-type]
    return (root / name).read_text(), outcome, found


def load(path: Path, name: str = "fixed_mod") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def squash(source: str) -> str:
    """The source without whitespace or wrap-added trailing commas (the formatter may wrap lines)."""
    return re.sub(r"\s+|,(?=\s*\))", "", source)


def compiles(source: str) -> None:
    compile(source, "<fixed>", "exec")


# --- yaml -------------------------------------------------------------------------------


def test_yaml_load_becomes_safe_load_and_loads_the_same_document(tmp_path: Path) -> None:
    src = """
        import yaml


        def read(text):
            return yaml.load(text, Loader=yaml.Loader)
    """
    write(tmp_path, "cfg.py", src)
    before = load(tmp_path / "cfg.py", "yaml_before")
    after, outcome, found = fix(tmp_path, "cfg.py", src, "bandit:B506", "yaml.load")
    assert "yaml.safe_load(text)" in after and "Loader" not in after
    compiles(after)
    doc = "a: 1\nb: [x, y]\n"
    assert load(tmp_path / "cfg.py").read(doc) == before.read(doc) == {"a": 1, "b": ["x", "y"]}
    assert outcome.changes[0].addresses == found.id
    assert outcome.changes[0].diff.startswith("--- a/cfg.py\n+++ b/cfg.py\n")
    assert "-    return yaml.load(text, Loader=yaml.Loader)" in outcome.changes[0].diff


def test_yaml_load_imported_by_name_is_rewritten_and_the_import_cleaned(tmp_path: Path) -> None:
    src = """
        from yaml import load


        def read(text):
            return load(text)
    """
    after, outcome, _ = fix(tmp_path, "cfg.py", src, "bandit:B506", "load(text)")
    compiles(after)
    assert "yaml.safe_load(text)" in after and "from yaml import load" not in after
    assert load(tmp_path / "cfg.py").read("k: v") == {"k": "v"}


# --- subprocess shell=True ---------------------------------------------------------------------


def test_shell_fstring_becomes_an_argument_list_and_stops_injection(tmp_path: Path) -> None:
    src = """
        import subprocess


        def greet(name):
            return subprocess.run(f"echo hello {name}", shell=True, capture_output=True, text=True).stdout
    """
    write(tmp_path, "sh.py", src)
    before = load(tmp_path / "sh.py", "sh_before")
    after, outcome, _ = fix(tmp_path, "sh.py", src, "bandit:B602", "subprocess.run")
    compiles(after)
    assert '["echo", "hello", str(name)], shell=False' in after
    fixed = load(tmp_path / "sh.py")
    assert fixed.greet("ada") == before.greet("ada") == "hello ada\n"
    # the shell would have run the second command; the argument list passes it as text
    assert fixed.greet("x; echo injected") == "hello x; echo injected\n"
    assert before.greet("x; echo injected") == "hello x\ninjected\n"


def test_shell_string_literal_is_split_like_the_shell_would(tmp_path: Path) -> None:
    src = """
        import subprocess


        def show():
            return subprocess.check_output('printf "%s|" "a b" c', shell=True, text=True)
    """
    write(tmp_path, "sh.py", src)
    before = load(tmp_path / "sh.py", "sh_lit_before").show()
    after, _, _ = fix(tmp_path, "sh.py", src, "bandit:B602", "check_output")
    assert """["printf", "%s|", "a b", "c"]""" in after and "shell=False" in after
    assert load(tmp_path / "sh.py").show() == before == "a b|c|"


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ('"ls | wc -l"', "shell syntax"),
        ("cmd", "built at run time"),
        ('f"cd {where}"', "needs a shell"),
        ('f"tar -czf backup-{day}.tgz data"', "glued to other text"),
    ],
)
def test_shell_commands_that_need_a_shell_are_reported_not_rewritten(
    tmp_path: Path, command: str, why: str
) -> None:
    src = f"""
        import subprocess

        cmd, where, day = "ls", "/tmp", 1
        subprocess.run({command}, shell=True)
    """
    after, outcome, found = fix(tmp_path, "sh.py", src, "bandit:B602", "subprocess.run")
    assert "shell=True" in after and not outcome.changes
    assert outcome.unfixable[0][0] == found and why in outcome.unfixable[0][1]


# --- requests timeout ---------------------------------------------------------------------------


def test_requests_without_timeout_get_timeout_10_keeping_a_trailing_comma_layout(tmp_path: Path) -> None:
    src = """
        import requests


        def fetch(url):
            return requests.get(
                url,
                headers={"a": "b"},
            )
    """
    after, outcome, _ = fix(tmp_path, "net.py", src, "bandit:B113", "requests.get")
    compiles(after)
    assert '    headers={"a": "b"},\n        timeout=10,\n    )' in after
    assert outcome.changes[0].kind == "security-fix"


# --- weak hashes -----------------------------------------------------------------------------------


PASSWORDS = """
    import hashlib
    import hmac
    import os


    def hash_password(password, salt=None):
        salt = salt or os.urandom(4).hex()
        digest = hashlib.md5((salt + password).encode()).hexdigest()
        return f"{salt}${digest}"


    def verify_password(password, stored):
        salt = stored.split("$")[0]
        return hmac.compare_digest(hash_password(password, salt), stored)
"""


def test_md5_password_hash_becomes_scrypt_and_hash_verify_still_round_trips(tmp_path: Path) -> None:
    after, outcome, _ = fix(tmp_path, "pw.py", PASSWORDS, "bandit:B324", "hashlib.md5")
    compiles(after)
    assert 'hashlib.scrypt((salt+password).encode(),salt=b"pw",n=2**14,r=8,p=1).hex()' in squash(after)
    mod = load(tmp_path / "pw.py")
    stored = mod.hash_password("hunter22")
    assert mod.verify_password("hunter22", stored) and not mod.verify_password("hunter23", stored)
    salt = stored.split("$")[0]
    assert stored != f"{salt}${hashlib.md5((salt + 'hunter22').encode()).hexdigest()}"
    assert "scrypt" in outcome.changes[0].description


ETAG = """
    import hashlib


    def etag_for(body: bytes) -> str:
        etag = '"' + hashlib.md5(body).hexdigest() + '"'
        return etag
"""


def test_md5_for_an_etag_is_disputed_on_performance_grounds_and_left_alone(tmp_path: Path) -> None:
    after, outcome, found = fix(tmp_path, "web.py", ETAG, "bandit:B324", "hashlib.md5")
    assert after == textwrap.dedent(ETAG).lstrip() and not outcome.changes
    [dispute] = outcome.disputes
    assert dispute.issue_id == found.id and dispute.concern == "performance"
    assert "ETag" in dispute.argument and "usedforsecurity=False" in dispute.argument


def test_md5_for_an_etag_in_must_fix_is_marked_not_for_security_with_the_same_output(tmp_path: Path) -> None:
    source = write(tmp_path, "web.py", ETAG)
    before = load(tmp_path / "web.py", "etag_before").etag_for(b"body")
    found = issue("bandit:B324", "web.py", line_of(source, "hashlib.md5"))
    outcome = apply_fixes(tmp_path, [found], must_fix={found.id})
    after = (tmp_path / "web.py").read_text()
    assert "hashlib.md5(body, usedforsecurity=False)" in after and not outcome.disputes
    assert load(tmp_path / "web.py").etag_for(b"body") == before
    assert not [i for i in analyze(tmp_path) if i.rule == "bandit:B324"]  # bandit accepts it


def test_md5_of_unnamed_purpose_becomes_sha256(tmp_path: Path) -> None:
    src = """
        from hashlib import sha1


        def ident(data):
            return sha1(data).hexdigest()
    """
    after, outcome, _ = fix(tmp_path, "ids.py", src, "bandit:B324", "sha1(data)")
    compiles(after)
    assert "hashlib.sha256(data).hexdigest()" in after and "from hashlib import sha1" not in after
    assert load(tmp_path / "ids.py").ident(b"x") == hashlib.sha256(b"x").hexdigest()


# --- hard-coded secrets, debug, random ----------------------------------------------------------------


def test_hard_coded_secret_reads_the_environment_and_fails_fast_without_it(tmp_path: Path) -> None:
    src = """
        SECRET_KEY = "dev-secret"
    """
    after, outcome, _ = fix(tmp_path, "app/config.py", src, "bandit:B105", "SECRET_KEY")
    compiles(after)
    assert 'SECRET_KEY = os.environ["APP_SECRET_KEY"]' in after and "import os" in after
    env = {"PATH": "/usr/bin:/bin", "APP_SECRET_KEY": "from-env"}
    code = "import runpy; print(runpy.run_path('app/config.py')['SECRET_KEY'])"
    ok = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ok.stdout.strip() == "from-env"
    env.pop("APP_SECRET_KEY")
    missing = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "APP_SECRET_KEY" in missing.stderr


def test_hard_coded_password_argument_reads_the_environment(tmp_path: Path) -> None:
    src = """
        def connect(user, password):
            return user, password


        conn = connect("svc", password="hunter2")
    """
    after, _, _ = fix(tmp_path, "db.py", src, "bandit:B106", 'password="hunter2"')
    compiles(after)
    # named from its place: the module and the call's other argument
    assert 'connect("svc", password=os.environ["DB_SVC_PASSWORD"])' in after


def test_flask_debug_true_becomes_false(tmp_path: Path) -> None:
    src = """
        def main(app):
            app.run(host="127.0.0.1", debug=True)
    """
    after, _, _ = fix(tmp_path, "srv.py", src, "bandit:B201", "app.run")
    assert 'app.run(host="127.0.0.1", debug=False)' in after


RANDOM = """
    import random
    import string


    def token(n=16):
        return "".join(random.choice(string.ascii_letters) for _ in range(n))


    def pin():
        return random.randint(0, 9999)


    def between(lo, hi):
        return random.randint(lo, hi)


    def nonce():
        return str(random.random())


    def pick(items):
        return random.sample(items, 2)
"""


@pytest.mark.parametrize(
    ("needle", "expected"),
    [
        ("random.choice", "secrets.choice(string.ascii_letters)"),
        ("random.randint(0", "secrets.randbelow(10000)"),
        ("random.randint(lo", "lo + secrets.randbelow(hi - lo + 1)"),
        ("random.random", "secrets.token_hex(16)"),
        ("random.sample", "secrets.SystemRandom().sample(items, 2)"),
    ],
)
def test_random_for_tokens_becomes_secrets(tmp_path: Path, needle: str, expected: str) -> None:
    after, _, _ = fix(tmp_path, "tok.py", RANDOM, "bandit:B311", needle)
    compiles(after)
    assert expected in after and "import secrets" in after
    mod = load(tmp_path / "tok.py")
    assert len(mod.token()) == 16 and 0 <= mod.pin() <= 9999
    assert all(3 <= mod.between(3, 5) <= 5 for _ in range(50))
    assert len(mod.pick([1, 2, 3])) == 2 and mod.nonce()


def test_random_import_is_dropped_once_nothing_uses_it(tmp_path: Path) -> None:
    src = """
        import random


        def code():
            return random.choice("0123456789")
    """
    after, _, _ = fix(tmp_path, "otp.py", src, "bandit:B311", "random.choice")
    assert "import random" not in after and "secrets.choice(" in after


# --- ruff ---------------------------------------------------------------------------------------------


def test_ruff_findings_are_fixed_by_ruff_in_one_pass_and_the_rest_of_the_file_is_not_reformatted(
    tmp_path: Path,
) -> None:
    source = write(tmp_path, "m.py", "import os\nimport sys\ndef f( x ):\n    return x\n")
    first, second = issue("ruff:F401", "m.py", 1), issue("ruff:F401", "m.py", 2)
    outcome = apply_fixes(tmp_path, [first, second])
    assert (tmp_path / "m.py").read_text() == "def f( x ):\n    return x\n" != source
    kinds = [(c.kind, c.addresses) for c in outcome.changes]
    assert kinds == [("lint-fix", first.id), ("lint-fix", second.id)]
    assert outcome.changes[1].diff == "" and first.id in outcome.changes[1].description
    assert outcome.fixed_ids == {first.id, second.id}


def test_complexity_and_unknown_rules_are_reported_as_not_fixable(tmp_path: Path) -> None:
    write(tmp_path, "m.py", "x = 1\n")
    outcome = apply_fixes(tmp_path, [issue("radon:CC", "m.py", 1), issue("bandit:B608", "m.py", 1)])
    reasons = {i.rule: r for i, r in outcome.unfixable}
    assert "refactor" in reasons["radon:CC"] and "B608" in reasons["bandit:B608"] and not outcome.changes


def test_waived_findings_are_left_alone(tmp_path: Path) -> None:
    src = write(tmp_path, "cfg.py", "import yaml\n\nDATA = yaml.load('a: 1', Loader=yaml.Loader)\n")
    found = issue("bandit:B506", "cfg.py", 3)
    outcome = apply_fixes(tmp_path, [found], waived={found.id})
    assert (tmp_path / "cfg.py").read_text() == src and outcome.waived == [found.id]


# --- gating by the tests ------------------------------------------------------------------------------


def _gated_workspace(tmp_path: Path, test_body: str) -> tuple[Path, Issue]:
    ws = tmp_path / "ws"
    src = write(ws, "pw.py", PASSWORDS)
    write(ws, "tests/test_pw.py", test_body)
    return ws, issue("bandit:B324", "pw.py", line_of(src, "hashlib.md5"))


def _verify(ws: Path):
    baseline = run_suite(ws, coverage=False)
    assert baseline is not None and baseline.report.ok

    def verify() -> str | None:
        now = run_suite(ws, coverage=False)
        broken = baseline.passed_ids - (now.passed_ids if now else frozenset())
        return f"breaks {sorted(broken)}" if broken else None

    return verify


PINNED_MD5_TEST = """
    import hashlib

    from pw import hash_password


    def test_hash_is_md5_of_salt_and_password():
        assert hash_password("pw", "s") == "s$" + hashlib.md5(b"spw").hexdigest()
"""


def test_a_fix_that_breaks_passing_tests_is_refused_reverted_and_disputed(tmp_path: Path) -> None:
    ws, found = _gated_workspace(tmp_path, PINNED_MD5_TEST)
    before = (ws / "pw.py").read_text()
    outcome = apply_fixes(ws, [found], verify=_verify(ws))
    assert (ws / "pw.py").read_text() == before and not outcome.changes
    [refused] = outcome.refused
    assert refused.addresses == found.id and "refused: breaks" in refused.description
    assert "hashlib.scrypt(" in refused.diff
    [dispute] = outcome.disputes
    assert dispute.concern == "correctness" and "breaks tests that passed before" in dispute.argument


def test_a_must_fix_finding_whose_fix_breaks_tests_is_refused_without_a_dispute(tmp_path: Path) -> None:
    ws, found = _gated_workspace(tmp_path, PINNED_MD5_TEST)
    outcome = apply_fixes(ws, [found], must_fix={found.id}, verify=_verify(ws))
    assert outcome.refused and not outcome.disputes and not outcome.changes


def test_secret_falls_back_to_a_generated_default_only_when_the_tests_need_a_value(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    src = write(
        ws, "settings.py", 'import yaml\n\nSECRET_KEY = "dev"\nDATA = yaml.load("a: 1", Loader=yaml.Loader)\n'
    )
    write(
        ws, "tests/test_settings.py", "import settings\n\n\ndef test_key():\n    assert settings.SECRET_KEY\n"
    )
    secret = issue("bandit:B105", "settings.py", line_of(src, "SECRET_KEY"))
    loader = issue("bandit:B506", "settings.py", line_of(src, "yaml.load"))
    outcome = apply_fixes(ws, [secret, loader], verify=_verify(ws))
    after = (ws / "settings.py").read_text()
    assert 'os.environ.get("SETTINGS_SECRET_KEY") or secrets.token_urlsafe(32)' in after
    assert 'yaml.safe_load("a: 1")' in after
    assert outcome.fixed_ids == {secret.id, loader.id} and not outcome.refused
    assert run_suite(ws, coverage=False).report.ok  # type: ignore[union-attr]


# --- the real analyser agrees -------------------------------------------------------------------------


def test_the_real_analyser_no_longer_reports_the_fixed_findings(tmp_path: Path) -> None:
    write(tmp_path, "pw.py", PASSWORDS)
    write(tmp_path, "tok.py", RANDOM)
    write(tmp_path, "web.py", ETAG)
    write(
        tmp_path,
        "ops.py",
        """
        import os
        import subprocess

        import requests
        import yaml

        API_TOKEN = "abc123"


        def run(path):
            subprocess.run(f"ls -l {path}", shell=True)
            return yaml.load(open(path), Loader=yaml.Loader), requests.get("http://127.0.0.1")
        """,
    )
    findings = analyze(tmp_path)
    rules = {i.rule for i in findings}
    assert {"bandit:B324", "bandit:B311", "bandit:B602", "bandit:B506", "bandit:B105", "bandit:B113"} <= rules
    etag = next(i for i in findings if i.file == "web.py" and i.rule == "bandit:B324")
    outcome = apply_fixes(tmp_path, findings)
    left = analyze(tmp_path)
    fixed_rules = {"bandit:B324", "bandit:B311", "bandit:B602", "bandit:B506", "bandit:B105", "bandit:B113"}
    remaining = {(i.file, i.rule) for i in left if i.rule in fixed_rules | {"ruff:F401"}}
    assert remaining == {("web.py", "bandit:B324")}  # the disputed ETag only
    assert [d.issue_id for d in outcome.disputes] == [etag.id]
    for name in ("pw.py", "tok.py", "ops.py"):
        compiles((tmp_path / name).read_text())


@pytest.mark.parametrize(
    ("head", "encoding"),
    [(b"# -*- coding: latin-1 -*-\n", "latin-1"), (b"\xef\xbb\xbf", "utf-8-sig")],
    ids=["pep263-latin-1", "utf-8-bom"],
)
def test_a_fixed_file_keeps_its_encoding_and_every_other_byte(
    tmp_path: Path, head: bytes, encoding: str
) -> None:
    body = "import yaml\n\nGREETING = 'Grüße, café'\nDATA = yaml.load('a: 1', Loader=yaml.Loader)\n"
    (tmp_path / "cfg.py").write_bytes(head + body.encode(encoding.replace("-sig", "")))
    outcome = apply_fixes(
        tmp_path,
        [issue("bandit:B506", "cfg.py", line_of(body, "yaml.load") + (1 if head.startswith(b"#") else 0))],
    )
    assert [c.kind for c in outcome.changes] == ["security-fix"]
    after = (tmp_path / "cfg.py").read_bytes()
    expected = head + body.replace("yaml.load('a: 1', Loader=yaml.Loader)", "yaml.safe_load('a: 1')").encode(
        encoding.replace("-sig", "")
    )
    assert after == expected
