"""The LLM brains as real agent processes on a real nats-server, talking to a local chat server.

Each agent runs ``python -m services.<role>`` with ``CADRE_BRAIN=llm`` and
``CADRE_LLM_BASE_URL`` pointing at ``tests.fakes.ChatServer``, so the real
openai client, the prompts, the reply parsing, the retries and the error
paths are all exercised; the scripted replies stand in for the model only.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.bus.core import Bus
from shared.contract.protocol import (
    DevelopInputs,
    DevelopmentOutput,
    FixInputs,
    Issue,
    MetricEvent,
    ResearchOutput,
    ReviewOutput,
    StepResult,
    TaskBody,
    WorkItem,
    metric_decoder,
    new_id,
    now,
)
from shared.contract.workspace import pack_files
from shared.embedded.launcher import Stack
from shared.tools.analysis import analyze, score
from tests.fakes import ChatServer, Fail, Reply
from tests.helpers import default_inputs, step_result, stream_messages, wait_for_value

PRICES = {"llm_price_input_per_1k": 0.25, "llm_price_output_per_1k": 2.0}


@pytest.fixture
async def fake() -> AsyncIterator[ChatServer]:
    async with ChatServer() as server:
        yield server


def llm_agent(stack: Stack, role: str, fake: ChatServer, **overrides: object) -> None:
    stack.add(
        role,
        brain="llm",
        llm_base_url=fake.base_url,
        llm_model="fake-model",
        llm_timeout=20.0,
        llm_max_retries=2,
        **PRICES,
        **overrides,
    )


async def send(bus: Bus, role: str, task_type: str, description: str, *, step: str, **kw: object) -> None:
    item = WorkItem(
        message_id=new_id("msg"),
        to_agent=role,  # type: ignore[arg-type]
        task_type=task_type,
        task=TaskBody(
            description=description,
            requirements=list(kw.pop("requirements", [])),  # type: ignore[call-overload]
            input_data=dict(kw.pop("input_data", {})),  # type: ignore[call-overload]
        ),
        context=dict(kw.pop("context", {})),  # type: ignore[call-overload]
        task_id="task_llm",
        step_id=step,
        deadline=now() + 120,
        created_at=now(),
        workspace=kw.pop("workspace", None),  # type: ignore[arg-type]
        inputs=kw.pop("inputs", None) or default_inputs(role, task_type),  # type: ignore[arg-type]
    )
    await bus.publish(bus.subjects.work(role, "normal"), item)


async def workspace_files(bus: Bus, result: StepResult) -> dict[str, str]:
    data = await bus.get_artifact(result.artifacts["workspace"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


# --- researcher ---------------------------------------------------------------------------------


async def test_llm_researcher_summarises_retrieved_passages_with_checked_citations(
    bus: Bus, stack: Stack, fake: ChatServer, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "refresh-tokens.md").write_text(
        "# Refresh tokens\n\n## Rotation\n\nRotate the refresh token on every use and revoke the whole "
        "token family when an old refresh token is presented again.\n"
    )
    summary = (
        "Keep access tokens short-lived [1]. Rotate refresh tokens on every use [2]. "
        "Store password hashes with scrypt [42]."
    )
    # a rate limit first: the SDK retries it, the step still completes
    fake.script(
        Fail(429, "slow down", headers={"retry-after-ms": "20"}), Reply(json.dumps({"summary": summary}))
    )
    llm_agent(stack, "researcher", fake, corpus_dirs=str(corpus), include_installed_packages=False)
    await send(
        bus,
        "researcher",
        "research",
        "JWT refresh token rotation and access token lifetime",
        step="research",
        context={"language": "python"},
    )
    res = await step_result(bus, "research", timeout=90.0)
    assert res.status == "completed", res.error
    out = res.output
    assert isinstance(out, ResearchOutput)
    assert len(out.passages) >= 2
    assert "[1]" in out.summary and "[2]" in out.summary
    assert "[42]" not in out.summary.split("Note:")[0]
    assert "Removed citations to passages that do not exist: [42]" in out.summary
    assert any(p.source.endswith("refresh-tokens.md") for p in out.passages)
    # the numbers the model was shown are the numbers of the returned passages
    prompt = fake.chat_requests()[-1].user
    for n, p in enumerate(out.passages, 1):
        assert f"[{n}] {p.source} — {p.section}" in prompt
    assert len(fake.chat_requests()) == 2
    assert res.usage.requests == 2 and res.usage.model == "fake-model"
    assert res.usage.prompt_tokens > 0 and res.usage.completion_tokens > 0
    expected_cost = res.usage.prompt_tokens / 1000 * 0.25 + res.usage.completion_tokens / 1000 * 2.0
    assert res.usage.cost_usd == pytest.approx(expected_cost)

    async def metric() -> list[MetricEvent] | None:
        found = await stream_messages(
            bus.js, bus.subjects.stream_metrics, bus.subjects.metrics_all, metric_decoder
        )
        hits = [m for m in found if m.kind == "step_completed" and m.step_id == "research"]
        return hits or None

    [event] = await wait_for_value(metric, what="the step_completed metric")
    assert event.usage == res.usage


async def test_a_malformed_model_reply_fails_the_step_clearly_and_the_agent_serves_the_next(
    bus: Bus, stack: Stack, fake: ChatServer
) -> None:
    fake.script(
        Reply(
            "Sure! Tokens should be short-lived, as everyone knows.", prompt_tokens=50, completion_tokens=12
        ),
        Reply(json.dumps({"summary": "Keep access tokens short-lived [1]."})),
    )
    llm_agent(stack, "researcher", fake, include_installed_packages=False)
    await send(bus, "researcher", "research", "JWT access token lifetime", step="bad")
    bad = await step_result(bus, "bad", timeout=90.0)
    assert bad.status == "failed"
    assert bad.error and "not valid JSON" in bad.error and "Sure! Tokens" in bad.error
    assert bad.summary.startswith("research summary failed")
    assert bad.usage.prompt_tokens == 50 and bad.usage.requests == 1  # spent tokens still counted
    await send(bus, "researcher", "research", "JWT access token lifetime", step="good")
    good = await step_result(bus, "good", timeout=90.0)
    assert good.status == "completed" and good.instance_id == bad.instance_id
    assert isinstance(good.output, ResearchOutput) and "[1]" in good.output.summary


# --- developer ------------------------------------------------------------------------------------

CALC_TEST = "from calc import add, mul\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"


def files_reply(summary: str, files: dict[str, str], **extra: object) -> Reply:
    body = {"summary": summary, "files": [{"path": p, "content": c} for p, c in files.items()], **extra}
    return Reply(f"```json\n{json.dumps(body)}\n```")


async def test_llm_developer_writes_code_runs_the_tests_and_repairs_a_failure(
    bus: Bus, stack: Stack, fake: ChatServer
) -> None:
    buggy = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a + b\n"
    fixed = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
    fake.script(
        files_reply(
            "add and mul", {"calc.py": buggy, "tests/test_calc.py": CALC_TEST, "../escape.py": "x = 1\n"}
        ),
        files_reply("fix mul", {"calc.py": fixed}),
    )
    llm_agent(stack, "developer", fake)
    ref = await bus.put_artifact(pack_files({"README.md": "# calc\n"}))
    await send(
        bus,
        "developer",
        "implementation",
        "Implement add and mul in calc.py with tests",
        step="implement",
        workspace=ref,
        inputs=DevelopInputs(research_results=ResearchOutput(summary="Keep functions pure [1].")),
    )
    res = await step_result(bus, "implement", timeout=90.0)
    assert res.status == "completed", res.error
    out = res.output
    assert isinstance(out, DevelopmentOutput)
    assert out.tests is not None and (out.tests.passed, out.tests.failed) == (2, 0)
    assert out.files == ["calc.py", "tests/test_calc.py"]
    assert [c.file for c in out.refused] == ["../escape.py"]
    files = await workspace_files(bus, res)
    assert files["calc.py"] == fixed and files["README.md"] == "# calc\n"
    assert "escape.py" not in " ".join(files)
    first, second = fake.chat_requests()
    assert "Keep functions pure [1]." in first.user and "=== README.md ===" in first.user
    assert "the tests fail" in second.user and "1 failed" in second.user
    assert res.usage.requests == 2


async def test_llm_developer_reverts_a_fix_that_breaks_passing_tests(
    bus: Bus, stack: Stack, fake: ChatServer
) -> None:
    good = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
    broken = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
    finding = Issue(
        id="a1b2c3d4e5f6",
        severity="LOW",
        rule="llm:missing-docstring",
        message="add has no docstring",
        tool="llm",
        concern="style",
        file="calc.py",
        line=1,
    )
    dispute = {"issue_id": finding.id, "argument": "trivial", "concern": "style"}
    fake.script(
        files_reply("document add", {"calc.py": broken}, disputes=[dispute]),
        files_reply("still", {"calc.py": broken}),
    )
    llm_agent(stack, "developer", fake)
    ref = await bus.put_artifact(pack_files({"calc.py": good, "tests/test_calc.py": CALC_TEST}))
    await send(
        bus,
        "developer",
        "fix",
        "Fix the review findings",
        step="fix",
        workspace=ref,
        inputs=FixInputs(findings=[finding], must_fix=[finding.id]),
    )
    res = await step_result(bus, "fix", timeout=90.0)
    assert res.status == "completed", res.error
    out = res.output
    assert isinstance(out, DevelopmentOutput)
    assert out.changes == [] and [c.kind for c in out.refused] == ["reverted"]
    assert "tests.test_calc::test_add" in out.refused[0].description
    assert out.tests is not None and out.tests.passed == 2 and out.tests.ok
    assert out.disputes == []  # a must-fix finding cannot be disputed
    assert "ignored a dispute of must-fix issue a1b2c3d4e5f6" in out.summary
    assert (await workspace_files(bus, res))["calc.py"] == good
    assert "id=a1b2c3d4e5f6 MUST FIX" in fake.chat_requests()[0].user
    # a model-free step goes to the builtin developer: tests run, the model is not asked
    await send(bus, "developer", "test", "Run the tests", step="test", workspace=ref)
    tested = await step_result(bus, "test", timeout=90.0)
    assert tested.status == "completed", tested.error
    assert isinstance(tested.output, DevelopmentOutput) and tested.output.tests is not None
    assert tested.output.tests.passed == 2 and tested.usage.requests == 0
    assert len(fake.chat_requests()) == 2


# --- reviewer --------------------------------------------------------------------------------------

AUTH = '''"""Login."""
import hashlib


def hash_password(password: str) -> str:
    return hashlib.md5(password.encode()).hexdigest()


def login(users: dict[str, str], name: str, password: str) -> bool:
    return users.get(name) == hash_password(password)
'''


async def test_llm_reviewer_merges_semantic_findings_into_the_static_score(
    bus: Bus, stack: Stack, fake: ChatServer, tmp_path: Path
) -> None:
    issues = [
        {
            "severity": "HIGH",
            "concern": "security",
            "rule": "missing-rate-limit",
            "message": "login has no rate limiting or lockout",
            "file": "auth.py",
            "line": 9,
            "recommendation": "Limit failed attempts per user and IP.",
        },
        {"severity": "URGENT", "concern": "security", "message": "not a real severity"},
    ]
    fake.script(Reply(json.dumps({"issues": issues})))
    llm_agent(stack, "reviewer", fake)
    ref = await bus.put_artifact(pack_files({"auth.py": AUTH}))
    await send(bus, "reviewer", "security_review", "Security review of login", step="review", workspace=ref)
    res = await step_result(bus, "review", timeout=90.0)
    assert res.status == "completed", res.error
    out = res.output
    assert isinstance(out, ReviewOutput)

    local = tmp_path / "ws"
    local.mkdir()
    (local / "auth.py").write_text(AUTH)
    static = analyze(local)
    assert any(i.tool == "bandit" for i in static)
    static_score, _ = score(static, None)

    [semantic] = [i for i in res.issues if i.tool == "llm"]
    assert semantic.rule == "llm:missing-rate-limit" and semantic.severity == "HIGH"
    assert (semantic.file, semantic.line, semantic.concern) == ("auth.py", 9, "security")
    assert len(semantic.id) == 12
    assert {i.id for i in static} <= {i.id for i in res.issues}
    assert res.score == out.score == static_score - 4  # one HIGH more, same formula
    assert out.verdict == "changes_requested"
    assert "1 malformed model findings ignored" in out.summary
    assert "bandit:" in fake.chat_requests()[0].user  # the model saw the static findings
