"""The builtin researcher as a real service process on a real nats-server."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from shared.bus.core import Bus
from shared.contract.protocol import ResearchOutput, WorkItem
from shared.contract.workspace import pack_dir
from shared.embedded.launcher import Stack
from tests.helpers import make_item, step_result


def research_item(question: str, step: str, **context: object) -> WorkItem:
    return make_item(
        "researcher", "research", step, task_id="task_research", description=question, context=context
    )


def plain(text: str) -> str:
    """Passage text as the summary quotes it: inline code marks dropped, lines joined."""
    return " ".join(text.replace("`", "").split())


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


async def test_researcher_answers_the_spec_jwt_question_with_cited_passages_and_installed_libraries(
    bus: Bus, stack: Stack
) -> None:
    stack.add("researcher")
    question = "Research best practices for JWT authentication"
    await bus.publish(
        bus.subjects.work("researcher", "normal"),
        research_item(
            question, "analyze", language="Python", framework="FastAPI", standards="2024 standards"
        ),
    )
    result = await step_result(bus, "analyze", timeout=40.0)
    assert result.status == "completed", result.error
    output = result.output
    assert isinstance(output, ResearchOutput)

    jwt_note = "knowledge/jwt-authentication.md"
    assert output.passages[0].source == jwt_note
    sections = {p.section for p in output.passages if p.source == jwt_note}
    assert "JWT authentication > Token lifetimes" in sections
    assert "JWT authentication > Refresh token rotation and reuse detection" in sections
    # every summary sentence cites a passage it was taken from
    cited = [line for line in output.summary.split("\n\nSources:")[0].splitlines() if line]
    assert cited and result.summary.splitlines()[0] == cited[0]
    for line in cited:
        match = re.fullmatch(r"(.+) \[(\d+)\]", line)
        assert match, line
        assert match.group(1) in plain(output.passages[int(match.group(2)) - 1].text)
    assert "15 minutes" in output.summary
    assert f"[1] {jwt_note} — " in output.summary

    # libraries are real installed distributions with their installed versions
    for lib in output.libraries:
        assert installed_version(lib.name) == lib.version, lib
        assert lib.reason
    if installed_version("PyJWT"):
        assert "PyJWT" in [lib.name for lib in output.libraries]
    assert "cadre" not in [lib.name.lower() for lib in output.libraries]

    # a second question on the same service: the cached index answers with package docs
    await bus.publish(
        bus.subjects.work("researcher", "normal"),
        research_item("Which client library speaks NATS JetStream, and how do I serialize msgpack?", "libs"),
    )
    libs = await step_result(bus, "libs", timeout=40.0)
    assert isinstance(libs.output, ResearchOutput)
    versions = {lib.name: lib.version for lib in libs.output.libraries}
    assert versions.get("nats-py") == md.version("nats-py")
    assert versions.get("msgspec") == md.version("msgspec")
    assert any(p.source == f"package:nats-py {md.version('nats-py')}" for p in libs.output.passages)


async def test_researcher_searches_user_corpus_dirs_and_says_plainly_when_nothing_matches(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    notes = tmp_path / "team-notes"
    notes.mkdir()
    (notes / "runbook.md").write_text(
        "# Runbook\n\n## Zebrafish tank rotation\n\nThe zebrafish tanks are rotated every Tuesday by the night shift.\n"
    )
    stack.add("researcher", corpus_dirs=[notes])
    await bus.publish(
        bus.subjects.work("researcher", "normal"), research_item("When are zebrafish tanks rotated?", "team")
    )
    team = await step_result(bus, "team", timeout=40.0)
    assert team.status == "completed" and isinstance(team.output, ResearchOutput)
    assert team.output.passages[0].source == f"{notes.name}/runbook.md"
    assert team.output.passages[0].section == "Runbook > Zebrafish tank rotation"
    assert "every Tuesday by the night shift. [1]" in team.output.summary

    await bus.publish(
        bus.subjects.work("researcher", "normal"),
        research_item("Quasar spectroscopy with heliographic lattices", "nothing"),
    )
    nothing = await step_result(bus, "nothing", timeout=40.0)
    assert nothing.status == "completed" and isinstance(nothing.output, ResearchOutput)
    assert nothing.output.passages == []
    assert nothing.summary.startswith("No passages in the local corpus match")
    assert "CADRE_CORPUS_DIRS" in nothing.summary


FLASK_APP = '''"""A small Flask app: users, login, sessions."""

import hashlib

from flask import Flask, request, session

app = Flask(__name__)
app.secret_key = "dev"

USERS = {}


def hash_password(password):
    return hashlib.md5(password.encode()).hexdigest()


def seed():
    USERS["admin"] = {"password": "admin123", "hash": hash_password("admin123")}


@app.post("/login")
def login():
    user = USERS.get(request.form["username"])
    if user and user["hash"] == hash_password(request.form["password"]):
        session["user"] = request.form["username"]
        return "ok"
    return "no", 401
'''
PROPER_HASHES = ("argon2", "scrypt", "bcrypt", "pbkdf2")
# the libraries docs/knowledge/password-hashing.md names for the job
PASSWORD_LIBRARIES = {"argon2-cffi", "bcrypt", "passlib", "pwdlib"}


async def test_researcher_reads_the_workspace_and_answers_the_password_question_from_the_knowledge(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    workspace = tmp_path / "flask-app"
    workspace.mkdir()
    (workspace / "app.py").write_text(FLASK_APP)
    (workspace / "tests").mkdir()
    (workspace / "tests" / "test_app.py").write_text('PASSWORD = "made-up-for-tests"\n')
    ref = await bus.put_artifact(pack_dir(workspace), description="workspace (flask-app)")
    stack.add("researcher")
    item = make_item(
        "researcher",
        "research",
        "flask",
        task_id="task_research",
        description="How should this Flask app store passwords and sessions securely?",
        context={"language": "python", "framework": "flask"},
        workspace=ref,
    )
    await bus.publish(bus.subjects.work("researcher", "normal"), item)
    result = await step_result(bus, "flask", timeout=60.0)
    assert result.status == "completed", result.error
    output = result.output
    assert isinstance(output, ResearchOutput)
    answer = output.summary.split("\n\nSources:")[0]
    sources = [p.source for p in output.passages]

    # grounded in the code: the md5 password hash is found, named with its file and line, and leads
    md5_line = next(n for n, line in enumerate(FLASK_APP.splitlines(), 1) if "hashlib.md5" in line)
    assert result.summary.splitlines()[0].startswith("app.py:"), result.summary
    assert f"app.py:{md5_line}: Passwords are hashed with hashlib.md5 in hash_password()" in answer
    assert "workspace/app.py" in sources
    assert "workspace/tests/test_app.py" not in sources  # test code's made-up passwords are not findings
    assert "plain text" in answer  # the seeded plaintext password

    # answered with the knowledge about it: a proper password hash, cited to the note
    note = "knowledge/password-hashing.md"
    assert note in sources
    hashes = [line for line in answer.splitlines() if any(h in line.lower() for h in PROPER_HASHES)]
    assert hashes, answer
    for line in hashes:  # each such sentence cites the password-hashing note
        cited = output.passages[int(re.search(r"\[(\d+)\]$", line).group(1)) - 1]  # type: ignore[union-attr]
        assert cited.source == note, (line, cited)
    # every sentence cites a source that exists
    for line in answer.splitlines():
        if line.startswith("Note:"):
            continue
        number = int(re.fullmatch(r".+ \[(\d+)\]", line).group(1))  # type: ignore[union-attr]
        assert 1 <= number <= len(output.passages), line

    # no library that does not serve the question (truststore for "store", bandit for "securely"...)
    assert {lib.name.lower() for lib in output.libraries} <= PASSWORD_LIBRARIES, output.libraries
    assert not any(s.startswith("package:openai") or s.startswith("package:aiohttp") for s in sources), (
        sources
    )
