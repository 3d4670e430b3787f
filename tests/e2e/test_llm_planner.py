"""The orchestrator's LLM planner over a real chat-completions HTTP server, and its template fallback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from shared.bus.core import Bus
from shared.embedded.launcher import Stack
from tests.e2e.test_orchestration import SCRIPTED, submit
from tests.fakes import ChatServer, Reply
from tests.helpers import await_result, feature_task, task_events

PLAN = {
    "steps": [
        {
            "id": "analyze",
            "role": "researcher",
            "task_type": "research",
            "description": "Research JWT",
            "depends_on": [],
        },
        {
            "id": "build",
            "role": "developer",
            "task_type": "implementation",
            "description": "Implement",
            "depends_on": ["analyze"],
        },
        {
            "id": "check",
            "role": "reviewer",
            "task_type": "security_review",
            "description": "Review",
            "depends_on": ["build"],
        },
    ]
}


@pytest.fixture
async def chat() -> AsyncIterator[ChatServer]:
    async with ChatServer() as server:
        yield server


def start(stack: Stack, chat: ChatServer) -> None:
    stack.add("orchestrator", planner="llm", llm_base_url=chat.base_url, llm_max_retries=0)
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)


async def test_llm_planner_plan_is_used_when_valid(bus: Bus, stack: Stack, chat: ChatServer) -> None:
    chat.script(Reply(json.dumps(PLAN), prompt_tokens=321, completion_tokens=54))
    start(stack, chat)
    task = feature_task({"scores": [95]})
    await submit(bus, task)
    result = await await_result(bus, task.task_id)
    assert result.status == "completed", result.reason
    assert result.plan is not None and result.plan.source == "planner"
    assert [s.step_id for s in result.steps] == ["analyze", "build", "check"]
    assert "Build user authentication API" in chat.chat_requests()[0].user
    # the scripted agents use no model, so the task's usage is exactly the planner's call
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.requests) == (321, 54, 1)
    assert result.plan.usage == result.usage


async def test_invalid_llm_plan_falls_back_to_the_template_with_an_event(
    bus: Bus, stack: Stack, chat: ChatServer
) -> None:
    cyclic = json.loads(json.dumps(PLAN))
    cyclic["steps"][0]["depends_on"] = ["check"]
    chat.script(Reply(json.dumps(cyclic)))
    start(stack, chat)
    task = feature_task({"scores": [95]})
    await submit(bus, task)
    result = await await_result(bus, task.task_id)
    assert result.status == "completed", result.reason
    assert result.plan is not None and (result.plan.template, result.plan.source) == ("feature", "template")
    events = await task_events(bus, task.task_id)
    fallback = [e for e in events if e.kind == "plan_fallback"]
    assert len(fallback) == 1 and "cycle" in fallback[0].text and "'feature' template" in fallback[0].text
