"""Client uploads: workspaces a client sends, kept apart per client until the orchestrator takes them.

Clients do not use the object store. A client publishes its workspace as
chunks on ``<prefix>.upload.<client>.<sha256>.<n>`` into the uploads stream;
the server's permissions let each client user publish only under its own
name, and no client may read the stream, list it or delete from it. So one
client cannot read, replace or delete another's upload (docs/security.md,
"Artifacts"). At intake the orchestrator reads the chunks, checks them
against the hash they are named by and the limits, and copies the workspace
into the object store for the agents.
"""

from __future__ import annotations

import hashlib
import math
import secrets

from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from shared.bus.core import ArtifactRefused, Bus, check_artifact, check_artifact_ref
from shared.contract.errors import CadreError
from shared.contract.protocol import ArtifactRef
from shared.contract.subjects import token

__all__ = ["CHUNK_BYTES", "upload", "fetch", "UploadFailed"]

CHUNK_BYTES = 256 * 1024  # well under the server's 1 MiB message limit


class UploadFailed(CadreError):
    """The uploads stream did not take a chunk (no deployment, or not this user's name)."""


async def upload(
    bus: Bus,
    data: bytes,
    *,
    description: str = "",
    content_type: str = "application/gzip",
    client: str | None = None,
) -> ArtifactRef:
    """Publish ``data`` as chunks under this client's name; the reference names its sha256.

    ``client`` is the name to upload under (``ClientSettings.upload_name()``); unset, the
    connection's NATS user, else ``client``.
    """
    client = token(client or bus.settings.nats_user or "client")
    digest = hashlib.sha256(data).hexdigest()
    chunks = max(1, math.ceil(len(data) / CHUNK_BYTES))
    s = bus.subjects
    # The stream deduplicates on Nats-Msg-Id across every client's subjects: an id another
    # client could compute (from a workspace's public sha256) and send first would make this
    # chunk a "duplicate" the stream drops. A token drawn per upload keeps the id unguessable.
    nonce = secrets.token_hex(12)
    for n in range(chunks):
        piece = data[n * CHUNK_BYTES : (n + 1) * CHUNK_BYTES]
        try:
            await bus.js.publish(
                s.upload(client, digest, n),
                piece,
                headers={"Nats-Msg-Id": f"upload.{client}.{digest}.{n}.{nonce}"},
            )
        except NoStreamResponseError as exc:
            raise UploadFailed(
                f"no uploads stream {s.stream_uploads} took {s.upload(client, digest, n)}: is the deployment "
                f"up, and may this user upload as {client!r} (CADRE_CLIENT_NAME)?"
            ) from exc
        except APIError as exc:  # e.g. the stream is full (CADRE_UPLOADS_MAX_BYTES): it refuses new uploads
            raise UploadFailed(
                f"the uploads stream {s.stream_uploads} refused chunk {n} of {chunks} "
                f"({len(data)} bytes): {exc.description or exc}"
            ) from exc
    return ArtifactRef(
        name=digest,
        size=len(data),
        sha256=digest,
        content_type=content_type,
        description=description,
        uploaded_by=client,
        chunks=chunks,
    )


async def fetch(bus: Bus, ref: ArtifactRef, max_bytes: int) -> bytes:
    """The bytes of an upload, refused (``ArtifactRefused``) unless whole, within ``max_bytes`` and
    hashing to their name. Reads at most ``ref.chunks`` chunks and stops once past ``ref.size``."""
    check_artifact_ref(ref, max_bytes=max_bytes)
    try:
        client = token(ref.uploaded_by)
    except ValueError as exc:
        raise ArtifactRefused(f"upload {ref.name} names no valid client ({ref.uploaded_by[:40]!r})") from exc
    expected = max(1, math.ceil(ref.size / CHUNK_BYTES))
    if ref.chunks != expected:
        raise ArtifactRefused(
            f"upload {ref.name}: {ref.size} bytes come in {expected} chunks, not {ref.chunks}"
        )
    s = bus.subjects
    parts: list[bytes] = []
    total = 0
    for n in range(ref.chunks):
        try:
            msg = await bus.js.get_last_msg(s.stream_uploads, s.upload(client, ref.sha256, n))
        except NotFoundError as exc:
            raise ArtifactRefused(
                f"upload {ref.name} by {client!r} is missing chunk {n} of {ref.chunks} (never sent, or expired)"
            ) from exc
        total += len(msg.data or b"")
        if total > ref.size:
            raise ArtifactRefused(f"upload {ref.name} holds more than the {ref.size} bytes it claims")
        parts.append(msg.data or b"")
    data = b"".join(parts)
    check_artifact(ref, data)
    return data
