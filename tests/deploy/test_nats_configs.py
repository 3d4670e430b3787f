"""The other shipped NATS configurations, run for real: the 3-node cluster and TLS.

No containers needed, but they belong with the deployment checks (``make
test-deploy``). The cluster nodes run ``deploy/nats/cluster/nats-node.conf``
as shipped; only addresses move, through nats-server's own flags (client,
cluster and monitoring ports, routes), because three nodes share 127.0.0.1
here. The TLS test runs ``deploy/nats/tls.conf`` with certificates from
``deploy/scripts/gen-tls.sh``; only the certificate folder is moved.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.errors import NoServersError

from shared.bus.bootstrap import bootstrap
from shared.client import CadreClient
from shared.client.cli.settings import StackSettings
from shared.contract.protocol import TaskBody, TaskSubmission
from shared.embedded.natsserver import NatsServer
from tests.helpers import wait_for_value

ROOT = Path(__file__).resolve().parents[2]
NATS_DIR = ROOT / "deploy" / "nats"
USERS = ("bootstrap", "orchestrator", "researcher", "developer", "reviewer", "monitor", "operator", "client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def passwords() -> Iterator[dict[str, str]]:
    pw = {u: "pw" + secrets.token_hex(12) for u in USERS}
    with pytest.MonkeyPatch.context() as mp:
        for user, value in pw.items():
            mp.setenv(f"CADRE_PW_{user.upper()}", value)
        yield pw


def user_settings(url: str, pw: dict[str, str], user: str, **extra: object) -> StackSettings:
    return StackSettings(
        nats_url=url,
        nats_user=user,
        nats_password=pw[user],
        inbox_prefix=f"_INBOX_{user}",
        bootstrap=False,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def cluster(passwords: dict[str, str]) -> AsyncIterator[list[NatsServer]]:
    ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in ports)
    nodes: list[NatsServer] = []
    try:
        for i, port in enumerate(ports, start=1):
            os.environ["CADRE_NATS_NAME"] = f"nats-{i}"  # read when the node parses its config
            args = ["-m", "-1", "--cluster", f"nats://127.0.0.1:{port}", "--routes", routes]
            nodes.append(NatsServer(config=NATS_DIR / "cluster" / "nats-node.conf", extra_args=args).start())
        yield nodes
    finally:
        os.environ.pop("CADRE_NATS_NAME", None)
        for node in nodes:
            node.stop()


async def test_the_cluster_example_keeps_r3_streams_available_when_a_node_dies(
    cluster: list[NatsServer], passwords: dict[str, str]
) -> None:
    urls = ",".join(n.url for n in cluster)
    # the bootstrap step retries until the JetStream meta group has a leader
    await bootstrap(user_settings(urls, passwords, "bootstrap", js_replicas=3), deadline=60)
    nc = await nats.connect(
        urls.split(","), user="bootstrap", password=passwords["bootstrap"], inbox_prefix="_INBOX_bootstrap"
    )
    try:
        js = nc.jetstream()
        for stream in (
            "CADRE_TASKS",
            "CADRE_WORK",
            "CADRE_STEP_RESULTS",
            "CADRE_EVENTS",
            "KV_CADRE_workflows",
        ):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, stream
        leader = (await js.stream_info("CADRE_TASKS")).cluster.leader  # type: ignore[union-attr]
        assert leader
        print(f"CADRE_TASKS: R3, leader {leader}")
    finally:
        await nc.close()
    # take the tasks stream's leader down: the two survivors still accept a submission
    victim = cluster[int(leader.rsplit("-", 1)[1]) - 1]  # node i was started as nats-i
    victim.stop()
    alive = ",".join(n.url for n in cluster if n is not victim)
    client_settings = user_settings(alive, passwords, "client")

    async def submitted() -> str | None:
        try:
            async with CadreClient.connect(client_settings) as client:
                return await client.submit(
                    TaskSubmission(message_id="", task=TaskBody(description="after a node loss"))
                )
        except Exception as exc:  # noqa: BLE001 - a new stream leader is being elected
            print(f"not yet: {type(exc).__name__}: {exc}")
            return None

    task_id = await wait_for_value(submitted, timeout=30, interval=0.5, what="a submission on 2 of 3 nodes")
    nc = await nats.connect(
        alive.split(","), user="bootstrap", password=passwords["bootstrap"], inbox_prefix="_INBOX_bootstrap"
    )
    try:
        info = await nc.jetstream().stream_info("CADRE_TASKS")
        assert info.state.messages >= 1 and info.cluster is not None and info.cluster.leader != leader
        print(f"task {task_id} stored after losing {leader}; new leader {info.cluster.leader}")
    finally:
        await nc.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make test certificates")
async def test_the_tls_config_serves_only_tls_with_the_same_users(
    passwords: dict[str, str], tmp_path: Path
) -> None:
    certs = tmp_path / "tls"
    subprocess.run([str(ROOT / "deploy/scripts/gen-tls.sh"), str(certs), "localhost"], check=True)
    conf_dir = tmp_path / "nats"
    conf_dir.mkdir()
    for name in ("nats.conf", "accounts.conf"):
        shutil.copy(NATS_DIR / name, conf_dir / name)
    tls_conf = (NATS_DIR / "tls.conf").read_text().replace("/etc/nats/tls/", f"{certs}/")
    (conf_dir / "tls.conf").write_text(tls_conf)
    server = NatsServer(config=conf_dir / "tls.conf", extra_args=["-m", "-1"]).start()
    try:
        url = f"tls://localhost:{server.port}"
        settings = user_settings(url, passwords, "bootstrap", nats_tls_ca=certs / "ca.pem")
        await bootstrap(settings, deadline=10)
        async with CadreClient.connect(
            user_settings(url, passwords, "client", nats_tls_ca=certs / "ca.pem")
        ) as c:
            task_id = await c.submit(TaskSubmission(message_id="", task=TaskBody(description="over TLS")))
            assert task_id
        # a client that does not speak TLS is turned away
        with pytest.raises((NoServersError, OSError, ssl.SSLError, nats.errors.Error)):
            await nats.connect(
                [f"nats://127.0.0.1:{server.port}"],
                user="client",
                password=passwords["client"],
                allow_reconnect=False,
                connect_timeout=2,
            )
    finally:
        server.stop()
