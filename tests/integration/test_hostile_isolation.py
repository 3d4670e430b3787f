"""Hostile probes of client isolation, against a real nats-server on the shipped config.

Two client users, ``alice`` (added as docs/deployment.md says) and the shipped
``client`` (here: mallory), try the routes to each other's data that the
permission matrix in ``test_nats_permissions.py`` does not list: a direct get
allowed by its subject but carrying a request body that names another
subject or a sequence, wildcards in odd places, a consumer whose filter is
smuggled in ``filter_subjects``, a push consumer that delivers into another
user's subjects, and the monitor's snapshot.

Each test asserts the SAFE behaviour. The ones Cadre does not meet yet are
``xfail(strict=True)`` with the reason: they fail today and turn into an
XPASS (a failure) the moment they are fixed, so the marker must go then.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from shared.bus.core import Bus
from shared.client import CadreClient, NoService, PermissionDenied
from shared.contract.monitoring import Snapshot
from shared.contract.protocol import MetricEvent, encode, now
from shared.embedded.launcher import Stack
from tests.helpers import wait_for_value
from tests.integration.test_nats_permissions import Deployment, _deployment_with

SECRET = "ALICE-ONLY-7f3a"
ALICE_TASK = "task_alice_secret"


@pytest.fixture
async def dep(tmp_path: Path) -> AsyncIterator[Deployment]:
    """The shipped config plus client ``alice``; alice's result and event stored, and one of mallory's."""
    async with _deployment_with(tmp_path, "alice") as dep:
        async with await Bus.open(dep.settings("orchestrator"), "seed") as orch:
            await orch.js.publish(f"cadre.result.alice.{ALICE_TASK}", SECRET.encode())
            await orch.js.publish(f"cadre.events.alice.{ALICE_TASK}.completed", SECRET.encode())
            await orch.js.publish("cadre.result.client.task_mallory", b"mallory's own result")
            await orch.js.publish("cadre.download.alice.0a1b.0", SECRET.encode())
        yield dep


async def _refused(dep: Deployment, subject: str) -> None:
    async def logged() -> str | None:
        return dep.violation_logged("client", "publish", subject)

    await wait_for_value(logged, timeout=5, what=f"the server's refusal of {subject}")


@pytest.mark.parametrize(
    "body",
    [
        {"seq": 1},
        {"seq": 2},
        {"last_by_subj": f"cadre.result.alice.{ALICE_TASK}"},
        {"next_by_subj": f"cadre.result.alice.{ALICE_TASK}"},
        {"seq": 1, "batch": 10},
        {"multi_last": ["cadre.result.alice.>"]},
        {"multi_last": ["cadre.>"], "batch": 10},
        {"batch": 10},
        {"start_time": "2000-01-01T00:00:00Z"},
    ],
    ids=json.dumps,
)
async def test_a_direct_get_allowed_by_its_subject_cannot_be_widened_by_its_request_body(
    dep: Deployment, body: dict[str, object]
) -> None:
    async with await Bus.open(dep.settings("client"), "mallory") as mallory:
        for stream, own in (
            ("CADRE_EVENTS", "cadre.result.client.task_mallory"),
            ("CADRE_DOWNLOADS", "cadre.download.client.0a1b.0"),
        ):
            subject = f"$JS.API.DIRECT.GET.{stream}.{own}"
            try:
                reply: Msg | None = await mallory.nc.request(subject, json.dumps(body).encode(), timeout=2)
            except NatsTimeoutError:
                reply = None
            if reply is not None:
                assert SECRET.encode() not in reply.data, (subject, body, reply.headers, reply.data)
                assert "alice" not in str(reply.headers), (subject, body, reply.headers)


@pytest.mark.parametrize(
    "subject",
    [
        "$JS.API.DIRECT.GET.CADRE_EVENTS.cadre.events.*.>",
        f"$JS.API.DIRECT.GET.CADRE_EVENTS.cadre.result.*.{ALICE_TASK}",
        "$JS.API.DIRECT.GET.CADRE_EVENTS.cadre.*.alice.>",
        "$JS.API.DIRECT.GET.CADRE_EVENTS.>",
        "$JS.API.DIRECT.GET.CADRE_DOWNLOADS.cadre.download.*.>",
        "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.cadre.events.*.>",
        "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.cadre.*.client.>",
        "$JS.API.CONSUMER.CREATE.CADRE_EVENTS.spy.>",
        "$JS.API.CONSUMER.LIST.CADRE_EVENTS",
        "$JS.API.CONSUMER.NAMES.CADRE_EVENTS",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.NAMES",
        "$JS.API.INFO",
    ],
)
async def test_wildcards_in_odd_places_and_listing_apis_are_refused_to_a_client(
    dep: Deployment, subject: str
) -> None:
    async with await Bus.open(dep.settings("client"), "mallory") as mallory:
        with pytest.raises(NatsTimeoutError):
            await mallory.nc.request(subject, b"{}", timeout=1)
    await _refused(dep, subject)


@pytest.mark.parametrize(
    "config",
    [
        {"filter_subjects": ["cadre.result.alice.>"]},
        {"filter_subject": "cadre.result.client.>", "filter_subjects": ["cadre.result.alice.>"]},
        {"filter_subject": "cadre.result.alice.>"},
        {"filter_subject": "cadre.result.*.>"},
    ],
    ids=json.dumps,
)
async def test_a_consumer_create_on_the_clients_own_filter_cannot_carry_another_filter_in_its_request(
    dep: Deployment, config: dict[str, object]
) -> None:
    async with await Bus.open(dep.settings("client"), "mallory") as mallory:
        name = "spy" + secrets.token_hex(4)
        request = {
            "stream_name": "CADRE_EVENTS",
            "config": {"name": name, "deliver_subject": "_INBOX_client.spy", "ack_policy": "none", **config},
        }
        answer = await mallory.nc.request(
            f"$JS.API.CONSUMER.CREATE.CADRE_EVENTS.{name}.cadre.result.client.>",
            json.dumps(request).encode(),
            timeout=5,
        )
        assert "error" in json.loads(answer.data), answer.data
    async with await Bus.open(dep.settings("bootstrap"), "audit") as boot:
        assert [c.name for c in await boot.js.consumers_info("CADRE_EVENTS")] == []


@pytest.mark.xfail(
    strict=True,
    reason="a client's consumer create fixes the filter but not deliver_subject: the server delivers "
    "the client's own stream messages into any subject (here alice's inbox), past its publish permissions",
)
async def test_a_client_cannot_make_the_server_deliver_messages_into_another_users_subjects(
    dep: Deployment,
) -> None:
    async with (
        await Bus.open(dep.settings("alice"), "alice") as alice,
        await Bus.open(dep.settings("client"), "mallory") as mallory,
    ):
        received: list[Msg] = []

        async def on_msg(msg: Msg) -> None:
            received.append(msg)

        await alice.nc.subscribe("_INBOX_alice.listening", cb=on_msg)
        await alice.nc.flush()
        # mallory may not publish there herself
        await mallory.nc.publish("_INBOX_alice.listening", b"direct")
        await mallory.nc.flush()
        await _refused(dep, "_INBOX_alice.listening")
        # nor through a push consumer on her own (allowed) filter
        name = "push" + secrets.token_hex(4)
        request = {
            "stream_name": "CADRE_EVENTS",
            "config": {
                "name": name,
                "filter_subject": "cadre.result.client.>",
                "deliver_subject": "_INBOX_alice.listening",
                "ack_policy": "none",
                "deliver_policy": "all",
            },
        }
        answer = await mallory.nc.request(
            f"$JS.API.CONSUMER.CREATE.CADRE_EVENTS.{name}.cadre.result.client.>",
            json.dumps(request).encode(),
            timeout=5,
        )
        created = "error" not in json.loads(answer.data)
        if created:
            # the consumer exists: wait until the server has tried to deliver its one message
            async with await Bus.open(dep.settings("bootstrap"), "audit") as boot:

                async def tried() -> bool | None:
                    info = await boot.js.consumer_info("CADRE_EVENTS", name)
                    return info.delivered.stream_seq >= 1 or None

                await wait_for_value(tried, timeout=10, what="the push consumer's delivery")
            await alice.nc.flush()
        assert not created and not received, (answer.data, [(m.subject, m.data) for m in received])


@pytest.mark.timeout(120)
async def test_the_monitor_snapshot_does_not_show_one_client_another_clients_task_ids(
    dep: Deployment, tmp_path: Path
) -> None:
    """The snapshot names every client's tasks: the server refuses it to a client (the operator's)."""
    stack = Stack(dep.settings("monitor"), log_dir=tmp_path)
    stack.add(
        "monitor",
        nats_user="monitor",
        nats_password=dep.passwords["monitor"],
        inbox_prefix="_INBOX_monitor",
        bootstrap=False,
        monitor_http_port=0,
    )
    try:
        async with await Bus.open(dep.settings("orchestrator"), "orch") as orch:
            metric = MetricEvent(
                kind="delegated",
                role="orchestrator",
                instance_id="orchestrator-1",
                at=now(),
                task_id=ALICE_TASK,
                step_id="analyze",
                attempt=1,
            )
            await orch.js.publish(orch.subjects.metrics("orchestrator"), encode(metric))
        # the monitor has counted alice's step and answers (the operator, trusted, sees it) ...
        async with CadreClient.connect(dep.settings("operator"), "operator") as operator:

            async def counted() -> Snapshot | None:
                try:
                    snap = await operator.snapshot()
                except NoService:
                    return None
                return snap if snap.orchestrator.tasks_delegated >= 1 else None

            snapshot = await wait_for_value(counted, timeout=60, what="the monitor counting alice's step")
            assert ALICE_TASK in encode(snapshot).decode()
        # ... but mallory, a client, gets no snapshot at all: the server refuses the request
        async with CadreClient.connect(dep.settings("client"), "mallory") as mallory:
            with pytest.raises(PermissionDenied):
                await mallory.snapshot()
            with pytest.raises(PermissionDenied):
                await mallory.agent_status("developer", "developer-1")
        await _refused(dep, "cadre.monitor.snapshot")
        await _refused(dep, "cadre.svc.developer.developer-1.status")
    finally:
        stack.stop(timeout=15)


@pytest.mark.xfail(
    strict=True,
    reason="a client may create durable consumers on CADRE_EVENTS (its own filter), as many as it "
    "likes: they outlive its connection, no client may delete them, and no limit bounds them",
)
async def test_a_client_cannot_leave_behind_consumers_that_outlive_it(dep: Deployment) -> None:
    async with await Bus.open(dep.settings("client"), "mallory") as mallory:
        created = []
        for i in range(20):  # the same create, repeated: a hog would loop on
            name = f"hog{i}"
            request = {
                "stream_name": "CADRE_EVENTS",
                "config": {
                    "name": name,
                    "durable_name": name,
                    "filter_subject": "cadre.events.client.>",
                    "deliver_subject": f"_INBOX_client.{name}",
                    "ack_policy": "explicit",
                },
            }
            answer = await mallory.nc.request(
                f"$JS.API.CONSUMER.CREATE.CADRE_EVENTS.{name}.cadre.events.client.>",
                json.dumps(request).encode(),
                timeout=5,
            )
            if "error" in json.loads(answer.data):
                break
            created.append(name)
    async with await Bus.open(dep.settings("bootstrap"), "audit") as boot:
        left = [c.name for c in await boot.js.consumers_info("CADRE_EVENTS") if c.config.durable_name]
    assert left == [], f"{len(created)} durable consumers created, {len(left)} left after mallory closed"


@pytest.mark.xfail(
    strict=True,
    reason="a consumer create is create-or-update: a client that knows (or guesses) another "
    "client's consumer name can rewrite its filter to its own subjects, keeping the victim's "
    "deliver subject, so the victim's follower gets the other client's events instead of its own",
)
async def test_a_client_cannot_rewrite_another_clients_consumer_even_knowing_its_name(
    dep: Deployment,
) -> None:
    name = "c_alicesfollower"  # the SDK draws 48 random bits; no client may list names

    def create(client: str, deliver: str) -> bytes:
        config = {
            "name": name,
            "filter_subject": f"cadre.events.{client}.>",
            "deliver_subject": deliver,
            "ack_policy": "none",
        }
        return json.dumps({"stream_name": "CADRE_EVENTS", "config": config}).encode()

    async with (
        await Bus.open(dep.settings("alice"), "alice") as alice,
        await Bus.open(dep.settings("client"), "mallory") as mallory,
    ):
        await alice.nc.subscribe("_INBOX_alice.follow")
        await alice.nc.flush()
        made = await alice.nc.request(
            f"$JS.API.CONSUMER.CREATE.CADRE_EVENTS.{name}.cadre.events.alice.>",
            create("alice", "_INBOX_alice.follow"),
            timeout=5,
        )
        assert "error" not in json.loads(made.data), made.data
        answer = await mallory.nc.request(
            f"$JS.API.CONSUMER.CREATE.CADRE_EVENTS.{name}.cadre.events.client.>",
            create("client", "_INBOX_alice.follow"),
            timeout=5,
        )
        print("mallory's update:", answer.data[:200])
    async with await Bus.open(dep.settings("bootstrap"), "audit") as boot:
        info = await boot.js.consumer_info("CADRE_EVENTS", name)
    assert info.config.filter_subject == "cadre.events.alice.>", info.config
