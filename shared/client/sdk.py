"""The async client SDK: submit a task, follow its events, read its result, cancel it, watch health.

``CadreClient`` is what the ``cadre`` CLI uses and what a Python program
embedding Cadre should use. It speaks only the documented wire contract
(``docs/wire-protocol.md``): tasks go to the task stream with the message id
as dedup key; events and the final result are read back from the events
stream, so a late reader replays a task from its first event.

    async with CadreClient.connect(settings) as client:
        task_id = await client.submit(TaskSubmission(...), workspace_dir=Path("src"))
        async for event in client.events(task_id):
            print(event.text)
        result = await client.result(task_id, timeout=60)
        await client.download_workspace(task_id, Path("fixed"))     # the patched tree
        Path("fix.patch").write_text(await client.workspace_patch(task_id))
        snap = await client.snapshot()          # the monitor's Snapshot: health, instances, figures

Every method returns typed values (``shared.contract`` structs): no JSON dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NoStreamResponseError, NotFoundError
from nats.micro.service import DEFAULT_PREFIX as SRV_PREFIX

from shared.bus import downloads, uploads
from shared.bus.core import ArtifactRefused, Bus
from shared.bus.settings import BusSettings
from shared.client import reqreply
from shared.client.reqreply import PermissionDenied
from shared.client.settings import ClientSettings
from shared.client.wstree import FileChange, changed_files, git_patch, read_tree, write_tree
from shared.contract.errors import CadreError, NotConnected, TaskNotFound
from shared.contract.monitoring import (
    AgentStatus,
    Alert,
    Snapshot,
    agent_status_decoder,
    alert_decoder,
    snapshot_decoder,
)
from shared.contract.protocol import (
    FINAL_EVENT_KINDS,
    ArtifactRef,
    BoundedDecoder,
    CancelReply,
    CancelRequest,
    FinalResult,
    TaskEvent,
    TaskSubmission,
    cancel_reply_decoder,
    encode,
    error_decoder,
    event_decoder,
    new_id,
    now,
    result_decoder,
)
from shared.contract.subjects import Subjects, token
from shared.contract.workspace import pack_dir

__all__ = [
    "CadreClient",
    "ServiceInfo",
    "Download",
    "FINAL_KINDS",
    "NoService",
    "NoDeployment",
    "NoWorkspace",
    "ArtifactCorrupt",
    "PermissionDenied",
    "OPERATOR_LOGIN",
]

logger = logging.getLogger(__name__)

# Event kinds after which the orchestrator publishes nothing more for a task.
FINAL_KINDS = frozenset(FINAL_EVENT_KINDS)

# what a client login is told when it asks for the operator's views (docs/deployment.md)
OPERATOR_LOGIN = (
    "this needs the operator login: CADRE_NATS_USER=operator, CADRE_NATS_PASSWORD=<CADRE_PW_OPERATOR>,"
    " CADRE_INBOX_PREFIX=_INBOX_operator (docs/deployment.md)"
)

_POLL = 0.5  # how long one wait on a subscription blocks before re-checking deadlines


class NoService(CadreError):
    """Nobody answers a request subject (the service is not running)."""

    def __init__(self, service: str, subject: str) -> None:
        self.service = service
        self.subject = subject
        super().__init__(f"no {service} is answering on {subject} (is it running?)")


class NoDeployment(CadreError):
    """The server is reachable but holds no Cadre streams for this prefix."""

    def __init__(self, settings: BusSettings, stream: str) -> None:
        self.stream = stream
        super().__init__(
            f"no Cadre deployment with prefix {settings.prefix!r} at {settings.nats_url} "
            f"(stream {stream} does not exist): start one with `cadre up`"
        )


class NoWorkspace(CadreError):
    """The task's result names no workspace of the kind asked for (e.g. a research task without code)."""

    def __init__(self, task_id: str, which: str) -> None:
        self.task_id = task_id
        self.which = which
        super().__init__(f"task {task_id} has no {which.replace('_', ' ')} artifact in its result")


class ArtifactCorrupt(CadreError):
    """A downloaded artifact whose bytes do not match the sha256 (or size) it is named by."""

    def __init__(self, ref: ArtifactRef, detail: str) -> None:
        self.ref = ref
        super().__init__(f"artifact {ref.name} is corrupt: {detail}; nothing was written")


@dataclass(frozen=True)
class Download:
    """What ``download_workspace`` wrote: the folder, the files, the artifact it came from."""

    dest: Path
    files: list[Path]
    artifact: ArtifactRef


@dataclasses.dataclass
class _FreshName(ConsumerConfig):
    """A consumer config that draws a new consumer name every time a consumer is created from it.

    A named consumer is created on the extended subject
    ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``, the one create form
    whose filter the server checks against the request, so the NATS
    permissions can pin a client's consumers to its own subjects
    (``...CREATE.<stream>.*.<prefix>.events.<client>.>``). nats-py re-creates an
    ordered consumer from the same config after a gap; a fresh name keeps that
    from colliding with the old one. ``JetStreamManager.add_consumer`` begins
    with ``config.evolve(...)``: that is where the name is drawn.
    """

    def evolve(self, **params: Any) -> _FreshName:
        return dataclasses.replace(self, **{"name": new_id("c"), **params})


class ServiceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One nats micro service instance's answer to ``$SRV.PING``."""

    name: str
    id: str
    version: str = ""
    metadata: dict[str, str] = {}


_ping_decoder = msgspec.json.Decoder(ServiceInfo)
_T = TypeVar("_T")


async def _probe(settings: BusSettings) -> None:
    """Fail fast with the socket's own reason when no server accepts a connection.

    (nats-py keeps retrying a refused server even with reconnects off, so the
    client checks reachability itself before connecting.)
    """
    last: Exception | None = None
    for url in settings.servers:
        parsed = urlsplit(url if "://" in url else f"nats://{url}")
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
            return  # websocket and friends: let nats-py deal with them
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parsed.hostname, parsed.port or 4222), settings.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            last = exc
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    reason = (str(last) or type(last).__name__) if last else "no server URL"
    raise NotConnected(settings.nats_url, reason)


class CadreClient:
    """A connection to one Cadre deployment (one NATS server set and one prefix)."""

    def __init__(self, bus: Bus, settings: ClientSettings | None = None) -> None:
        self.bus = bus
        self.settings: BusSettings = settings or bus.settings
        # this client's name on the bus: what it submits under and reads back under (the
        # server's permissions pin a client user to its own name; docs/security.md).
        # CADRE_CLIENT_NAME (ClientSettings), else the connection's NATS user, else "client".
        self.client_name = (
            settings.upload_name() if settings is not None else token(bus.settings.nats_user or "client")
        )
        self._submitted: dict[str, str] = {}  # task id -> message id, for this client's submissions

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, settings: ClientSettings, name: str = "cadre-client"
    ) -> AsyncIterator[CadreClient]:
        """Connect (failing at once with ``NotConnected`` when no server answers) and close on exit.

        The client never creates streams: that is the services' job, and a
        least-privilege client account may not be allowed to.
        """
        await _probe(settings)
        opening = Bus.open(settings.model_copy(update={"bootstrap": False}), name, retry_forever=False)
        try:
            # bounded: a server that accepts TCP but never speaks NATS must not hang a CLI command
            bus = await asyncio.wait_for(opening, settings.connect_timeout * 2)
        except TimeoutError as exc:
            raise NotConnected(settings.nats_url, "no NATS handshake (timed out)") from exc
        try:
            yield cls(bus, settings)
        finally:
            await bus.close()

    @property
    def subjects(self) -> Subjects:
        return self.bus.subjects

    # --- submit ------------------------------------------------------------------------------
    async def submit(self, task: TaskSubmission, *, workspace_dir: Path | None = None) -> str:
        """Publish a task and return its id once the task stream stored it.

        Fills what the caller left empty: ``message_id``, ``task_id`` (``task_<message_id>``,
        so submitting the same message again is the same task) and ``created_at``. ``workspace_dir`` is packed and
        uploaded (``shared.bus.uploads``, under this client's name) as the task's code workspace.
        """
        message_id = task.message_id or new_id("msg")
        # the orchestrator's own derivation when no id is given, so a re-send of the same
        # message maps to the same task (intake is idempotent per client and message id)
        task_id = task.task_id or f"task_{message_id}"
        fields: dict[str, Any] = {
            "task_id": task_id,
            "message_id": message_id,
            "created_at": task.created_at or now(),
        }
        if workspace_dir is not None:
            data = await asyncio.to_thread(pack_dir, Path(workspace_dir))
            # into the uploads stream under this client's own name (never the shared object store)
            fields["workspace"] = await uploads.upload(
                self.bus, data, description=f"workspace ({Path(workspace_dir).name})", client=self.client_name
            )
        task = msgspec.structs.replace(task, **fields)
        subject = self.subjects.task_submit(self.client_name)
        before = self.bus.nc.last_error
        try:
            # no Nats-Msg-Id: the stream's dedup is shared by every client, so another client that
            # knows this message id could have the stream drop this submission as a duplicate;
            # the orchestrator recognises a re-send by (client, message id) instead
            await self.bus.js.publish(subject, encode(task))
        except NoStreamResponseError as exc:
            raise NoDeployment(self.settings, self.subjects.stream_tasks) from exc
        except NatsTimeoutError as exc:
            # a refused publish gets no ack: say so rather than "timeout" (e.g. the operator login)
            if self.bus.nc.last_error is not before and reqreply.refusal_of(self.bus.nc.last_error, subject):
                user = self.settings.nats_user or "(this login)"
                raise PermissionDenied(user, subject, "submit tasks", "submit with a client login") from exc
            raise
        self._submitted[task_id] = task.message_id
        logger.info("task submitted task=%s message_id=%s", task_id, task.message_id)
        return task_id

    # --- read back ---------------------------------------------------------------------------
    async def _last(self, subject: str) -> bytes | None:
        """The last message on one of this client's subjects of the events stream (direct get), or None."""
        s = self.subjects
        try:
            raw = await self.bus.js.get_last_msg(s.stream_events, subject, direct=True)
        except NotFoundError:
            return None
        except NoRespondersError as exc:
            raise NoDeployment(self.settings, s.stream_events) from exc
        return raw.data or b""

    async def _follow(self, subject: str, deliver_policy: DeliverPolicy) -> Any:
        """An ordered consumer on one of this client's subjects (a named create, see ``_FreshName``)."""
        s = self.subjects
        try:
            return await self.bus.js.subscribe(
                subject,
                stream=s.stream_events,
                ordered_consumer=True,
                deliver_policy=deliver_policy,
                config=_FreshName(),
            )
        except NotFoundError as exc:
            raise NoDeployment(self.settings, s.stream_events) from exc

    async def exists(self, task_id: str) -> bool:
        """True when the events stream holds any event or a result of this client's task."""
        s = self.subjects
        for subject in (s.events_of(self.client_name, task_id), s.result(self.client_name, task_id)):
            if await self._last(subject) is not None:
                return True
        return False

    async def events(
        self,
        task_id: str,
        *,
        replay: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109 - SDK API
    ) -> AsyncIterator[TaskEvent]:
        """The task's events in order, ending after its final event.

        ``replay`` starts from the first stored event (a late reader sees the
        whole trace); otherwise only new events arrive. ``timeout`` bounds the
        whole wait (``TimeoutError``); undecodable events are logged and skipped.
        For a task this client submitted, a refusal of that submission ends the
        iteration with a ``rejected`` event (its task id may be another task's).
        """
        s = self.subjects
        deadline = None if timeout is None else time.monotonic() + timeout
        next_check = 0.0
        sub = await self._follow(
            s.events_of(self.client_name, task_id), DeliverPolicy.ALL if replay else DeliverPolicy.NEW
        )
        try:
            while True:
                wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"task {task_id}: no final event within {timeout}s")
                if task_id in self._submitted and time.monotonic() >= next_check:
                    next_check = time.monotonic() + _POLL
                    refused = await self.refusal(task_id)
                    if refused is not None:
                        yield TaskEvent(
                            task_id=task_id,
                            kind="rejected",
                            text=f"[Orchestrator] Task rejected: {refused.reason}",
                            at=refused.finished_at,
                            detail=refused.reason,
                        )
                        return
                try:
                    msg = await sub.next_msg(timeout=wait)
                except (NatsTimeoutError, TimeoutError):
                    continue
                try:
                    event = event_decoder.decode(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    logger.warning("skipping undecodable event subject=%s err=%s", msg.subject, exc)
                    continue
                yield event
                if event.kind in FINAL_KINDS:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def last_result(self, task_id: str) -> FinalResult | None:
        """The stored final result of this client's task, or None when there is none (yet)."""
        raw = await self._last(self.subjects.result(self.client_name, task_id))
        return None if raw is None else result_decoder.decode(raw)

    async def refusal(self, task_id: str) -> FinalResult | None:
        """The orchestrator's refusal of this client's submission of ``task_id``, if it refused it.

        A refusal whose task id belongs to another task (a reused id) is only
        here, on ``refused.<client>.<message_id>``: never on the other task's result.
        """
        message_id = self._submitted.get(task_id)
        if not message_id:
            return None
        raw = await self._last(self.subjects.refused(self.client_name, message_id))
        return None if raw is None else result_decoder.decode(raw)

    async def result(self, task_id: str, timeout: float | None = None) -> FinalResult:  # noqa: ASYNC109
        """The task's final result, waiting up to ``timeout`` seconds (None: no bound).

        For a task this client submitted, a refusal of that submission
        (``refused.<client>.<message_id>``) is its result too. Raises ``TaskNotFound``
        when the bus holds nothing about the task (and this client did not
        submit it), ``TimeoutError`` when it is still running past ``timeout``.
        """
        found = await self.refusal(task_id) or await self.last_result(task_id)
        if found is not None:
            return found
        if task_id not in self._submitted and not await self.exists(task_id):
            raise TaskNotFound(task_id)
        if timeout is not None and timeout <= 0:
            raise TimeoutError(f"task {task_id} has no result yet")
        s = self.subjects
        subjects = [s.result(self.client_name, task_id)]
        if task_id in self._submitted:
            subjects.append(s.refused(self.client_name, self._submitted[task_id]))
        subs = [await self._follow(subject, DeliverPolicy.LAST_PER_SUBJECT) for subject in subjects]
        waits = [asyncio.ensure_future(sub.next_msg(timeout=timeout)) for sub in subs]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            msg = None
            for fut in done:
                with contextlib.suppress(NatsTimeoutError, TimeoutError):
                    msg = fut.result()
            if msg is None:
                raise TimeoutError(f"task {task_id}: no result within {timeout}s")
        finally:
            for fut in waits:
                fut.cancel()
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        return result_decoder.decode(msg.data)

    # --- the task's code: the patched workspace, the patch ------------------------------------------
    async def artifact(self, ref: ArtifactRef) -> bytes:
        """An artifact of one of this client's results, checked against the sha256 and size it is
        named by (``ArtifactCorrupt``). Read from this client's downloads (``shared.bus.downloads``);
        ``downloads.NotOffered`` when it is not there (another client's, or expired)."""
        try:
            data = await downloads.fetch(self.bus, self.client_name, ref)
        except ArtifactRefused as exc:
            raise ArtifactCorrupt(ref, str(exc)) from exc
        except NoRespondersError as exc:
            raise NoDeployment(self.settings, self.subjects.stream_downloads) from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256 or digest != ref.name:
            raise ArtifactCorrupt(ref, f"its sha256 is {digest}")
        if len(data) != ref.size:
            raise ArtifactCorrupt(ref, f"{len(data)} bytes, {ref.size} expected")
        return data

    async def workspace_files(self, task: str | FinalResult, which: str = "workspace") -> dict[str, bytes]:
        """A task's workspace as ``{path: content}``: ``workspace`` (the final, patched
        tree) or ``submitted_workspace`` (what was submitted). ``NoWorkspace`` when
        the result names none; ``ArtifactCorrupt`` / ``UnsafeWorkspace`` for bad bytes."""
        result = task if isinstance(task, FinalResult) else await self.result(task, timeout=0)
        ref = result.artifacts.get(which)
        if ref is None:
            raise NoWorkspace(result.task_id, which)
        return await asyncio.to_thread(read_tree, await self.artifact(ref))

    async def download_workspace(
        self, task: str | FinalResult, dest: Path, *, force: bool = False
    ) -> Download:
        """Write the task's final (patched) workspace into ``dest``.

        ``dest`` must be missing or empty unless ``force`` (then same-named files
        are overwritten, nothing is deleted); no path is written outside ``dest``.
        """
        result = task if isinstance(task, FinalResult) else await self.result(task, timeout=0)
        files = await self.workspace_files(result, "workspace")
        written = await asyncio.to_thread(write_tree, files, Path(dest), force=force)
        return Download(Path(dest), written, result.artifacts["workspace"])

    async def workspace_patch(self, task: str | FinalResult) -> str:
        """A git-apply-able unified diff from the submitted workspace to the final one ("" when unchanged)."""
        result = task if isinstance(task, FinalResult) else await self.result(task, timeout=0)
        before = await self.workspace_files(result, "submitted_workspace")
        after = await self.workspace_files(result, "workspace")
        return await asyncio.to_thread(git_patch, before, after)

    async def workspace_changes(self, task: str | FinalResult) -> list[FileChange]:
        """Per changed file: added / modified / deleted and lines in and out (submitted → final)."""
        result = task if isinstance(task, FinalResult) else await self.result(task, timeout=0)
        before = await self.workspace_files(result, "submitted_workspace")
        after = await self.workspace_files(result, "workspace")
        return changed_files(before, after)

    # --- control and queries ---------------------------------------------------------------------
    async def cancel(
        self,
        task_id: str,
        reason: str = "cancelled by user",
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> CancelReply:
        """Ask the orchestrator to cancel one of this client's tasks (request/reply)."""
        subject = self.subjects.task_cancel(self.client_name)
        request = CancelRequest(task_id=task_id, reason=reason)
        return await self._request(
            "orchestrator", subject, encode(request), cancel_reply_decoder, timeout, what="cancel tasks"
        )

    async def snapshot(self, timeout: float = 5.0) -> Snapshot:  # noqa: ASYNC109
        """The monitor's snapshot: agents, health, alerts, recent tasks and the spec's figures.

        It names every client's tasks, so only the operator login may ask for it;
        a client login gets ``PermissionDenied`` (docs/security.md).
        """
        return await self._request(
            "monitor",
            self.subjects.monitor_snapshot,
            b"",
            snapshot_decoder,
            timeout,
            what="read the monitor's snapshot",
            needs=OPERATOR_LOGIN,
        )

    async def agent_status(
        self,
        role: str,
        instance_id: str,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> AgentStatus:
        """One agent instance's own answer: what it holds now, whether it pulls, its counts.

        It names the tasks the agent holds: operator login only, like ``snapshot``.
        """
        subject = self.subjects.agent_status(role, instance_id)
        return await self._request(
            f"{role} {instance_id}",
            subject,
            b"",
            agent_status_decoder,
            timeout,
            what="read an agent's status",
            needs=OPERATOR_LOGIN,
        )

    @contextlib.asynccontextmanager
    async def alerts(self) -> AsyncIterator[AsyncIterator[Alert]]:
        """The monitor's alerts from now on (core NATS: no replay), as a typed stream.

            async with client.alerts() as alerts:
                async for alert in alerts:
                    print(alert.kind, alert.text)

        The subscription is in place when the ``async with`` body starts, so nothing
        raised after that is missed. The monitor keeps the recent ones in
        ``snapshot().alerts``. Undecodable messages are logged and skipped.
        """
        sub = await self.bus.nc.subscribe(self.subjects.alert_all)
        await self.bus.nc.flush()

        async def feed() -> AsyncIterator[Alert]:
            async for msg in sub.messages:
                try:
                    yield alert_decoder.decode(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    logger.warning("skipping undecodable alert subject=%s err=%s", msg.subject, exc)

        try:
            yield feed()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _request(
        self,
        service: str,
        subject: str,
        payload: bytes,
        decoder: BoundedDecoder[_T],
        timeout: float,  # noqa: ASYNC109
        *,
        what: str,
        needs: str = "",
    ) -> _T:
        """One request/reply: the typed answer, or a ``CadreError`` that says what went wrong.

        A request the server's permissions refuse is ``PermissionDenied`` at once
        (``shared.client.reqreply``), not a timeout.
        """
        user = self.settings.nats_user or "(this login)"
        try:
            msg = await reqreply.request(
                self.bus.nc, subject, payload, timeout, user=user, what=what, needs=needs
            )
        except NoRespondersError as exc:
            raise NoService(service, subject) from exc
        except (NatsTimeoutError, TimeoutError) as exc:
            raise CadreError(f"the {service} did not answer on {subject} within {timeout}s") from exc
        headers = msg.headers or {}
        if "Nats-Service-Error" in headers:
            detail = headers["Nats-Service-Error"]
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                err = error_decoder.decode(msg.data)
                detail = f"{err.code}: {err.message}"
            raise CadreError(f"the {service} refused the request on {subject}: {detail}")
        try:
            return decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CadreError(
                f"the {service} answered on {subject} with an unexpected message: {exc}"
            ) from exc

    async def services(self, wait: float = 0.5, names: Iterable[str] | None = None) -> list[ServiceInfo]:
        """Every Cadre service instance of this prefix answering nats micro ``$SRV.PING``.

        Collects replies for ``wait`` seconds (PING is a broadcast: there is
        no reply count to wait for). ``names`` narrows the ping to those names.
        """
        nc = self.bus.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        found: list[ServiceInfo] = []
        try:
            for subject in [f"{SRV_PREFIX}.PING.{n}" for n in names or ()] or [f"{SRV_PREFIX}.PING"]:
                await nc.publish(subject, b"", reply=inbox)
            await nc.flush()
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except (NatsTimeoutError, TimeoutError):
                    break
                with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                    info = _ping_decoder.decode(msg.data)
                    if info.metadata.get("prefix") == self.subjects.prefix:
                        found.append(info)
        finally:
            await sub.unsubscribe()
        return found
