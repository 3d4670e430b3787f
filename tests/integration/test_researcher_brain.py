"""The builtin researcher as a real service process on a real nats-server."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from shared.bus import Bus
from shared.launcher import Stack
from shared.protocol import ResearchOutput, WorkItem
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
