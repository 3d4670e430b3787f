"""Validation at the door: what a submission must satisfy before it becomes a workflow.

Ids and field shapes are checked by the typed decoder (``shared.contract.protocol``
``Meta`` constraints). Here come the checks a decoder cannot make: sizes of
the description, requirements and inputs, nesting depth, the workspace
archive (named by its hash, packed size, unpacked size and file count, counted
while reading), and a task id already taken by another submission.

Every refusal is a ``Refused`` with a reason a user can act on; ``refuse``
turns it into a dead letter plus a ``rejected`` answer the sender can read
(see docs/security.md and docs/wire-protocol.md "Refusals").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from services.orchestrator.settings import OrchestratorSettings
from shared.bus import uploads
from shared.bus.consumer import DECODE_ERRORS
from shared.bus.core import ArtifactRefused, Bus, check_artifact_ref
from shared.contract.protocol import BoundedDecoder, FinalResult, TaskEvent, TaskSubmission, now
from shared.contract.subjects import token
from shared.contract.workspace import UnpackLimits, WorkspaceRefused, inspect

__all__ = ["Limits", "Refused", "check_submission", "check_workspace", "check_task_id", "refuse"]

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()


class Refused(ValueError):
    """A submission the orchestrator will not run, with the reason for its sender."""


@dataclass(frozen=True)
class Limits:
    """The intake limits, from the settings (``CADRE_MAX_*``)."""

    description_bytes: int
    requirements: int
    requirement_bytes: int
    input_bytes: int
    input_depth: int
    workspace: UnpackLimits

    @classmethod
    def from_settings(cls, s: OrchestratorSettings) -> Limits:
        return cls(
            description_bytes=s.max_description_bytes,
            requirements=s.max_requirements,
            requirement_bytes=s.max_requirement_bytes,
            input_bytes=s.max_input_bytes,
            input_depth=s.max_input_depth,
            workspace=UnpackLimits.from_settings(s),
        )


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_submission(sub: TaskSubmission, limits: Limits) -> None:
    """Refuse a submission whose description, requirements or inputs are over the limits."""
    size = len(sub.task.description.encode())
    if size > limits.description_bytes:
        raise Refused(f"task.description is {size} bytes; the limit is {limits.description_bytes}")
    if not sub.task.description.strip():
        raise Refused("task.description is empty: say what the task is")
    if len(sub.task.requirements) > limits.requirements:
        raise Refused(
            f"task.requirements has {len(sub.task.requirements)} entries; the limit is {limits.requirements}"
        )
    for n, req in enumerate(sub.task.requirements):
        size = len(req.encode())
        if size > limits.requirement_bytes:
            raise Refused(f"task.requirements[{n}] is {size} bytes; the limit is {limits.requirement_bytes}")
    for name, value in (("task.input_data", sub.task.input_data), ("context", sub.context)):
        depth = _depth(value)
        if depth > limits.input_depth:
            raise Refused(f"{name} is nested {depth} levels deep; the limit is {limits.input_depth}")
    size = len(_encoder.encode(sub.task.input_data)) + len(_encoder.encode(sub.context))
    if size > limits.input_bytes:
        raise Refused(
            f"task.input_data and context are {size} bytes of JSON; the limit is {limits.input_bytes}"
        )
    files = sub.task.input_data.get("files")  # user data: inline files, packed as the workspace
    if isinstance(files, dict) and len(files) > limits.workspace.max_files:
        raise Refused(
            f"task.input_data.files has {len(files)} files; the limit is {limits.workspace.max_files}"
        )


async def check_workspace(bus: Bus, sub: TaskSubmission, limits: Limits, client: str) -> TaskSubmission:
    """Refuse a workspace not named by its hash, missing, or over the archive limits.

    The stored size is checked before anything is downloaded; the archive is
    then read once, counting files and bytes, and stops at the first limit.
    A client's upload (``shared.bus.uploads``) is copied into the object store for
    the agents: the submission returned names that copy. Only ``client``'s own
    uploads are taken (the client the submission's subject names).
    """
    ref = sub.workspace
    if ref is None:
        return sub
    if ref.uploaded_by and ref.uploaded_by != client:
        raise Refused(
            f"workspace {ref.name[:80]} names an upload of another client: a client submits "
            f"only its own uploads (upload it as {client!r})"
        )
    if ref.uploaded_by:
        try:
            data = await uploads.fetch(bus, ref, limits.workspace.max_packed_bytes)
            stats = await asyncio.to_thread(inspect, data, limits.workspace)
        except (ArtifactRefused, WorkspaceRefused) as exc:
            raise Refused(f"workspace refused: {exc}") from exc
        stored = await bus.put_artifact(data, content_type=ref.content_type, description=ref.description)
        logger.debug("upload admitted name=%s by=%s files=%d", ref.name, ref.uploaded_by, stats.files)
        return msgspec.structs.replace(sub, workspace=stored)
    try:
        check_artifact_ref(ref, max_bytes=limits.workspace.max_packed_bytes)
        store = await bus.store()
        info = await store.get_info(ref.name)
    except ArtifactRefused as exc:
        raise Refused(f"workspace refused: {exc}") from exc
    except NotFoundError as exc:
        raise Refused(
            f"workspace {ref.name} is not in the object store: upload it before submitting"
        ) from exc
    if (info.size or 0) > limits.workspace.max_packed_bytes:
        raise Refused(
            f"workspace archive is {info.size} bytes; the limit is {limits.workspace.max_packed_bytes}"
        )
    try:
        data = await bus.get_artifact(ref)  # checks the content against its name
        stats = await asyncio.to_thread(inspect, data, limits.workspace)
    except (ArtifactRefused, WorkspaceRefused) as exc:
        raise Refused(f"workspace refused: {exc}") from exc
    logger.debug("workspace admitted name=%s files=%d bytes=%d", ref.name, stats.files, stats.unpacked_bytes)
    return sub


async def check_task_id(kv: KeyValue, sub: TaskSubmission, client: str) -> bool:
    """True when this task id is free; False for a re-publish of the same submission.

    Raises ``Refused`` when another submission (another message id, or another
    client) holds the task id: task ids are unique across clients, and a sender
    must never read another task's result.
    """
    try:
        entry = await kv.get(sub.task_id)
    except KeyNotFoundError:
        return True
    holder = _holder(entry.value)
    if holder == (client, sub.message_id):
        return False
    # another client's message id is not named: it is that client's business
    other = f"message_id {holder[1]!r}" if holder[0] == client else "another client"
    raise Refused(
        f"task id {sub.task_id!r} is already used by another submission ({other}): "
        "choose a new task id, or leave it empty to get one"
    )


class _HolderSub(msgspec.Struct):
    message_id: str = ""


class _Holder(msgspec.Struct):
    submission: _HolderSub
    client: str = "client"


_holder_decoder = msgspec.json.Decoder(_Holder)


def _holder(state: bytes | None) -> tuple[str, str]:
    """The client and message id of the submission a stored workflow belongs to (only those are decoded)."""
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        held = _holder_decoder.decode(state or b"")
        return held.client, held.submission.message_id
    return "?", "?"


class _LooseIds(msgspec.Struct):
    message_id: Any = None
    task_id: Any = None


_loose_decoder: BoundedDecoder[_LooseIds] = BoundedDecoder(_LooseIds)


def _valid_id(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 128:
        return None
    try:
        return token(value)
    except ValueError:
        return None


async def _task_is_free(bus: Bus, kv: KeyValue, client: str, task_id: str, message_id: str | None) -> bool:
    """True when answering on ``result.<client>.<task_id>`` cannot stand for another submission's task."""
    try:
        entry = await kv.get(task_id)
    except KeyNotFoundError:
        entry = None
    if entry is not None:
        return _holder(entry.value) == (client, message_id)
    try:  # a task whose workflow was purged keeps its id while its result is stored (any client's)
        await bus.js.get_last_msg(bus.subjects.stream_events, bus.subjects.result_any(task_id))
    except NotFoundError:
        return True
    return False


async def refuse(
    bus: Bus,
    kv: KeyValue,
    msg: Msg,
    reason: str,
    *,
    task_id: str | None = None,
    sub: TaskSubmission | None = None,
    dead_letter: bool = True,
) -> None:
    """Dead-letter a refused submission (unless the caller did) and answer its sender.

    The answer is a ``FinalResult`` with status ``rejected``, under the client
    the submission's subject names: always on ``refused.<client>.<message_id>``
    when the message id is usable, and also as the task's own ``rejected``
    event and ``result.<client>.<task_id>`` when that task id is free (never
    over another submission's task).
    """
    if dead_letter:
        await bus.dead_letter("orchestrator", msg.subject, msg.data, reason, dict(msg.headers or {}))
    client = bus.subjects.client_of(msg.subject)
    if client is None:
        logger.warning("rejected a task from no client's subject %s: %s", msg.subject[:200], reason)
        return
    message_id = sub.message_id if sub else None
    if sub is None:
        with contextlib.suppress(*DECODE_ERRORS):
            loose = _loose_decoder.decode(msg.data)
            message_id = _valid_id(loose.message_id)
            if loose.task_id:  # the id the sender chose, or none (never another one in its place)
                task_id = _valid_id(loose.task_id)
            elif message_id:
                task_id = _valid_id(f"task_{message_id}")
    task_id = _valid_id(task_id)
    if task_id is None and message_id is None:
        logger.warning("rejected a task with no usable id: %s", reason)
        return
    s = bus.subjects
    at = now()
    result = FinalResult(
        task_id=task_id or "",
        status="rejected",
        approved=False,
        reason=reason,
        description=sub.task.description if sub else "",
        task_type=sub.task_type if sub else "",
        started_at=at,
        finished_at=at,
    )
    if message_id is not None:
        await bus.publish(s.refused(client, message_id), result, msg_id=f"refused.{client}.{message_id}")
    if task_id is not None and await _task_is_free(bus, kv, client, task_id, message_id):
        # the result first, then the final event: a reader that saw the event finds the result
        await bus.publish(s.result(client, task_id), result, msg_id=f"{task_id}.result")
        event = TaskEvent(
            task_id=task_id,
            kind="rejected",
            text=f"[Orchestrator] Task rejected: {reason}",
            at=at,
            seq=1,
            detail=reason,
        )
        await bus.publish(s.events(client, task_id, "rejected"), event, msg_id=f"{task_id}.rejected")
    logger.warning(
        "task rejected client=%s task=%s message_id=%s reason=%s", client, task_id, message_id, reason
    )
