"""Test helpers: waiting on conditions instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from shared.bus.core import Bus
from shared.contract.protocol import (
    ArtifactRef,
    DevelopInputs,
    FixInputs,
    ResearchInputs,
    ReviewInputs,
    StepInputs,
    StepResult,
    StepStarted,
    TaskBody,
    WorkItem,
    new_id,
    now,
    step_decoder,
)

T = TypeVar("T")

__all__ = [
    "StepFeed",
    "assert_eventually",
    "default_inputs",
    "make_item",
    "step_result",
    "stream_messages",
    "wait_for_value",
]


async def wait_for_value(
    fn: Callable[[], Awaitable[T | None]],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll an async probe until it returns a truthy value; fail with ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


async def assert_eventually(fn: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    async def probe() -> bool | None:
        return fn() or None

    await wait_for_value(probe, timeout, what=what)


async def stream_messages(
    js: JetStreamContext, stream: str, subject: str, decoder: msgspec.json.Decoder
) -> list:
    """Every stored message of a stream on a subject filter, decoded (ordered, ephemeral)."""
    out = []
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return out
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                break
            out.append(decoder.decode(msg.data))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def await_result(bus, task_id: str, timeout: float = 60.0):
    """The task's FinalResult, once the task is over: the result and the final event both stored.

    The orchestrator publishes the result, then the final event (its kind is the result's
    status), so a test reading the task's events right after this sees the whole trace.
    """
    from nats.js.errors import NotFoundError

    from shared.contract.protocol import result_decoder

    async def last(subject: str):
        try:
            return await bus.js.get_last_msg(bus.subjects.stream_events, subject)
        except NotFoundError:
            return None

    async def probe():
        msg = await last(bus.subjects.result("client", task_id))
        return result_decoder.decode(msg.data) if msg else None

    result = await wait_for_value(probe, timeout, interval=0.1, what=f"the final result of {task_id}")

    async def final_event():
        return await last(bus.subjects.events("client", task_id, result.status))

    await wait_for_value(
        final_event, timeout, interval=0.05, what=f"the final {result.status} event of {task_id}"
    )
    return result


async def task_events(bus, task_id: str) -> list:
    """Every stored event of a task, in order."""
    from shared.contract.protocol import event_decoder

    return await stream_messages(
        bus.js, bus.subjects.stream_events, bus.subjects.events_of("client", task_id), event_decoder
    )


class StepFeed:
    """Reads step messages through the orchestrator's durable consumer (as the orchestrator would).

    Every message fetched is acked and kept in ``messages``, so one feed serves several waits.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.messages: list[StepStarted | StepResult] = []
        self._sub: JetStreamContext.PullSubscription | None = None

    async def _pull(self) -> None:
        if self._sub is None:
            s = self.bus.subjects
            self._sub = await self.bus.js.pull_subscribe_bind(
                durable=s.results_consumer, stream=s.stream_results
            )
        with contextlib.suppress(NatsTimeout, TimeoutError):
            for msg in await self._sub.fetch(10, timeout=0.2):
                self.messages.append(step_decoder.decode(msg.data))
                await msg.ack()

    async def wait(
        self, pred: Callable[[StepStarted | StepResult], bool], what: str, timeout: float = 30.0
    ) -> list[StepStarted | StepResult]:
        """The messages so far that satisfy ``pred``, once there is at least one."""

        async def probe() -> list[StepStarted | StepResult] | None:
            await self._pull()
            return [m for m in self.messages if pred(m)] or None

        return await wait_for_value(probe, timeout, what=what)

    async def result(self, step: str, timeout: float = 60.0) -> StepResult:
        """The first result of ``step``."""
        found = await self.wait(
            lambda m: isinstance(m, StepResult) and m.step_id == step, f"the result of step {step}", timeout
        )
        assert isinstance(found[0], StepResult)
        return found[0]

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


async def step_result(bus: Bus, step: str, timeout: float = 60.0) -> StepResult:
    """One step's result through a fresh ``StepFeed`` (closed afterwards)."""
    feed = StepFeed(bus)
    try:
        return await feed.result(step, timeout)
    finally:
        await feed.close()


def default_inputs(role: str, task_type: str) -> StepInputs:
    """The inputs kind the orchestrator gives such a step, empty (a review: threshold 90)."""
    if role == "reviewer":
        return ReviewInputs(threshold=90)
    if role == "developer":
        return FixInputs() if task_type == "fix" else DevelopInputs()
    return ResearchInputs()


def make_item(
    role: str,
    task_type: str,
    step: str,
    *,
    task_id: str,
    description: str,
    deadline_in: float = 60.0,
    input_data: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    workspace: ArtifactRef | None = None,
    inputs: StepInputs | None = None,
) -> WorkItem:
    """A first-attempt work item for ``role``, as the orchestrator would send it.

    ``inputs``: the typed step inputs; by default the empty ones of the step's kind.
    """
    return WorkItem(
        message_id=new_id("msg"),
        to_agent=role,  # type: ignore[arg-type]
        task_type=task_type,
        task=TaskBody(description=description, input_data=dict(input_data or {})),
        context=dict(context or {}),
        task_id=task_id,
        step_id=step,
        attempt=1,
        deadline=now() + deadline_in,
        created_at=now(),
        workspace=workspace,
        inputs=inputs if inputs is not None else default_inputs(role, task_type),
    )


def feature_task(script: dict | None = None, task_type: str = "feature"):
    """The spec's example task ("Build user authentication API"), steered by a scripted-brain ``script``."""
    from shared.contract.protocol import ExpectedOutput, TaskBody, TaskSubmission, new_id, now

    return TaskSubmission(
        message_id=new_id("msg"),
        task_id=new_id("task"),
        task_type=task_type,
        priority="high",
        context={"project": "auth-api", "language": "python", "framework": "fastapi"},
        task=TaskBody(
            description="Build user authentication API",
            requirements=["Access token (15min)", "Refresh token (7 days)", "Rate limiting"],
            input_data={"script": script or {}},
        ),
        expected_output=ExpectedOutput(
            files=["auth.py", "test_auth.py"], tests="all passing", coverage=">80%"
        ),
        created_at=now(),
    )
