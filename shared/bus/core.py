"""The bus: connect to NATS, create the JetStream topology, move artifacts.

``Bus`` wraps one NATS connection plus its JetStream context, the workflow
KV bucket and the artifact object store, all named from the settings' prefix.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from shared.bus.settings import BusSettings
from shared.contract.errors import NotConnected
from shared.contract.protocol import AGENT_ROLES, PRIORITIES, ArtifactRef, DeadLetter, encode, now
from shared.contract.subjects import Subjects

__all__ = [
    "ArtifactRefused",
    "Bus",
    "PubAck",
    "check_artifact",
    "check_artifact_ref",
    "connect",
    "decode_pub_ack",
    "ensure_topology",
]

logger = logging.getLogger(__name__)

# How long a publish waits for the store's ack (nats.py's JetStream default).
_PUBLISH_TIMEOUT = 5.0


async def connect(settings: BusSettings, name: str, *, retry_forever: bool = True) -> NATS:
    """Connect with reconnect-forever and clear logs on every state change.

    With ``retry_forever`` the first connection is retried too (a service
    started before its server, as docker-compose may do); the CLI passes
    ``False`` so a user gets a clear "no server reachable" at once.
    """

    async def on_disconnect() -> None:
        logger.warning("nats disconnected name=%s", name)

    async def on_reconnect() -> None:
        logger.warning("nats reconnected name=%s url=%s", name, nc.connected_url)

    async def on_error(err: Exception) -> None:
        logger.warning("nats error name=%s err=%s", name, err)

    async def on_closed() -> None:
        logger.info("nats connection closed name=%s", name)

    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "connect_timeout": settings.connect_timeout,
        "inbox_prefix": settings.inbox_prefix,
        "allow_reconnect": True,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "error_cb": on_error,
        "closed_cb": on_closed,
    }
    if settings.creds_file:
        options["user_credentials"] = str(settings.creds_file)
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password or ""
    if settings.nats_tls_ca:
        import ssl

        ctx = ssl.create_default_context(cafile=str(settings.nats_tls_ca))
        options["tls"] = ctx
    if not retry_forever:
        # nats-py only enforces a positive limit; 0 would mean "forever" on a refused server
        options["max_reconnect_attempts"] = 1
        options["allow_reconnect"] = False
    try:
        nc = await nats.connect(**options)
    except Exception as exc:  # nats raises several unrelated types here
        raise NotConnected(settings.nats_url, str(exc) or type(exc).__name__) from exc
    if not retry_forever:
        # from here on, a long-lived CLI follow should survive a blip
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
    logger.info("nats connected name=%s url=%s", name, nc.connected_url)
    return nc


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # exists with another config: bring it to ours
        await js.update_stream(config)


async def ensure_topology(js: JetStreamContext, settings: BusSettings) -> None:
    """Create (or update) every stream, consumer, bucket and store. Idempotent."""
    s = settings.subjects

    def queue(name: str, subject: str) -> StreamConfig:
        """A work queue: each message is kept until one consumer acks it."""
        return StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=settings.dedup_window,
            storage=StorageType.FILE,
            num_replicas=settings.js_replicas,
        )

    def kept(
        name: str,
        subjects: list[str],
        max_age: float,
        max_bytes: int,
        *,
        discard: DiscardPolicy = DiscardPolicy.OLD,
        dedup: bool = True,
        allow_direct: bool | None = None,
    ) -> StreamConfig:
        """A stream kept by age and size (every stream has a size cap)."""
        return StreamConfig(
            name=name,
            subjects=subjects,
            allow_direct=allow_direct,
            retention=RetentionPolicy.LIMITS,
            max_age=max_age,
            max_bytes=max_bytes,
            discard=discard,
            duplicate_window=settings.dedup_window if dedup else 0,
            storage=StorageType.FILE,
            num_replicas=settings.js_replicas,
        )

    streams = [
        queue(s.stream_tasks, s.task_submit_all),
        queue(s.stream_work, s.work_all()),
        queue(s.stream_results, s.step_result_all),
        # clients read single messages by direct get with the subject in the request
        # subject, which the server's permissions can pin to the client's own name
        kept(
            s.stream_events,
            [s.events_all, s.result_all, s.refused_all],
            settings.events_max_age,
            settings.events_max_bytes,
            allow_direct=True,
        ),
        # a full uploads stream refuses the next upload (its sender gets the error) rather
        # than dropping another client's pending one
        kept(
            s.stream_uploads,
            [s.upload_all],
            settings.upload_max_age,
            settings.uploads_max_bytes,
            discard=DiscardPolicy.NEW,
        ),
        # result artifacts the orchestrator offers each client, under its name
        # (shared/bus/downloads.py); read only by direct get by subject
        kept(
            s.stream_downloads,
            [s.download_all],
            settings.artifacts_max_age,
            settings.downloads_max_bytes,
            allow_direct=True,
        ),
        kept(
            s.stream_metrics,
            [s.metrics_all],
            settings.metrics_max_age,
            settings.metrics_max_bytes,
            dedup=False,
        ),
        kept(
            s.stream_dead_letters,
            [s.dead_letter_all],
            settings.dead_letters_max_age,
            settings.dead_letters_max_bytes,
            dedup=False,
        ),
    ]
    for config in streams:
        await _ensure_stream(js, config)

    def durable(name: str, subject: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=name,
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=settings.max_deliver,
            max_ack_pending=1000,
        )

    for role in AGENT_ROLES:
        for priority in PRIORITIES:
            await js.add_consumer(
                s.stream_work, durable(s.work_consumer(role, priority), s.work(role, priority))
            )
    await js.add_consumer(s.stream_tasks, durable(s.intake_consumer, s.task_submit_all))
    await js.add_consumer(s.stream_results, durable(s.results_consumer, s.step_result_all))

    try:
        await js.key_value(s.kv_workflows)
        await _allow_direct_gets(js, f"KV_{s.kv_workflows}")
    except (NotFoundError, BadRequestError):
        # direct gets: a KV read is the raw value with headers (one request, no JSON or base64 to
        # unpack), the orchestrator's most frequent read. nats.go makes KV buckets this way.
        await js.create_key_value(
            KeyValueConfig(
                bucket=s.kv_workflows, history=settings.kv_history, replicas=settings.js_replicas, direct=True
            )
        )
    try:
        await js.object_store(s.object_store)
    except (NotFoundError, BadRequestError):
        await js.create_object_store(
            s.object_store, ObjectStoreConfig(replicas=settings.js_replicas, ttl=settings.artifacts_max_age)
        )


async def _allow_direct_gets(js: JetStreamContext, stream: str) -> None:
    """Turn on direct gets for a bucket created before they were the default here (idempotent)."""
    info = await js.stream_info(stream)
    if not info.config.allow_direct:
        info.config.allow_direct = True
        await js.update_stream(info.config)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str | None = None


class PubAck(msgspec.Struct):
    """JetStream's answer to a publish: where the message was stored (or that it was a duplicate)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: _ApiError | None = None


_pub_ack_decoder = msgspec.json.Decoder(PubAck)


def decode_pub_ack(data: bytes) -> PubAck:
    """A publish ack, decoded in one msgspec call (nats.py: ``json.loads`` and a dataclass per ack).

    A refusal raises the same ``nats.js.errors`` type nats.py raises for it.
    """
    ack = _pub_ack_decoder.decode(data)
    if ack.error is not None:
        APIError.from_error(
            {"code": ack.error.code, "err_code": ack.error.err_code, "description": ack.error.description}
        )
    return ack


class _AckMux:
    """Acks of many in-flight publishes on one wildcard inbox subscription, decoded by msgspec.

    What nats.py's ``publish_async`` does, without its per-publish NUID token, semaphore
    and ``json.loads`` plus dataclass per ack.
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.pending: dict[str, asyncio.Future[PubAck]] = {}
        self._n = 0
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        fut = self.pending.pop(msg.subject, None)
        if fut is None or fut.done():
            return  # given up on (the publisher's bound passed)
        if (msg.headers or {}).get("Status") == "503":  # no stream listens on the subject
            fut.set_exception(NoStreamResponseError())
            return
        try:
            fut.set_result(decode_pub_ack(msg.data))
        except Exception as exc:  # a refusal, or an answer that is no ack
            fut.set_exception(exc)

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[PubAck]:
        self._n += 1
        reply = f"{self.prefix}.{self._n}"
        fut: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self.pending[reply] = fut
        fut.add_done_callback(lambda _: self.pending.pop(reply, None))
        try:
            await self.nc.publish(subject, data, reply=reply, headers=headers)
        except BaseException:
            fut.cancel()
            raise
        return fut


@dataclass
class Bus:
    """A connected service's handle on NATS and JetStream."""

    nc: NATS
    settings: BusSettings
    js: JetStreamContext = field(init=False)
    _kv: KeyValue | None = field(default=None, init=False)
    _store: ObjectStore | None = field(default=None, init=False)
    _acks: _AckMux | None = field(default=None, init=False)
    _acks_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        self.js = self.nc.jetstream()

    @classmethod
    async def open(cls, settings: BusSettings, name: str, *, retry_forever: bool = True) -> Bus:
        nc = await connect(settings, name, retry_forever=retry_forever)
        bus = cls(nc, settings)
        if settings.bootstrap:
            await bus._bootstrap(retry_forever)
        return bus

    async def _bootstrap(self, retry: bool) -> None:
        """Create the topology; with ``retry``, wait out a server that is (re)starting.

        A JetStream that does not answer yet (timeout, no responders, 503) is retried with
        backoff; any other refusal (e.g. a stream config the server rejects) is raised.
        """
        delay = 0.5
        while True:
            try:
                await ensure_topology(self.js, self.settings)
                return
            except (TimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
                if not retry:
                    raise
                logger.warning(
                    "jetstream not ready (%s); retrying topology in %.1fs", type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @property
    def subjects(self) -> Subjects:
        return self.settings.subjects

    async def close(self) -> None:
        # the services drained their own work before this; flush what is buffered and close
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- publishing -----------------------------------------------------------
    async def publish(self, subject: str, msg: msgspec.Struct, *, msg_id: str | None = None) -> PubAck:
        """Publish to a stream and wait for the store's ack (dedup on ``msg_id``)."""
        return await self.publish_bytes(subject, encode(msg), msg_id=msg_id)

    async def publish_bytes(self, subject: str, data: bytes, *, msg_id: str | None = None) -> PubAck:
        """Publish encoded bytes to a stream and wait for the store's ack (dedup on ``msg_id``).

        What ``js.publish`` does (one request, the same errors), with the ack decoded by msgspec.
        """
        ack = await self.publish_async(subject, data, msg_id=msg_id)
        try:
            async with asyncio.timeout(_PUBLISH_TIMEOUT):
                return await ack
        finally:
            ack.cancel()  # no-op once answered; forgets the reply subject after a timeout

    async def publish_async(
        self, subject: str, data: bytes, *, msg_id: str | None = None
    ) -> asyncio.Future[PubAck]:
        """Send to a stream without waiting; the returned future gets the store's ack.

        For sending several records at once and awaiting their acks together (the
        orchestrator's outbox). A future nobody awaits to the end should be cancelled.
        """
        if self._acks is None:
            async with self._acks_lock:
                if self._acks is None:
                    mux = _AckMux(self.nc)
                    await mux.start()
                    self._acks = mux
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        return await self._acks.publish(subject, data, headers)

    async def dead_letter(
        self,
        service: str,
        subject: str,
        payload: bytes,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Keep an unusable message with the reason; never drop it silently."""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = "base64:" + base64.b64encode(payload).decode("ascii")
        record = DeadLetter(
            service=service,
            subject=subject,
            reason=reason,
            payload=text,
            received_at=now(),
            headers={k: str(v) for k, v in (headers or {}).items()},
        )
        logger.warning("dead-letter service=%s subject=%s reason=%s", service, subject, reason)
        await self.publish(self.subjects.dead_letter(service), record)

    # --- KV and object store ----------------------------------------------------
    async def workflows(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(self.subjects.kv_workflows)
        return self._kv

    async def store(self) -> ObjectStore:
        if self._store is None:
            self._store = await self.js.object_store(self.subjects.object_store)
        return self._store

    async def put_artifact(
        self, data: bytes, *, content_type: str = "application/gzip", description: str = ""
    ) -> ArtifactRef:
        """Store bytes under their content hash and return a reference."""
        digest = hashlib.sha256(data).hexdigest()
        store = await self.store()
        try:
            info = await store.get_info(digest)
            if info.size == len(data):
                return ArtifactRef(
                    name=digest,
                    size=len(data),
                    sha256=digest,
                    content_type=content_type,
                    description=description,
                )
        except NotFoundError:
            pass
        await store.put(digest, data)
        return ArtifactRef(
            name=digest, size=len(data), sha256=digest, content_type=content_type, description=description
        )

    async def get_artifact(self, ref: ArtifactRef) -> bytes:
        store = await self.store()
        result = await store.get(ref.name)
        data = result.data or b""
        check_artifact(ref, data)
        return data


# --- artifact trust checks (docs/security.md "Artifacts") -------------------------------------

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ArtifactRefused(ValueError):
    """An artifact reference or its content that cannot be trusted."""


def check_artifact_ref(ref: ArtifactRef, *, max_bytes: int | None = None) -> None:
    """Refuse a reference that is not content-addressed (name = sha256) or claims too many bytes."""
    if not _SHA256_HEX.match(ref.sha256) or ref.name != ref.sha256:
        raise ArtifactRefused(
            f"artifact {ref.name[:80]!r} is not named by its sha256: every artifact is stored under its content hash"
        )
    if ref.size < 0:
        raise ArtifactRefused(f"artifact {ref.name} claims a negative size ({ref.size})")
    if max_bytes is not None and ref.size > max_bytes:
        raise ArtifactRefused(f"artifact {ref.name} is {ref.size} bytes; the limit is {max_bytes}")


def check_artifact(ref: ArtifactRef, data: bytes) -> None:
    """Refuse downloaded bytes that do not hash to the name they were stored under.

    Object names are content hashes, so a replaced or corrupted object is
    caught here whoever wrote it.
    """
    check_artifact_ref(ref)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise ArtifactRefused(
            f"artifact {ref.name} does not hash to its name (content sha256 {digest}): replaced or corrupt"
        )
