"""Validation at the door, end to end: each bad submission gets a `rejected` answer and a dead letter.

A real orchestrator process on a real nats-server (no agents: nothing here
gets past intake). Each test submits one kind of bad input as a client would,
then reads the refusal where its sender reads it and the dead-letter record
with the same reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from typing import Any

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError, NotFoundError

from services.orchestrator.state import state_decoder
from shared.bus import uploads
from shared.bus.core import Bus
from shared.client import CadreClient
from shared.client.cli.settings import StackSettings
from shared.contract.protocol import (
    ArtifactRef,
    DeadLetter,
    FinalResult,
    TaskBody,
    TaskSubmission,
    dead_letter_decoder,
    encode,
    event_decoder,
    new_id,
    result_decoder,
)
from shared.contract.workspace import pack_files
from shared.embedded.launcher import Stack
from tests.helpers import await_result, stream_messages, task_events, wait_for_value


def submission(**fields: Any) -> TaskSubmission:
    base: dict[str, Any] = {
        "message_id": new_id("msg"),
        "task_id": new_id("task"),
        "task_type": "research",
        "task": TaskBody(description="Research JWT refresh tokens"),
    }
    base.update(fields)
    return TaskSubmission(**base)


async def publish_raw(bus: Bus, payload: bytes) -> None:
    await bus.js.publish(bus.subjects.task_submit("client"), payload)


async def refusal(bus: Bus, message_id: str, timeout: float = 30.0) -> FinalResult:
    """The refusal its sender reads on ``refused.<message_id>``."""

    async def probe() -> FinalResult | None:
        try:
            msg = await bus.js.get_last_msg(
                bus.subjects.stream_events, bus.subjects.refused("client", message_id)
            )
        except NotFoundError:
            return None
        return result_decoder.decode(msg.data)

    return await wait_for_value(probe, timeout, what=f"the refusal of {message_id}")


async def dead_letter(bus: Bus, needle: str, timeout: float = 30.0) -> DeadLetter:
    """The orchestrator's dead letter whose payload contains ``needle``."""
    s = bus.subjects

    async def probe() -> DeadLetter | None:
        letters = await stream_messages(
            bus.js, s.stream_dead_letters, s.dead_letter("orchestrator"), dead_letter_decoder
        )
        return next((d for d in letters if needle in d.payload), None)

    return await wait_for_value(probe, timeout, what=f"a dead letter holding {needle!r}")


async def rejected_with(bus: Bus, task: TaskSubmission, words: str) -> FinalResult:
    """The task's own rejected result (its id is free) and its dead letter, both naming ``words``."""
    result = await await_result(bus, task.task_id, timeout=30)
    assert result.status == "rejected" and not result.approved
    assert words in result.reason, result.reason
    letter = await dead_letter(bus, task.message_id)
    assert letter.reason == result.reason
    events = await task_events(bus, task.task_id)
    assert [e.kind for e in events] == ["rejected"]
    print(f"REJECTED {task.task_id}: {result.reason}")
    return result


def _bomb(size: int, files: int = 1) -> bytes:
    """A tar.gz of ``files`` files of zeros, ``size`` bytes each: small packed, large unpacked."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for n in range(files):
            info = tarfile.TarInfo(f"zeros{n}.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return gzip.compress(raw.getvalue(), mtime=0)


def _bomb_stream(size: int) -> bytes:
    """The same as ``_bomb(size)`` without holding ``size`` bytes in memory at once."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        gz.write(info.tobuf())
        chunk = bytes(1024 * 1024)
        left = size
        while left > 0:
            gz.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        gz.write(bytes(1024))  # end-of-archive blocks
    return out.getvalue()


@pytest.fixture
def intake(stack: Stack) -> Stack:
    stack.add("orchestrator", max_workspace_files=50, max_workspace_bytes=512 * 1024)
    return stack


# --- sizes ---------------------------------------------------------------------------------------


async def test_a_40_kb_description_is_rejected_at_the_door_with_a_dead_letter(
    bus: Bus, intake: Stack
) -> None:
    task = submission(task=TaskBody(description="x" * 40_000))
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, task, "task.description is 40000 bytes; the limit is 8192")


async def test_too_many_or_too_long_requirements_are_rejected(bus: Bus, intake: Stack) -> None:
    many = submission(task=TaskBody(description="d", requirements=["r"] * 101))
    long = submission(task=TaskBody(description="d", requirements=["ok", "y" * 3000]))
    for task in (many, long):
        await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, many, "task.requirements has 101 entries; the limit is 100")
    await rejected_with(bus, long, "task.requirements[1] is 3000 bytes; the limit is 2048")


async def test_deeply_nested_input_is_rejected_and_a_decoder_stack_overflow_too(
    bus: Bus, intake: Stack
) -> None:
    nested: Any = 1
    for _ in range(40):
        nested = {"a": nested}
    deep = submission(task=TaskBody(description="d", input_data={"x": nested}))
    await bus.publish(bus.subjects.task_submit("client"), deep, msg_id=deep.message_id)
    await rejected_with(bus, deep, "task.input_data is nested 41 levels deep; the limit is 16")
    # deeper than the JSON decoder itself goes: no id can be read, so a dead letter only (once,
    # not redelivered forever), and intake goes on serving the next submission
    payload = (
        b'{"type":"task","message_id":"msg_overflow","task_id":"task_overflow",'
        b'"task":{"description":"d","input_data":' + b'{"a":' * 20_000 + b"1" + b"}" * 20_001 + b"}"
    )
    await publish_raw(bus, payload)
    letter = await dead_letter(bus, "msg_overflow")
    assert "nested too deeply" in letter.reason, letter.reason
    after = submission(task=TaskBody(description=""))
    await bus.publish(bus.subjects.task_submit("client"), after, msg_id=after.message_id)
    await rejected_with(bus, after, "task.description is empty")
    s = bus.subjects
    letters = await stream_messages(
        bus.js, s.stream_dead_letters, s.dead_letter("orchestrator"), dead_letter_decoder
    )
    assert sum("msg_overflow" in d.payload for d in letters) == 1


async def test_large_input_data_is_rejected(bus: Bus, intake: Stack) -> None:
    task = submission(task=TaskBody(description="d", input_data={"blob": "z" * 300_000}))
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, task, "bytes of JSON; the limit is 65536")


# --- workspaces ------------------------------------------------------------------------------------


async def test_a_decompression_bomb_is_refused_at_intake_before_it_is_unpacked(
    bus: Bus, intake: Stack
) -> None:
    data = _bomb_stream(200 * 1024 * 1024)  # 200 MiB of zeros
    assert len(data) < 512 * 1024  # packed, it is under the packed limit
    ref = await bus.put_artifact(data)
    task = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    result = await rejected_with(bus, task, "workspace")
    assert "unpacks to more than 67108864 bytes" in result.reason


async def test_a_workspace_with_too_many_files_is_refused(bus: Bus, intake: Stack) -> None:
    ref = await bus.put_artifact(pack_files({f"f{n}.py": "" for n in range(51)}))
    task = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, task, "workspace has more than 50 files")


async def test_a_workspace_over_the_packed_limit_is_refused_before_download(bus: Bus, intake: Stack) -> None:
    ref = await bus.put_artifact(_bomb(600 * 1024) + bytes(600 * 1024))
    task = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, task, "; the limit is 524288")


async def test_a_workspace_whose_content_does_not_hash_to_its_name_is_refused(
    bus: Bus, intake: Stack
) -> None:
    genuine = pack_files({"app.py": "print('mine')\n"})
    name = hashlib.sha256(genuine).hexdigest()
    store = await bus.store()
    await store.put(name, pack_files({"app.py": "print('replaced')\n"}))  # an object replaced under its name
    ref = ArtifactRef(name=name, size=len(genuine), sha256=name)
    task = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, task, "does not hash to its name")


async def test_a_workspace_not_named_by_its_hash_is_refused(bus: Bus, intake: Stack) -> None:
    ref = await bus.put_artifact(pack_files({"app.py": "x = 1\n"}))
    task = submission(
        task_type="review", workspace=ArtifactRef(name="../other", size=ref.size, sha256=ref.sha256)
    )
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, task, "is not named by its sha256")


# --- ids -------------------------------------------------------------------------------------------


async def test_a_task_id_over_128_characters_is_refused_not_cut(bus: Bus, intake: Stack) -> None:
    long_id = "t" * 129
    task = submission(task_id=long_id)
    await publish_raw(bus, encode(task))
    refused = await refusal(bus, task.message_id)
    assert refused.status == "rejected" and "$.task_id" in refused.reason and "128" in refused.reason
    letter = await dead_letter(bus, task.message_id)
    assert letter.reason == refused.reason
    for cut in (long_id[:120], long_id[:128]):  # nothing answered under a shortened id
        with pytest.raises(NotFoundError):
            await bus.js.get_last_msg(bus.subjects.stream_events, bus.subjects.result("client", cut))


async def test_a_task_id_with_a_dot_is_refused_not_rewritten(bus: Bus, intake: Stack) -> None:
    task = submission(task_id="a.b")
    await publish_raw(bus, encode(task))
    refused = await refusal(bus, task.message_id)
    assert "$.task_id" in refused.reason and "regex" in refused.reason
    await dead_letter(bus, task.message_id)
    with pytest.raises(NotFoundError):
        await bus.js.get_last_msg(bus.subjects.stream_events, bus.subjects.result("client", "a_b"))


async def test_an_empty_message_id_is_refused_for_every_such_task(bus: Bus, intake: Stack) -> None:
    first = submission(message_id="", task_id="task_empty_mid_1")
    second = submission(message_id="", task_id="task_empty_mid_2")
    for task in (first, second):
        await publish_raw(bus, encode(task))
    for task in (first, second):  # each its own answer: no shared `task_` id, nothing dropped
        result = await await_result(bus, task.task_id, timeout=30)
        assert result.status == "rejected" and "$.message_id" in result.reason
        await dead_letter(bus, task.task_id)
    anonymous = submission(message_id="", task_id="")
    await publish_raw(bus, encode(anonymous))
    letter = await dead_letter(bus, '"message_id":"","task_id":""')
    assert "$.message_id" in letter.reason
    with pytest.raises(NotFoundError):
        await bus.js.get_last_msg(bus.subjects.stream_events, bus.subjects.result("client", "task_"))


async def test_a_reused_task_id_is_refused_to_its_sender_without_touching_the_first_task(
    bus: Bus, intake: Stack
) -> None:
    first = submission()
    await bus.publish(bus.subjects.task_submit("client"), first, msg_id=first.message_id)
    await wait_for_value(
        lambda: _has_event(bus, first.task_id, "delegated"), 30, what="the first task running"
    )
    second = submission(task_id=first.task_id, task=TaskBody(description="someone else's task"))
    await bus.publish(bus.subjects.task_submit("client"), second, msg_id=second.message_id)
    refused = await refusal(bus, second.message_id)
    assert refused.status == "rejected"
    assert f"task id {first.task_id!r} is already used by another submission" in refused.reason
    assert first.message_id in refused.reason
    letter = await dead_letter(bus, second.message_id)
    assert letter.reason == refused.reason
    # the first task is untouched: still running, no result, no rejected event
    with pytest.raises(NotFoundError):
        await bus.js.get_last_msg(bus.subjects.stream_events, bus.subjects.result("client", first.task_id))
    kinds = [e.kind for e in await task_events(bus, first.task_id)]
    assert "rejected" not in kinds and kinds.count("received") == 1


async def test_the_client_sdk_reads_the_refusal_of_its_reused_task_id(
    bus: Bus, intake: Stack, settings: StackSettings
) -> None:
    first = submission()
    await bus.publish(bus.subjects.task_submit("client"), first, msg_id=first.message_id)
    await wait_for_value(
        lambda: _has_event(bus, first.task_id, "delegated"), 30, what="the first task running"
    )
    async with CadreClient.connect(settings) as client:
        tid = await client.submit(submission(task_id=first.task_id, message_id=""))
        result = await client.result(tid, timeout=30)
        assert tid == first.task_id
        assert result.status == "rejected" and "already used by another submission" in result.reason
        final = [e async for e in client.events(tid, timeout=30)][-1]  # what `cadre submit --wait` follows
        assert final.kind == "rejected" and final.detail == result.reason


async def test_cancelling_a_wildcard_an_empty_or_a_dotted_task_id_is_a_clear_refusal(
    bus: Bus, intake: Stack, settings: StackSettings
) -> None:
    async with CadreClient.connect(settings) as client:
        await wait_for_value(lambda: _services(client), 30, what="the orchestrator's cancel endpoint")
        for bad, why in (("*", "not a task id"), ("", "empty task id"), ("a.b", "not a task id")):
            reply = await client.cancel(bad)
            assert not reply.accepted and why in reply.reason, reply


async def _services(client: CadreClient) -> bool:
    return bool(await client.services(wait=0.3, names=["cadre-orchestrator"]))


async def _has_event(bus: Bus, task_id: str, kind: str) -> bool:
    return kind in [e.kind for e in await task_events(bus, task_id)]


# --- client uploads (the uploads stream, per client name) ------------------------------------------


async def test_an_uploaded_workspace_is_checked_and_copied_into_the_object_store(
    bus: Bus, intake: Stack
) -> None:
    data = pack_files({"app.py": "print('hello')\n"})
    ref = await uploads.upload(bus, data, description="my workspace")
    assert (ref.uploaded_by, ref.chunks, ref.name) == ("client", 1, hashlib.sha256(data).hexdigest())
    task = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await wait_for_value(lambda: _has_event(bus, task.task_id, "delegated"), 30, what="the review delegated")
    kv = await bus.workflows()
    entry = await kv.get(task.task_id)
    st = state_decoder.decode(entry.value or b"")
    stored = st.submission.workspace
    assert stored is not None and stored.uploaded_by == "" and stored.sha256 == ref.sha256
    assert await bus.get_artifact(stored) == data  # the agents read this copy


async def test_an_uploaded_bomb_is_refused(bus: Bus, intake: Stack) -> None:
    ref = await uploads.upload(bus, _bomb_stream(200 * 1024 * 1024))
    task = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, task, "unpacks to more than 67108864 bytes")


async def test_an_upload_replaced_after_it_was_sent_is_refused(bus: Bus, intake: Stack) -> None:
    data = pack_files({"app.py": "print('mine')\n"})
    ref = await uploads.upload(bus, data)
    evil = bytearray(data)
    evil[len(evil) // 2] ^= 0xFF  # the same subject, the same size, other bytes
    await bus.js.publish(bus.subjects.upload("client", ref.sha256, 0), bytes(evil))
    task = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, task, "does not hash to its name")


async def test_an_upload_that_is_missing_or_miscounted_is_refused(bus: Bus, intake: Stack) -> None:
    unsent = pack_files({"app.py": "never sent\n"})
    digest = hashlib.sha256(unsent).hexdigest()
    never_sent = ArtifactRef(name=digest, size=len(unsent), sha256=digest, uploaded_by="client", chunks=1)
    miscounted = msgspec.structs.replace(
        await uploads.upload(bus, pack_files({"app.py": "x = 1\n"})), chunks=3
    )
    missing = submission(task_type="review", workspace=never_sent)
    wrong = submission(task_type="review", workspace=miscounted)
    for task in (missing, wrong):
        await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    await rejected_with(bus, missing, "is missing chunk 0 of 1")
    await rejected_with(bus, wrong, "come in 1 chunks, not 3")


async def test_a_workspace_uploaded_under_another_clients_name_is_refused_and_the_client_comes_from_the_subject(
    bus: Bus, intake: Stack
) -> None:
    data = pack_files({"secret.py": "TOKEN = 'alice only'\n"})
    digest = hashlib.sha256(data).hexdigest()
    await bus.js.publish(bus.subjects.upload("alice", digest, 0), data)  # alice's upload
    ref = ArtifactRef(name=digest, size=len(data), sha256=digest, uploaded_by="alice", chunks=1)
    stolen = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("client"), stolen, msg_id=stolen.message_id)
    await rejected_with(bus, stolen, "names an upload of another client")
    # submitted under alice's name, the same reference is hers: accepted, and recorded as hers
    own = submission(task_type="review", workspace=ref)
    await bus.publish(bus.subjects.task_submit("alice"), own, msg_id=own.message_id)
    kv = await bus.workflows()

    async def accepted() -> Any:
        try:
            return state_decoder.decode((await kv.get(own.task_id)).value or b"")
        except KeyNotFoundError:
            return None

    st = await wait_for_value(accepted, 30, what="alice's task accepted")
    assert st.client == "alice"

    async def hers() -> Any:
        subject = bus.subjects.events_of("alice", own.task_id)
        return await stream_messages(bus.js, bus.subjects.stream_events, subject, event_decoder) or None

    assert (await wait_for_value(hers, 30, what="alice's events"))[0].kind == "received"
    assert await task_events(bus, own.task_id) == []  # nothing of hers under the name `client`


async def test_a_full_uploads_stream_refuses_the_next_upload_and_keeps_the_pending_ones(
    settings: StackSettings,
) -> None:
    # every size has a limit: the uploads stream is capped, and when full it refuses new
    # uploads (their sender is told) rather than evicting another client's pending upload
    small = settings.model_copy(update={"prefix": settings.prefix + "u", "uploads_max_bytes": 256 * 1024})
    async with await Bus.open(small, "test-client") as bus:
        first = bytes(range(256)) * 600  # 150 KiB: fits
        ref = await uploads.upload(bus, first)
        with pytest.raises(uploads.UploadFailed, match="refused chunk"):
            await uploads.upload(bus, bytes(reversed(first)))
        assert await uploads.fetch(bus, ref, 10 * 1024 * 1024) == first
