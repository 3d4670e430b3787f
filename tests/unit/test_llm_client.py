"""The LLM client and the planner, through the real openai SDK over HTTP to a local chat server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from services.developer.llm import safe_path
from services.orchestrator.planner import plan_with_llm
from services.researcher.llm import check_citations
from services.reviewer.llm import ReviewFinding, semantic_issues
from shared.agent.llm import LLMClient, LLMReplyError, extract_json
from shared.agent.settings import LLMSettings
from shared.contract.errors import LLMError, PlanError
from tests.fakes import ChatServer, Fail, Raw, Reply


class Change(msgspec.Struct):
    path: str
    content: str


class Answer(msgspec.Struct):
    summary: str
    files: list[Change] = []


@pytest.fixture
async def fake() -> AsyncIterator[ChatServer]:
    async with ChatServer() as server:
        yield server


def llm_settings(fake: ChatServer, **overrides: object) -> LLMSettings:
    values: dict[str, object] = {
        "llm_base_url": fake.base_url,
        "llm_model": "fake-model",
        "llm_api_key": "sk-test",
        "llm_timeout": 10.0,
        "llm_max_retries": 2,
        "llm_price_input_per_1k": 0.5,
        "llm_price_output_per_1k": 1.5,
    }
    values.update(overrides)
    return LLMSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def client(fake: ChatServer) -> AsyncIterator[LLMClient]:
    c = LLMClient(llm_settings(fake))
    try:
        yield c
    finally:
        await c.aclose()


ANSWER = json.dumps({"summary": "done", "files": [{"path": "a.py", "content": "x = 1\n"}]})


async def test_chat_json_decodes_the_reply_and_records_usage_and_cost(
    fake: ChatServer, client: LLMClient
) -> None:
    fake.script(Reply(f"Here you go:\n```json\n{ANSWER}\n```", prompt_tokens=1200, completion_tokens=300))
    answer, usage = await client.chat_json("You are terse.", "Make a file.", Answer)
    assert answer == Answer(summary="done", files=[Change(path="a.py", content="x = 1\n")])
    assert (usage.model, usage.prompt_tokens, usage.completion_tokens, usage.requests) == (
        "fake-model",
        1200,
        300,
        1,
    )
    assert usage.cost_usd == pytest.approx(1.2 * 0.5 + 0.3 * 1.5)
    [req] = fake.chat_requests()
    assert req.body["model"] == "fake-model"
    assert req.body["response_format"] == {"type": "json_object"}
    assert req.headers["Authorization"] == "Bearer sk-test"
    assert req.system.startswith("You are terse.") and '"summary"' in req.system  # the JSON schema
    assert req.user == "Make a file."


async def test_json_mode_off_sends_no_response_format_but_still_asks_for_json(fake: ChatServer) -> None:
    c = LLMClient(llm_settings(fake, llm_json_mode=False))
    try:
        fake.script(Reply(ANSWER))
        await c.chat_json("sys", "user", Answer)
    finally:
        await c.aclose()
    [req] = fake.chat_requests()
    assert "response_format" not in req.body
    assert "JSON object only" in req.system


async def test_a_429_then_success_is_retried(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Fail(429, "slow down", headers={"Retry-After": "0"}), Reply(ANSWER))
    answer, usage = await client.chat_json("sys", "user", Answer)
    assert answer.summary == "done"
    assert len(fake.chat_requests()) == 2
    assert usage.requests == 2
    assert fake.pending == 0


async def test_retry_after_is_honoured(fake: ChatServer, client: LLMClient) -> None:
    # without the header the SDK's first backoff is at most 0.5 s; Retry-After: 1 must win
    fake.script(Fail(429, "slow down", headers={"Retry-After": "1"}), Reply(ANSWER))
    await client.chat_json("sys", "user", Answer)
    first, second = fake.chat_requests()
    assert second.at - first.at >= 0.95


async def test_a_500_then_success_is_retried(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Fail(500, "boom", headers={"retry-after-ms": "10"}), Reply(ANSWER))
    answer, usage = await client.chat_json("sys", "user", Answer)
    assert answer.summary == "done" and usage.requests == 2
    assert len(fake.chat_requests()) == 2


async def test_rate_limits_past_the_retry_budget_become_a_retryable_llm_error(
    fake: ChatServer, client: LLMClient
) -> None:
    fake.script(*[Fail(429, "quota", headers={"retry-after-ms": "5"})] * 3)
    with pytest.raises(LLMError) as err:
        await client.chat_json("sys", "user", Answer)
    assert "HTTP 429" in str(err.value) and "quota" in str(err.value)
    assert err.value.non_retryable is False
    assert len(fake.chat_requests()) == 3  # first try + llm_max_retries=2


async def test_an_auth_error_is_not_retried(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Fail(401, "bad key"))
    with pytest.raises(LLMError) as err:
        await client.chat_json("sys", "user", Answer)
    assert "HTTP 401" in str(err.value) and "bad key" in str(err.value)
    assert err.value.non_retryable is True
    assert len(fake.chat_requests()) == 1


async def test_a_reply_that_is_not_json_is_a_clear_llm_error(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Reply("Sure! I made the file for you.", prompt_tokens=10, completion_tokens=8))
    with pytest.raises(LLMReplyError) as err:
        await client.chat_json("sys", "user", Answer)
    assert "not valid JSON" in str(err.value) and "Sure! I made the file" in str(err.value)
    assert err.value.non_retryable is True
    assert err.value.usage.prompt_tokens == 10 and err.value.usage.requests == 1


async def test_a_reply_of_the_wrong_shape_says_what_is_wrong(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Reply(json.dumps({"summary": "x", "files": [{"path": 3, "content": ""}]})))
    with pytest.raises(LLMReplyError) as err:
        await client.chat_json("sys", "user", Answer)
    message = str(err.value)
    assert "expected shape (Answer)" in message and "$.files[0].path" in message


async def test_a_truncated_reply_is_reported_as_cut_off(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Reply('{"summary": "half', finish_reason="length"))
    with pytest.raises(LLMReplyError, match="cut off"):
        await client.chat_json("sys", "user", Answer)


async def test_a_non_completion_body_is_an_llm_error_not_a_crash(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Raw(200, '{"unexpected": true}'))
    with pytest.raises(LLMError):
        await client.chat_json("sys", "user", Answer)


async def test_an_unreachable_endpoint_is_a_retryable_llm_error() -> None:
    server = await ChatServer().start()
    url = server.base_url
    await server.stop()  # nothing listens on that port any more
    c = LLMClient(LLMSettings(llm_base_url=url, llm_max_retries=0, llm_timeout=5.0))
    try:
        with pytest.raises(LLMError, match="unreachable") as err:
            await c.chat_json("sys", "user", Answer)
    finally:
        await c.aclose()
    assert err.value.non_retryable is False


def test_no_base_url_is_a_clear_error() -> None:
    with pytest.raises(LLMError, match="CADRE_LLM_BASE_URL is not set"):
        LLMClient(LLMSettings(llm_base_url=None))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('Here it is: {"a": {"b": 2}} hope it helps', '{"a": {"b": 2}}'),
        ("no json at all", "no json at all"),
    ],
)
def test_extract_json_tolerates_fences_and_prose(text: str, expected: str) -> None:
    assert extract_json(text) == expected


# --- the planner ------------------------------------------------------------------------

GOOD_PLAN = {
    "steps": [
        {"id": "research", "role": "researcher", "task_type": "research", "description": "JWT practice"},
        {
            "id": "build",
            "role": "developer",
            "task_type": "implementation",
            "description": "Implement login",
            "depends_on": ["research"],
        },
        {
            "id": "review",
            "role": "reviewer",
            "task_type": "security_review",
            "description": "Review login",
            "depends_on": ["build"],
        },
    ]
}


async def test_the_planner_turns_a_task_into_a_validated_plan(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Reply(json.dumps(GOOD_PLAN)))
    plan = await plan_with_llm(client, "Build login", ["JWT tokens"], {"language": "python"})
    assert (plan.template, plan.source) == ("llm", "planner")
    assert [(s.id, s.role, s.depends_on) for s in plan.steps] == [
        ("research", "researcher", []),
        ("build", "developer", ["research"]),
        ("review", "reviewer", ["build"]),
    ]
    build, review = plan.steps[1], plan.steps[2]
    assert build.inputs == {"research_results": "research"}
    assert review.review_loop is True
    prompt = fake.chat_requests()[0].user
    assert "Build login" in prompt and "JWT tokens" in prompt and "python" in prompt


def _plan_with(**changes: object) -> dict:
    steps = [dict(s) for s in GOOD_PLAN["steps"]]
    for index_field, value in changes.items():
        index, name = index_field.split("__")
        steps[int(index[1:])][name] = value
    return {"steps": steps}


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (_plan_with(s1__role="astrologer"), "unknown role 'astrologer'"),
        (_plan_with(s0__depends_on=["review"]), "cycle"),
        (_plan_with(s2__depends_on=["nowhere"]), "unknown step 'nowhere'"),
        (_plan_with(s1__id="research"), "duplicate step ids"),
        (_plan_with(s2__depends_on=["research"]), "reviewer step 'review' does not depend on a developer"),
        (_plan_with(s1__task_type="juggle"), "task_type 'juggle'"),
        ({"steps": []}, "no steps"),
    ],
)
async def test_the_planner_refuses_invalid_plans_with_a_reason(
    fake: ChatServer, client: LLMClient, reply: dict, reason: str
) -> None:
    fake.script(Reply(json.dumps(reply)))
    with pytest.raises(PlanError) as err:
        await plan_with_llm(client, "Build login", [], {})
    assert reason in str(err.value)


async def test_an_unusable_planner_reply_is_a_plan_error(fake: ChatServer, client: LLMClient) -> None:
    fake.script(Reply("I would start by researching."))
    with pytest.raises(PlanError, match="planner reply unusable"):
        await plan_with_llm(client, "Build login", [], {})


# --- what the brains do with a reply (pure functions) ---------------------------------------------


def test_citations_to_missing_passages_are_dropped_and_reported() -> None:
    text, cited, invalid = check_citations("Short tokens [1]. Rotate [2, 9]. Hash [0]. Pepper [12].", 3)
    assert text == "Short tokens [1]. Rotate [2]. Hash. Pepper."
    assert (cited, invalid) == ([1, 2], [0, 9, 12])


def test_semantic_findings_get_stable_ids_and_bad_ones_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "auth.py").write_text("import jwt\n\ndef login(user):\n    return jwt.encode({}, 'k')\n")
    finding = ReviewFinding(
        message="No rate limiting on login",
        severity="high",
        concern="Security",
        rule="missing-rate-limit",
        file="./auth.py",
        line=3,
    )
    first, dropped = semantic_issues([finding, ReviewFinding(message="x", severity="URGENT")], tmp_path)
    assert dropped and len(first) == 1
    issue = first[0]
    assert (issue.tool, issue.rule, issue.severity, issue.concern) == (
        "llm",
        "llm:missing-rate-limit",
        "HIGH",
        "security",
    )
    assert (issue.file, issue.line) == ("auth.py", 3)
    # the next round: the line moved down and the wording changed, the id stays
    (tmp_path / "auth.py").write_text(
        "import jwt\nimport time\n\ndef login(user):\n    return jwt.encode({}, 'k')\n"
    )
    moved = msgspec.structs.replace(finding, line=4, message="Login lacks any rate limit")
    again, _ = semantic_issues([moved], tmp_path)
    assert again[0].id == issue.id and again[0].line == 4
    # a file outside the workspace is not kept as a location
    outside, _ = semantic_issues([msgspec.structs.replace(finding, file="../../etc/passwd")], tmp_path)
    assert (outside[0].file, outside[0].line) == (None, None)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("pkg/mod.py", True),
        ("tests/test_x.py", True),
        ("../escape.py", False),
        ("/etc/passwd", False),
        (".git/hooks/pre-commit", False),
        ("", False),
    ],
)
def test_developer_paths_must_stay_inside_the_workspace(tmp_path: Path, name: str, ok: bool) -> None:
    assert (safe_path(tmp_path, name) is not None) is ok
