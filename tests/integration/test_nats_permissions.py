"""Least privilege, proven against a real nats-server running deploy/nats/nats.conf.

Every refusal is checked twice: the client gets the server's
"permissions violation" error, and the server logs the violation for that
user. Each case is its own test, so ``pytest -v`` lists the whole matrix.
The last test runs every service under its own user (bootstrap off) through
a whole task and asserts the server logged not one violation: the allow
lists are not only tight but sufficient.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError

from shared.bus import downloads, uploads
from shared.bus.bootstrap import bootstrap
from shared.bus.core import Bus
from shared.client import CadreClient, NoService, PermissionDenied
from shared.client.cli.settings import StackSettings
from shared.contract.errors import CadreError, TaskNotFound
from shared.contract.monitoring import AgentStatus, Snapshot
from shared.contract.protocol import (
    AGENT_ROLES,
    CancelRequest,
    Heartbeat,
    StepResult,
    Timings,
    encode,
    heartbeat_decoder,
    new_id,
    now,
)
from shared.contract.workspace import pack_files
from shared.embedded.launcher import Stack
from shared.embedded.natsserver import NatsServer
from tests.helpers import feature_task, wait_for_value

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nats" / "nats.conf"
USERS = ("bootstrap", "orchestrator", "researcher", "developer", "reviewer", "monitor", "operator", "client")
SERVICES = ("orchestrator", *AGENT_ROLES, "monitor")
_CLIENT_TOKEN = re.compile(r"(?<![A-Za-z0-9])client(?![A-Za-z0-9])")
CONSUMERS = [
    ("researcher", "CADRE_WORK", "researcher-high"),
    ("developer", "CADRE_WORK", "developer-normal"),
    ("reviewer", "CADRE_WORK", "reviewer-low"),
    ("orchestrator", "CADRE_TASKS", "orchestrator-intake"),
]


@dataclass
class Deployment:
    server: NatsServer
    passwords: dict[str, str]

    def settings(self, user: str, **overrides: object) -> StackSettings:
        """Settings of every service for one user: its password, its own inbox prefix, bootstrap off."""
        return StackSettings(
            nats_url=self.server.url,
            nats_user=user,
            nats_password=self.passwords[user],
            inbox_prefix=f"_INBOX_{user}",
            bootstrap=False,
            **overrides,  # type: ignore[arg-type]
        )

    def violation_logged(self, user: str, kind: str, subject: str) -> str | None:
        what = "Publish Violation" if kind == "publish" else "Subscription Violation"
        needle = f'"CADRE/user:{user}" - {what} - Subject "{subject}"'
        return next((line for line in self.server.log if needle in line), None)


@dataclass
class Conn:
    user: str
    nc: NATS
    errors: list[Exception] = field(default_factory=list)


@pytest.fixture(scope="module")
async def deployment() -> AsyncIterator[Deployment]:
    passwords = {u: "pw" + secrets.token_hex(16) for u in USERS}
    with pytest.MonkeyPatch.context() as mp:
        for user, password in passwords.items():
            mp.setenv(f"CADRE_PW_{user.upper()}", password)
        # -m -1: the config's monitoring port, moved to a free one (tests never use fixed ports)
        server = NatsServer(config=CONF, extra_args=["-m", "-1"]).start()
    dep = Deployment(server, passwords)
    try:
        await bootstrap(dep.settings("bootstrap"), deadline=10)
        yield dep
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def conns(deployment: Deployment) -> AsyncIterator[dict[str, Conn]]:
    out: dict[str, Conn] = {}
    for user in USERS:
        conn = Conn(user, None)  # type: ignore[arg-type]

        async def on_error(err: Exception, conn: Conn = conn) -> None:
            conn.errors.append(err)

        conn.nc = await nats.connect(
            [deployment.server.url],
            user=user,
            password=deployment.passwords[user],
            inbox_prefix=f"_INBOX_{user}",
            error_cb=on_error,
            allow_reconnect=False,
        )
        out[user] = conn
    try:
        yield out
    finally:
        for conn in out.values():
            await conn.nc.close()


async def refusal(dep: Deployment, conn: Conn, kind: str, subject: str) -> str:
    """Try one publish or subscribe; return the error the client got (fails if none came)."""
    seen = len(conn.errors)
    if kind == "publish":
        await conn.nc.publish(subject, b"{}")
    else:
        await conn.nc.subscribe(subject)
    await conn.nc.flush()
    verb = "publish to" if kind == "publish" else "subscription to"
    expected = f'permissions violation for {verb} "{subject}"'.lower()

    async def client_error() -> str | None:
        return next((str(e) for e in conn.errors[seen:] if expected in str(e).lower()), None)

    error = await wait_for_value(client_error, timeout=5, what=f"{conn.user}: refusal of {kind} {subject}")

    async def server_line() -> str | None:
        return dep.violation_logged(conn.user, kind, subject)

    line = await wait_for_value(server_line, timeout=5, what="the server's violation log line")
    print(
        f"REFUSED {conn.user:12} {kind:9} {subject}\n  client: {error}\n  server: {line.split('] ', 1)[-1]}"
    )
    return error


def _cases() -> list[tuple[str, str, str]]:
    cases: list[tuple[str, str, str]] = []
    others = {r: [o for o in AGENT_ROLES if o != r] for r in AGENT_ROLES}
    for role in AGENT_ROLES:
        for other in others[role]:
            cases += [
                (role, "publish", f"$JS.API.CONSUMER.MSG.NEXT.CADRE_WORK.{other}-high"),
                (role, "publish", f"$JS.ACK.CADRE_WORK.{other}-normal.1.1.1.1.0"),
                (role, "publish", f"cadre.heartbeat.{other}.{other}-1"),
                (role, "publish", f"cadre.step.result.{other}.task_x"),  # a result for another role
                (role, "publish", f"cadre.metrics.{other}"),
                (role, "subscribe", f"cadre.work.{other}.high"),
                (role, "subscribe", f"_INBOX_{other}.>"),
            ]
        cases += [
            (role, "publish", "cadre.work.developer.high"),  # agents cannot inject work
            (role, "publish", "cadre.result.client.task_x"),
            (role, "publish", "cadre.events.client.task_x.completed"),
            (role, "publish", "$KV.CADRE_workflows.task_x"),  # only the orchestrator holds workflow state
            (role, "publish", "cadre.step.result.task_x"),  # the old role-less subject
            (role, "publish", "cadre.refused.client.msg_x"),
            (role, "publish", "cadre.upload.client.0a1b.0"),  # no agent may forge a client's upload
            (role, "publish", "cadre.download.client.0a1b.0"),  # nor a client's download
        ]
    for user in SERVICES + ("operator", "client"):
        cases += [
            (user, "subscribe", "_INBOX.>"),
            (user, "publish", "_INBOX.x"),
            (user, "publish", "$JS.API.STREAM.DELETE.CADRE_WORK"),
            (user, "publish", "$JS.API.STREAM.CREATE.CADRE_ROGUE"),
            (user, "publish", "$JS.API.STREAM.UPDATE.CADRE_TASKS"),
            (user, "publish", "$JS.API.STREAM.PURGE.CADRE_EVENTS"),
            (user, "publish", "$JS.API.CONSUMER.DELETE.CADRE_WORK.developer-high"),
        ]
    cases += [
        # the client cannot act as an agent or as the orchestrator
        ("client", "publish", "cadre.step.result.task_x"),
        ("client", "publish", "cadre.step.result.reviewer.task_x"),
        ("client", "publish", "cadre.refused.client.msg_x"),
        # artifacts: a client has no access to the object store at all (it reads its results'
        # artifacts from its own downloads), may not read the uploads stream, nor upload or
        # download under another client's name, nor forge a download
        ("client", "publish", "$O.CADRE_artifacts.M.bmFtZQ=="),
        ("client", "publish", "$JS.API.STREAM.INFO.OBJ_CADRE_artifacts"),
        ("client", "publish", "$JS.API.STREAM.MSG.GET.OBJ_CADRE_artifacts"),
        ("client", "publish", "$JS.API.DIRECT.GET.OBJ_CADRE_artifacts.$O.CADRE_artifacts.M.bmFtZQ=="),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.OBJ_CADRE_artifacts"),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.OBJ_CADRE_artifacts.c.$O.CADRE_artifacts.C.x"),
        ("client", "publish", "cadre.download.client.0a1b.0"),
        ("client", "publish", "$JS.API.DIRECT.GET.CADRE_DOWNLOADS"),
        ("client", "publish", "$JS.API.DIRECT.GET.CADRE_DOWNLOADS.cadre.download.alice.0a1b.0"),
        ("client", "publish", "$JS.API.STREAM.MSG.GET.CADRE_DOWNLOADS"),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_DOWNLOADS.c.cadre.download.client.>"),
        # another client's tasks: no submit or cancel under its name, no reading its events,
        # results or refusals by any route but its own name (direct get by subject, consumers
        # created with the filter in the subject)
        ("client", "publish", "cadre.task.submit.alice"),
        ("client", "publish", "cadre.task.cancel.alice"),
        ("client", "publish", "cadre.task.submit"),  # the old name-less subjects
        ("client", "publish", "cadre.task.cancel"),
        ("client", "publish", "$JS.API.DIRECT.GET.CADRE_EVENTS.cadre.result.alice.task_x"),
        ("client", "publish", "$JS.API.DIRECT.GET.CADRE_EVENTS.cadre.events.alice.task_x.>"),
        ("client", "publish", "$JS.API.DIRECT.GET.CADRE_EVENTS.cadre.refused.alice.msg_x"),
        ("client", "publish", "$JS.API.DIRECT.GET.CADRE_EVENTS"),  # the filter in the payload
        ("client", "publish", "$JS.API.STREAM.MSG.GET.CADRE_EVENTS"),
        ("client", "publish", "$JS.API.STREAM.INFO.CADRE_EVENTS"),  # lists subjects: others' task ids
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_EVENTS"),  # unnamed: filter unchecked
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy"),  # named, filter unchecked
        ("client", "publish", "$JS.API.CONSUMER.DURABLE.CREATE.CADRE_EVENTS.spy"),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.cadre.events.>"),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.cadre.events.alice.task_x.>"),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.cadre.result.alice.task_x"),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.cadre.refused.alice.msg_x"),
        ("client", "publish", "$JS.API.CONSUMER.INFO.CADRE_EVENTS.spy"),
        ("client", "publish", "$JS.API.CONSUMER.DELETE.CADRE_EVENTS.spy"),
        ("client", "publish", "$O.CADRE_artifacts.C.chunk1"),
        ("client", "publish", "$JS.API.STREAM.PURGE.OBJ_CADRE_artifacts"),
        ("client", "publish", "$JS.API.STREAM.MSG.DELETE.OBJ_CADRE_artifacts"),
        ("client", "publish", "$JS.API.STREAM.MSG.GET.CADRE_UPLOADS"),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_UPLOADS"),
        ("client", "publish", "$JS.API.STREAM.MSG.DELETE.CADRE_UPLOADS"),
        ("client", "publish", "cadre.upload.alice.0a1b.0"),
        ("client", "publish", "cadre.heartbeat.developer.developer-1"),
        ("client", "publish", "cadre.metrics.reviewer"),
        ("client", "publish", "$JS.API.CONSUMER.MSG.NEXT.CADRE_WORK.developer-high"),
        ("client", "publish", "$JS.API.CONSUMER.CREATE.CADRE_WORK.spy.cadre.work.developer.high"),
        ("client", "publish", "cadre.work.developer.high"),
        ("client", "publish", "cadre.result.client.task_x"),
        ("client", "publish", "cadre.events.client.task_x.completed"),
        ("client", "publish", "$KV.CADRE_workflows.task_x"),
        ("client", "subscribe", "cadre.work.>"),
        ("client", "subscribe", "cadre.control.cancel.task_x"),
        ("client", "subscribe", "_INBOX_developer.>"),
        # the monitor's snapshot and an agent's status name every client's tasks: the operator's
        # views, not a client's; nor the services' endpoint lists and stats
        ("client", "publish", "cadre.monitor.snapshot"),
        ("client", "publish", "cadre.svc.developer.developer-1.status"),
        ("client", "publish", "$SRV.INFO"),
        ("client", "publish", "$SRV.STATS"),
        ("client", "publish", "$SRV.STATS.cadre-developer"),
        ("client", "subscribe", "cadre.heartbeat.>"),  # heartbeats carry the keys agents hold
        # the operator reads; it drives nothing, stores nothing, answers nothing
        ("operator", "publish", "cadre.task.submit.operator"),
        ("operator", "publish", "cadre.task.submit.client"),
        ("operator", "publish", "cadre.task.cancel.client"),
        ("operator", "publish", "cadre.control.cancel.task_x"),
        ("operator", "publish", "cadre.work.developer.high"),
        ("operator", "publish", "cadre.step.result.developer.task_x"),
        ("operator", "publish", "cadre.heartbeat.developer.developer-1"),
        ("operator", "publish", "cadre.alert.instance_dead"),  # hears alerts, never raises one
        ("operator", "publish", "cadre.result.client.task_x"),
        ("operator", "publish", "cadre.upload.operator.0a1b.0"),
        ("operator", "publish", "$JS.API.INFO"),
        ("operator", "publish", "$JS.API.STREAM.NAMES"),
        ("operator", "publish", "$JS.API.STREAM.INFO.CADRE_EVENTS"),
        ("operator", "publish", "$JS.API.STREAM.MSG.GET.CADRE_EVENTS"),
        ("operator", "publish", "$JS.API.DIRECT.GET.CADRE_EVENTS.cadre.result.client.task_x"),
        ("operator", "publish", "$JS.API.CONSUMER.CREATE.CADRE_EVENTS"),
        ("operator", "publish", "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.cadre.events.client.>"),
        ("operator", "publish", "$JS.API.CONSUMER.INFO.CADRE_WORK.developer-high"),
        ("operator", "publish", "$KV.CADRE_workflows.task_x"),
        ("operator", "publish", "$JS.API.DIRECT.GET.KV_CADRE_workflows.$KV.CADRE_workflows.task_x"),
        ("operator", "publish", "$O.CADRE_artifacts.M.bmFtZQ=="),
        ("operator", "publish", "$JS.API.STREAM.INFO.OBJ_CADRE_artifacts"),
        ("operator", "publish", "$JS.API.DIRECT.GET.CADRE_DOWNLOADS.cadre.download.client.0a1b.0"),
        ("operator", "subscribe", "cadre.events.>"),
        ("operator", "subscribe", "cadre.result.>"),
        ("operator", "subscribe", "cadre.task.submit.>"),
        ("operator", "subscribe", "cadre.work.>"),
        ("operator", "subscribe", "cadre.monitor.snapshot"),  # cannot answer in the monitor's place
        ("operator", "subscribe", "$SRV.PING"),  # nor pose as a service
        ("operator", "subscribe", "_INBOX_client.>"),
        # the orchestrator cannot fake agents, the monitor cannot drive tasks
        ("orchestrator", "publish", "cadre.step.result.task_x"),
        ("orchestrator", "publish", "cadre.step.result.reviewer.task_x"),
        ("orchestrator", "publish", "cadre.heartbeat.developer.developer-1"),
        ("orchestrator", "publish", "$JS.API.CONSUMER.MSG.NEXT.CADRE_WORK.developer-high"),
        ("monitor", "publish", "cadre.task.submit.client"),
        ("monitor", "publish", "cadre.work.developer.high"),
        ("monitor", "publish", "cadre.step.result.developer.task_x"),
        ("monitor", "publish", "$KV.CADRE_workflows.task_x"),
    ]
    return cases


@pytest.mark.parametrize(("user", "kind", "subject"), _cases(), ids=lambda v: str(v))
async def test_refused(
    deployment: Deployment, conns: dict[str, Conn], user: str, kind: str, subject: str
) -> None:
    error = await refusal(deployment, conns[user], kind, subject)
    assert "permissions violation" in error


# what the operator may: ask the monitor and the agents, nats micro discovery, hear alerts; and the
# client's one remaining view (which services answer)
ALLOWED = [
    ("operator", "publish", "cadre.monitor.snapshot"),
    ("operator", "publish", "cadre.svc.developer.developer-1.status"),
    ("operator", "publish", "cadre.svc.reviewer.reviewer-2.status"),
    *[
        ("operator", "publish", f"$SRV.{verb}{tail}")
        for verb in ("PING", "INFO", "STATS")
        for tail in ("", ".cadre-developer", ".cadre-developer.abc123")
    ],
    ("operator", "subscribe", "cadre.alert.>"),
    ("operator", "subscribe", "_INBOX_operator.x"),
    ("client", "publish", "$SRV.PING"),
    ("client", "publish", "$SRV.PING.cadre-monitor"),
    ("client", "subscribe", "cadre.alert.>"),
]


@pytest.mark.parametrize(("user", "kind", "subject"), ALLOWED, ids=lambda v: str(v))
async def test_allowed(
    deployment: Deployment, conns: dict[str, Conn], user: str, kind: str, subject: str
) -> None:
    conn = conns[user]
    seen = len(conn.errors)
    if kind == "publish":
        await conn.nc.publish(subject, b"", reply=f"_INBOX_{user}.allowed")
    else:
        sub = await conn.nc.subscribe(subject)
    # the server answers the flush's PING after handling the publish or subscribe: a refusal's
    # -ERR would have arrived before the PONG
    await conn.nc.flush()
    refused = [e for e in conn.errors[seen:] if "permissions violation" in str(e).lower()]
    assert not refused, refused
    if kind == "subscribe":
        await sub.unsubscribe()


@pytest.mark.parametrize("user", SERVICES + ("operator", "client"))
async def test_no_service_may_delete_a_stream_and_the_stream_survives(
    deployment: Deployment, conns: dict[str, Conn], user: str
) -> None:
    js = conns[user].nc.jetstream(timeout=1.0)
    seen = len(conns[user].errors)
    with pytest.raises(Exception):  # noqa: B017 - no reply ever comes: nats-py times out
        await js.delete_stream("CADRE_WORK")
    assert any("$js.api.stream.delete.cadre_work" in str(e).lower() for e in conns[user].errors[seen:])
    info = await conns["bootstrap"].nc.jetstream().stream_info("CADRE_WORK")
    assert info.config.name == "CADRE_WORK"


async def test_bootstrap_alone_may_create_and_delete_streams(conns: dict[str, Conn]) -> None:
    jsm = conns["bootstrap"].nc.jetstream()
    await jsm.add_stream(StreamConfig(name="CADRE_SCRATCH", subjects=["cadre.scratch.>"]))
    assert await jsm.delete_stream("CADRE_SCRATCH")


@pytest.mark.parametrize(("owner", "stream", "durable"), CONSUMERS)
async def test_only_the_owner_role_can_pull_its_work_consumer(
    conns: dict[str, Conn], owner: str, stream: str, durable: str
) -> None:
    for user in ("researcher", "developer", "reviewer", "orchestrator", "monitor", "client"):
        if user == owner:
            continue
        js = conns[user].nc.jetstream(timeout=0.5)
        sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        seen = len(conns[user].errors)
        with pytest.raises(Exception):  # noqa: B017 - the pull request is dropped: fetch times out
            await sub.fetch(1, timeout=0.3)
        needle = f"$js.api.consumer.msg.next.{stream}.{durable}".lower()
        assert any(needle in str(e).lower() for e in conns[user].errors[seen:]), (user, durable)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def test_the_client_cannot_impersonate_an_agent(deployment: Deployment, conns: dict[str, Conn]) -> None:
    client, developer, orchestrator = conns["client"], conns["developer"], conns["orchestrator"]
    boot = conns["bootstrap"].nc.jetstream()
    before = (await boot.stream_info("CADRE_STEP_RESULTS")).state.messages
    fake = StepResult(
        message_id=new_id("res"),
        task_id="task_forged",
        step_id="final_review",
        attempt=1,
        role="reviewer",
        instance_id="reviewer-1",
        status="completed",
        summary="approved (forged)",
        timings=Timings(queued_at=now(), started_at=now(), finished_at=now()),
    )
    # a forged step result never reaches the results stream (the refused publish gets no ack)
    with pytest.raises(NatsTimeoutError):
        await client.nc.jetstream(timeout=1.0).publish("cadre.step.result.reviewer.task_forged", encode(fake))
    assert (await boot.stream_info("CADRE_STEP_RESULTS")).state.messages == before
    # a forged heartbeat never reaches the orchestrator; the real one right after does
    heard: asyncio.Queue[Heartbeat] = asyncio.Queue()

    async def on_heartbeat(msg: Msg) -> None:
        heard.put_nowait(heartbeat_decoder.decode(msg.data))

    sub = await orchestrator.nc.subscribe("cadre.heartbeat.>", cb=on_heartbeat)
    await orchestrator.nc.flush()

    def beat(instance: str) -> bytes:
        return encode(
            Heartbeat(role="developer", instance_id=instance, at=now(), started_at=now(), interval=1.0)
        )

    await client.nc.publish("cadre.heartbeat.developer.developer-forged", beat("developer-forged"))
    await client.nc.flush()
    await developer.nc.publish("cadre.heartbeat.developer.developer-1", beat("developer-1"))
    await developer.nc.flush()
    first = await asyncio.wait_for(heard.get(), timeout=5)
    assert first.instance_id == "developer-1"
    await sub.unsubscribe()
    # the server logs the refusal on its own schedule: wait for the line rather than race it

    async def refusal_line() -> str | None:
        return deployment.violation_logged("client", "publish", "cadre.heartbeat.developer.developer-forged")

    await wait_for_value(refusal_line, timeout=5, what="the server's log line for the forged heartbeat")


async def test_the_developer_cannot_publish_a_review_but_may_publish_its_own_result(
    deployment: Deployment, conns: dict[str, Conn]
) -> None:
    developer = conns["developer"]
    boot = conns["bootstrap"].nc.jetstream()
    before = (await boot.stream_info("CADRE_STEP_RESULTS")).state.messages
    t = now()
    forged = StepResult(
        message_id=new_id("res"),
        task_id="task_forged_review",
        step_id="final_review",
        attempt=1,
        role="reviewer",
        instance_id="reviewer-1",
        status="completed",
        summary="approved (forged by the developer user)",
        score=100,
        timings=Timings(queued_at=t, started_at=t, finished_at=t),
    )
    js = developer.nc.jetstream(timeout=1.0)
    with pytest.raises(NatsTimeoutError):  # refused by the server: no stream ever acks it
        await js.publish("cadre.step.result.reviewer.task_forged_review", encode(forged))

    async def refusal_line() -> str | None:
        return deployment.violation_logged(
            "developer", "publish", "cadre.step.result.reviewer.task_forged_review"
        )

    await wait_for_value(refusal_line, timeout=5, what="the server's log line for the forged review")
    assert (await boot.stream_info("CADRE_STEP_RESULTS")).state.messages == before
    # under its own role the same user is stored (the orchestrator then checks the step it names)
    own = msgspec.structs.replace(forged, role="developer", step_id="implement")
    ack = await js.publish("cadre.step.result.developer.task_forged_review", encode(own))
    assert ack.stream == "CADRE_STEP_RESULTS"
    await boot.purge_stream("CADRE_STEP_RESULTS", subject="cadre.step.result.developer.task_forged_review")


async def test_the_operator_can_neither_submit_nor_cancel_and_the_sdk_says_so(
    deployment: Deployment, conns: dict[str, Conn]
) -> None:
    boot = conns["bootstrap"].nc.jetstream()
    before = (await boot.stream_info("CADRE_TASKS")).state.messages
    async with CadreClient.connect(deployment.settings("operator"), "probe-operator") as operator:
        assert operator.client_name == "operator"
        with pytest.raises(PermissionDenied) as submitted:
            await operator.submit(feature_task())
        with pytest.raises(PermissionDenied) as cancelled:
            await operator.cancel("task_x")
    assert submitted.value.subject == "cadre.task.submit.operator" and submitted.value.user == "operator"
    assert "client login" in str(submitted.value)
    assert cancelled.value.subject == "cadre.task.cancel.operator"
    assert (await boot.stream_info("CADRE_TASKS")).state.messages == before


@pytest.mark.timeout(120)
async def test_every_service_runs_a_task_under_its_own_user_without_a_violation(
    deployment: Deployment, tmp_path: Path
) -> None:
    since = len(deployment.server.log)
    stack = _stack(deployment, tmp_path, SERVICES)
    try:
        async with CadreClient.connect(deployment.settings("client")) as client:
            task = feature_task({"scores": [85, 98]})
            task_id = await client.submit(task, workspace_dir=ROOT / "examples" / "auth-api")
            result = await client.result(task_id, timeout=90)
            assert result.status == "completed", result.reason
            assert result.plan is not None and result.plan.steps[0].id == "analyze"
            # the result's code comes from the client's own downloads (no object-store rights)
            files = await client.workspace_files(result)
            assert "auth_api/app.py" in files
            written = await client.download_workspace(result, tmp_path / "fixed")
            assert (tmp_path / "fixed" / "auth_api" / "app.py").is_file() and written.files
            assert isinstance(await client.workspace_patch(result), str)
            async with client.alerts():
                pass  # subscribed and flushed: a refused subscribe shows in the server log below
            reply = await client.cancel(task_id)
            assert not reply.accepted  # already finished: the orchestrator answered, through its user
        # the monitor's views are the operator's (read-only): snapshot, an agent's status, alerts
        async with CadreClient.connect(deployment.settings("operator"), "cadre-operator") as operator:
            # the task can finish before the monitor process is up: wait for it to answer

            async def answered() -> Snapshot | None:
                try:
                    return await operator.snapshot()
                except NoService:
                    return None

            snapshot = await wait_for_value(answered, what="the monitor's snapshot")
            assert snapshot.orchestrator.tasks_delegated >= 1
            assert task_id in [t.task_id for t in snapshot.recent_tasks]
            status = await operator.agent_status("developer", "developer-1")
            assert status.role == "developer" and status.completed >= 1
            found = {info.name for info in await operator.services(wait=0.5)}
            assert {"cadre-orchestrator", "cadre-developer", "cadre-monitor"} <= found, found
            async with operator.alerts():
                pass
    finally:
        stack.stop(timeout=15)
    # the deliberate refusals above come from this module's unnamed connections; the services
    # (and CadreClient) name theirs "cadre-...": none of those may have hit a refusal
    _assert_no_service_violations(deployment, since)


@dataclass
class Ran:
    rc: int
    out: str
    err: str


async def _cadre(dep: Deployment, user: str, *args: str, cwd: Path) -> Ran:
    """`cadre ARGS` as a user runs it (a subprocess), logged in as NATS user ``user``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
        "CADRE_NATS_URL": dep.server.url,
        "CADRE_NATS_USER": user,
        "CADRE_NATS_PASSWORD": dep.passwords[user],
        "CADRE_INBOX_PREFIX": f"_INBOX_{user}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.client.cli.app",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return Ran(proc.returncode or 0, out.decode(), err.decode())


@pytest.mark.timeout(120)
async def test_a_client_is_refused_the_monitors_views_and_cadre_status_names_the_operator_login(
    deployment: Deployment, tmp_path: Path
) -> None:
    stack = _stack(deployment, tmp_path, ("monitor", "developer"))
    try:
        async with CadreClient.connect(deployment.settings("operator"), "cadre-operator") as operator:

            async def developer_seen() -> Snapshot | None:
                with contextlib.suppress(NoService):
                    snap = await operator.snapshot()
                    if any(i.instance_id == "developer-1" and i.state == "alive" for i in snap.instances):
                        return snap
                return None

            # the monitor answers and knows the developer: a refusal below is the server's, not silence
            await wait_for_value(developer_seen, what="the monitor's snapshot naming developer-1")

            async def developer_answers() -> AgentStatus | None:
                with contextlib.suppress(CadreError):  # not answering yet: starting up on a busy machine
                    return await operator.agent_status("developer", "developer-1")
                return None

            status = await wait_for_value(developer_answers, what="developer-1's status")
            assert status.role == "developer" and status.instance_id == "developer-1"

        # the SDK as the client: each view is refused by the server, at once, as a typed error
        async with CadreClient.connect(deployment.settings("client"), "probe-client") as client:
            with pytest.raises(PermissionDenied) as snap_denied:
                await client.snapshot()
            with pytest.raises(PermissionDenied) as status_denied:
                await client.agent_status("developer", "developer-1")
            # what is left to a client: which services answer (no task data in a ping)
            assert "cadre-monitor" in {info.name for info in await client.services(wait=0.5)}
        assert snap_denied.value.user == "client" and snap_denied.value.subject == "cadre.monitor.snapshot"
        assert "CADRE_NATS_USER=operator" in str(snap_denied.value)
        assert status_denied.value.subject == "cadre.svc.developer.developer-1.status"
        for subject in ("cadre.monitor.snapshot", "cadre.svc.developer.developer-1.status"):

            async def logged(subject: str = subject) -> str | None:
                return deployment.violation_logged("client", "publish", subject)

            await wait_for_value(logged, timeout=5, what=f"the server's refusal of {subject}")

        # the CLI: one clear line naming the operator login, exit 2; the operator's own run works
        denied = await _cadre(deployment, "client", "status", cwd=tmp_path)
        assert denied.rc == 2, (denied.rc, denied.out, denied.err)
        lines = denied.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), denied.err
        for fragment in ("'client'", "cadre.monitor.snapshot", "operator login", "CADRE_NATS_USER=operator"):
            assert fragment in lines[0], (fragment, lines[0])
        assert "Traceback" not in denied.err and not denied.out
        print(f"cadre status as the client: {lines[0]}")
        allowed = await _cadre(deployment, "operator", "status", cwd=tmp_path)
        assert allowed.rc == 0, allowed.err
        assert "developer-1" in allowed.out and "cadre-monitor" in allowed.out, allowed.out
        metrics = await _cadre(deployment, "operator", "metrics", cwd=tmp_path)
        assert metrics.rc == 0, metrics.err
        assert set(json.loads(metrics.out)) == {"orchestrator", "researcher", "developer", "reviewer"}
    finally:
        stack.stop(timeout=15)


def _stack(dep: Deployment, log_dir: Path, names: tuple[str, ...]) -> Stack:
    """The services ``names``, each under its own user (bootstrap off), agents with scripted brains."""
    stack = Stack(dep.settings("orchestrator"), log_dir=log_dir)
    for name in names:
        extra: dict[str, Any] = {"brain": "tests.brains:ScriptedBrain"} if name in AGENT_ROLES else {}
        if name == "monitor":
            extra["monitor_http_port"] = 0
        stack.add(
            name,
            nats_user=name,
            nats_password=dep.passwords[name],
            inbox_prefix=f"_INBOX_{name}",
            bootstrap=False,
            heartbeat_interval=0.5,
            **extra,
        )
    return stack


def _assert_no_service_violations(dep: Deployment, since: int = 0) -> None:
    """The services (and CadreClient) name their connections "cadre-...": none may have hit a refusal.

    ``since``: the server log's length when the test began (another test's deliberate
    refusals, such as a client's `cadre status`, are not this test's).
    """
    log = dep.server.log[since:]
    service_violations = [line for line in log if "Violation" in line and "python3:cadre-" in line]
    assert not service_violations, "a service lacks a permission it needs:\n" + "\n".join(service_violations)


def _with_client(conf_dir: Path, name: str) -> Path:
    """A copy of the shipped config with one more client user, made as docs/deployment.md says:
    copy the `client` block, replace every `client` token in the copy with the new name."""
    accounts = (CONF.parent / "accounts.conf").read_text()
    start = accounts.index("      {\n        user: client\n")
    end = accounts.index('subscribe: { allow: ["_INBOX_client.>"', start)
    end = accounts.index("\n      }", end) + len("\n      }")  # the end of the user's block
    block = accounts[start:end]
    extra = _CLIENT_TOKEN.sub(
        name,
        block.replace("CADRE_PW_CLIENT", f"CADRE_PW_{name.upper()}"),
    )
    # the user, every subject it submits, reads, uploads and downloads under, and its inbox
    # (a comment may still say "CadreClient": only a whole `client` token would be a leftover)
    assert extra.count(name) == 12 and not _CLIENT_TOKEN.search(extra), extra
    (conf_dir / "accounts.conf").write_text(accounts[:end] + "\n" + extra + accounts[end:])
    (conf_dir / "nats.conf").write_text(CONF.read_text())
    return conf_dir / "nats.conf"


@contextlib.asynccontextmanager
async def _deployment_with(tmp_path: Path, name: str) -> AsyncIterator[Deployment]:
    """A fresh server running the shipped config plus client user ``name``, bootstrapped."""
    conf = _with_client(tmp_path, name)
    passwords = {u: "pw" + secrets.token_hex(16) for u in (*USERS, name)}
    with pytest.MonkeyPatch.context() as mp:
        for user, password in passwords.items():
            mp.setenv(f"CADRE_PW_{user.upper()}", password)
        server = NatsServer(config=conf, extra_args=["-m", "-1"]).start()
    dep = Deployment(server, passwords)
    try:
        await bootstrap(dep.settings("bootstrap"), deadline=10)
        yield dep
    finally:
        server.stop()


async def test_one_client_cannot_read_replace_or_delete_another_clients_upload(tmp_path: Path) -> None:
    async with _deployment_with(tmp_path, "alice") as dep:
        data = pack_files({"secret.py": "API_KEY = 'alice only'\n"})
        async with await Bus.open(dep.settings("alice"), "alice") as alice:
            ref = await uploads.upload(alice, data, description="alice's workspace")
        assert ref.uploaded_by == "alice" and ref.chunks == 1
        async with await Bus.open(dep.settings("client"), "mallory") as mallory:
            # read it: the uploads stream is closed to clients (no reply ever comes)
            with pytest.raises(NatsTimeoutError):
                await mallory.nc.jetstream(timeout=1.0).get_last_msg(
                    "CADRE_UPLOADS", f"cadre.upload.alice.{ref.sha256}.0"
                )
            # replace it: publishing under alice's name is refused, nothing is stored
            with pytest.raises(NatsTimeoutError):
                await mallory.nc.jetstream(timeout=1.0).publish(
                    f"cadre.upload.alice.{ref.sha256}.0", b"mallory's code"
                )
            # the object store, where the orchestrator copies it, is closed to clients: not even
            # its stream can be looked up, so nothing can be put under its name
            with pytest.raises(NatsTimeoutError):
                await mallory.nc.jetstream(timeout=1.0).object_store("CADRE_artifacts")
        for subject in (
            f"cadre.upload.alice.{ref.sha256}.0",
            "$JS.API.STREAM.MSG.GET.CADRE_UPLOADS",
            "$JS.API.STREAM.INFO.OBJ_CADRE_artifacts",
        ):

            async def refused(subject: str = subject) -> str | None:
                return dep.violation_logged("client", "publish", subject)

            await wait_for_value(refused, timeout=5, what=f"the server's refusal of {subject}")
        # the orchestrator reads alice's upload intact, checked against its hash
        async with await Bus.open(dep.settings("orchestrator"), "orchestrator") as orch:
            assert await uploads.fetch(orch, ref, max_bytes=1 << 20) == data


@pytest.mark.timeout(240)
async def test_one_client_cannot_read_or_cancel_another_clients_task_while_it_runs_its_own_end_to_end(
    tmp_path: Path,
) -> None:
    """Two client users (the shipped `client` and `alice`, added as docs/deployment.md says)."""
    async with _deployment_with(tmp_path, "alice") as dep:
        stack = _stack(dep, tmp_path, ("orchestrator", *AGENT_ROLES))
        try:
            async with (
                CadreClient.connect(dep.settings("alice")) as alice,
                CadreClient.connect(dep.settings("client")) as other,
            ):
                assert (alice.client_name, other.client_name) == ("alice", "client")
                # alice runs a task end to end: submit with a workspace, follow, result, download
                task_id = await alice.submit(
                    feature_task({"scores": [85, 98]}), workspace_dir=ROOT / "examples" / "auth-api"
                )
                kinds = [event.kind async for event in alice.events(task_id, timeout=120)]
                assert kinds[0] == "received" and kinds[-1] == "completed", kinds
                result = await alice.result(task_id, timeout=0)
                assert result.status == "completed", result.reason
                await alice.download_workspace(result, tmp_path / "alice-fixed")
                assert (tmp_path / "alice-fixed" / "auth_api" / "app.py").is_file()
                assert isinstance(await alice.workspace_patch(result), str)
                # a submission reusing alice's task id is refused, the refusal under alice's name
                reused = msgspec.structs.replace(feature_task(), task_id=task_id)
                await alice.bus.js.publish(
                    alice.subjects.task_submit("alice"),
                    encode(reused),
                    headers={"Nats-Msg-Id": reused.message_id},
                )
                refused_subject = alice.subjects.refused("alice", reused.message_id)

                async def refusal() -> Any:
                    with contextlib.suppress(NotFoundError):
                        return await alice.bus.js.get_last_msg("CADRE_EVENTS", refused_subject, direct=True)
                    return None

                assert b"already used" in (await wait_for_value(refusal, what="alice's refusal")).data

                # the other client, through the SDK: under its own name there is nothing of alice's
                assert not await other.exists(task_id)
                with pytest.raises(TaskNotFound):
                    await other.result(task_id, timeout=0)
                ws = result.artifacts["workspace"]
                with pytest.raises(downloads.NotOffered):
                    await other.artifact(ws)

                # a second task of alice's, held in its first step: the other client's cancel
                # reaches no task of alice's (and it may not ask under alice's name at all)
                held = await alice.submit(feature_task({"delay": 600}))
                async for event in alice.events(held, timeout=60):
                    assert event.kind == "received"
                    break
                reply = await other.cancel(held)
                assert not reply.accepted and reply.reason == "unknown task id"
                mine = await alice.cancel(held, "alice stops it")
                assert mine.accepted, mine.reason
                final = await alice.result(held, timeout=60)
                assert final.status == "cancelled"
        finally:
            stack.stop(timeout=15)
        _assert_no_service_violations(dep)

        # the other client by hand, trying every route to alice's task (each refused by the server)
        sha = result.artifacts["workspace"].sha256
        async with await Bus.open(dep.settings("client"), "mallory") as mallory:
            js = mallory.nc.jetstream(timeout=1.0)
            stolen = [
                ("CADRE_EVENTS", f"cadre.result.alice.{task_id}"),
                ("CADRE_EVENTS", f"cadre.events.alice.{task_id}.>"),
                ("CADRE_EVENTS", refused_subject),
                ("CADRE_DOWNLOADS", f"cadre.download.alice.{sha}.0"),
            ]
            for stream, subject in stolen:
                with pytest.raises(NatsTimeoutError):
                    await js.get_last_msg(stream, subject, direct=True)
            spy = ConsumerConfig(
                name="spy",
                filter_subject=f"cadre.events.alice.{task_id}.>",
                deliver_subject="_INBOX_client.spy",
            )
            with pytest.raises(NatsTimeoutError):
                await js.add_consumer("CADRE_EVENTS", spy)
            # its own filter in the create subject, alice's in the request: the server refuses it
            request = {"stream_name": "CADRE_EVENTS", "config": spy.evolve(name="spy2").as_dict()}
            answer = await mallory.nc.request(
                f"$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy2.cadre.events.client.{task_id}.>",
                json.dumps(request).encode(),
                timeout=5,
            )
            error = json.loads(answer.data).get("error")
            assert error and "filter" in error["description"].lower(), answer.data
            with pytest.raises(NatsTimeoutError):
                await js.object_store("CADRE_artifacts")
            await mallory.nc.publish("cadre.task.cancel.alice", encode(CancelRequest(task_id=task_id)))
            await mallory.nc.flush()
        refused_routes = [f"$JS.API.DIRECT.GET.{stream}.{subject}" for stream, subject in stolen] + [
            f"$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.cadre.events.alice.{task_id}.>",
            "$JS.API.STREAM.INFO.OBJ_CADRE_artifacts",
            "cadre.task.cancel.alice",
        ]
        for subject in refused_routes:

            async def logged(subject: str = subject) -> str | None:
                return dep.violation_logged("client", "publish", subject)

            await wait_for_value(logged, timeout=5, what=f"the server's refusal of {subject}")
