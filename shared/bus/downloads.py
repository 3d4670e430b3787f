"""Client downloads: the result artifacts a task's client may read, and nobody else.

Clients have no access to the object store (it would let any client read
every client's workspaces: the object-store read API also reads by sequence
number, which no permission can narrow to one client's objects). When a task
ends, the orchestrator copies the artifacts its ``FinalResult`` names (the
final and the submitted workspace, step artifacts, offloaded step outputs)
into the downloads stream as chunks on
``<prefix>.download.<client>.<sha256>.<n>``. A client reads them by direct
get by subject (``$JS.API.DIRECT.GET.<stream>.<subject>``), which the server's
permissions pin to ``...download.<its name>.>``: one client cannot read
another's downloads (docs/security.md, "Artifacts").

Why a stream and not a bucket per client: one stream serves any number of
clients with no per-client topology (adding a client is one user block in the
NATS config, nothing to create), and reading it needs no consumer and no
stream-wide API, so the permission can name the subject exactly. It mirrors
``shared.bus.uploads``; chunks are content-addressed and checked on read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from nats.js.errors import NotFoundError

from shared.bus.core import ArtifactRefused, Bus, check_artifact, check_artifact_ref
from shared.bus.uploads import CHUNK_BYTES
from shared.contract.errors import CadreError
from shared.contract.protocol import ArtifactRef, FinalResult
from shared.contract.subjects import token

__all__ = ["offered_refs", "offer", "offer_result", "fetch", "NotOffered"]

logger = logging.getLogger(__name__)


class NotOffered(CadreError):
    """An artifact this client cannot download: never offered to it, expired, or another client's."""

    def __init__(self, ref: ArtifactRef, client: str, detail: str) -> None:
        self.ref = ref
        self.client = client
        super().__init__(
            f"artifact {ref.name} is not available to client {client!r} ({detail}): only the artifacts "
            "of its own tasks' results are, for as long as the downloads stream keeps them"
        )


def _chunks(size: int) -> int:
    return max(1, math.ceil(size / CHUNK_BYTES))


def offered_refs(result: FinalResult) -> list[ArtifactRef]:
    """Every artifact a result names (its artifacts and the steps' offloaded outputs), once each."""
    refs: dict[str, ArtifactRef] = {}
    for ref in result.artifacts.values():
        refs.setdefault(ref.name, ref)
    for step in result.steps:
        if step.output_ref is not None:
            refs.setdefault(step.output_ref.name, step.output_ref)
    return list(refs.values())


async def _has(bus: Bus, client: str, ref: ArtifactRef) -> bool:
    """True when the last chunk of ``ref`` is already offered to ``client`` (a re-flush is a no-op)."""
    s = bus.subjects
    try:
        await bus.js.get_last_msg(s.stream_downloads, s.download(client, ref.sha256, _chunks(ref.size) - 1))
    except NotFoundError:
        return False
    return True


async def offer(bus: Bus, client: str, refs: Iterable[ArtifactRef]) -> int:
    """Copy ``refs`` from the object store into ``client``'s downloads; the number copied.

    Each artifact is read through ``Bus.get_artifact`` (checked against its hash)
    and published in chunks with dedup ids. An artifact that cannot be copied is
    logged and skipped: the task's result must not wait on it (the client's
    download then says it is not available).
    """
    client = token(client)
    s = bus.subjects
    copied = 0
    for ref in refs:
        try:
            check_artifact_ref(ref)
            if await _has(bus, client, ref):
                continue
            data = await bus.get_artifact(ref)
            for n in range(_chunks(len(data))):
                await bus.js.publish(
                    s.download(client, ref.sha256, n),
                    data[n * CHUNK_BYTES : (n + 1) * CHUNK_BYTES],
                    headers={"Nats-Msg-Id": f"download.{client}.{ref.sha256}.{n}"},
                )
            copied += 1
        except Exception as exc:  # noqa: BLE001 - one artifact must not hold back the result
            logger.warning("download offer failed client=%s artifact=%s err=%s", client, ref.name[:80], exc)
    return copied


async def offer_result(bus: Bus, client: str, result: FinalResult) -> int:
    """Offer ``client`` every artifact its task's ``result`` names."""
    return await offer(bus, client, offered_refs(result))


async def fetch(bus: Bus, client: str, ref: ArtifactRef) -> bytes:
    """The bytes of an artifact offered to ``client``, read by direct get by subject.

    Reads exactly the chunks ``ref.size`` implies, stops once past that size,
    and checks the bytes against the sha256 they are named by
    (``ArtifactRefused``). ``NotOffered`` when a chunk is missing.
    """
    check_artifact_ref(ref)
    s = bus.subjects
    parts: list[bytes] = []
    total = 0
    for n in range(_chunks(ref.size)):
        try:
            msg = await bus.js.get_last_msg(
                s.stream_downloads, s.download(token(client), ref.sha256, n), direct=True
            )
        except NotFoundError as exc:
            raise NotOffered(ref, client, f"chunk {n} is missing") from exc
        total += len(msg.data or b"")
        if total > ref.size:
            raise ArtifactRefused(f"artifact {ref.name} holds more than the {ref.size} bytes it claims")
        parts.append(msg.data or b"")
    data = b"".join(parts)
    check_artifact(ref, data)
    return data
