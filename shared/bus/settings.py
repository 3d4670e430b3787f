"""Configuration every Cadre process shares: pydantic-settings with the ``CADRE_`` prefix.

``BusSettings`` holds the connection, stream topology and retention, identity,
heartbeat and logging knobs. Each service extends it with its own class
(``AgentSettings`` in ``shared/agent/settings.py``, ``OrchestratorSettings`` and
``MonitorSettings`` in their service packages, ``ClientSettings`` in
``shared/client/settings.py``), so a service cannot read a knob it does not have.
Built once in each ``__main__`` (``run_service``) and passed in; nothing else
reads the environment. The role is not a setting: each service knows its own.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.contract.subjects import Subjects

__all__ = ["BusSettings", "CommaList", "SETTINGS_CONFIG", "default_instance_id"]

# Every settings class: the same prefix. Another service's CADRE_* variables are not read (the
# environment source only looks up the class's own fields); a constructor argument that is not a
# field of the class is refused, so code cannot hand a service a knob it does not have.
SETTINGS_CONFIG = SettingsConfigDict(env_prefix="CADRE_", extra="forbid")


def default_instance_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}".replace(".", "-")


def _split_commas(v: object) -> object:
    if isinstance(v, str):
        if v.lstrip().startswith("["):
            return json.loads(v)
        return [p.strip() for p in v.split(",") if p.strip()]
    return v


T = TypeVar("T")

# A list read from one variable as ``a,b,c`` (or as a JSON list): ``CommaList[Path]``.
CommaList = Annotated[list[T], NoDecode, BeforeValidator(_split_commas)]


class BusSettings(BaseSettings):
    """What every process needs to reach the bus, shape its streams and say who it is."""

    model_config = SETTINGS_CONFIG

    # --- bus ---------------------------------------------------------------
    nats_url: str = Field("nats://127.0.0.1:4222", description="comma-separated server URLs")
    creds_file: Path | None = Field(None, description="NATS credentials file (JWT + nkey)")
    nats_user: str | None = Field(None, description="NATS user (one per service under least privilege)")
    nats_password: str | None = Field(None, description="that user's password")
    nats_tls_ca: Path | None = Field(None, description="CA certificate the server's TLS is checked against")
    inbox_prefix: str = Field(
        "_INBOX", description="reply-subject prefix; per-user (e.g. _INBOX_developer) under least privilege"
    )
    prefix: str = Field("cadre", description="subject, stream and bucket prefix: one deployment per prefix")
    bootstrap: bool = Field(True, description="create streams/buckets at start (off under least privilege)")
    js_replicas: int = Field(1, description="JetStream replicas of every stream and bucket (3 on a cluster)")
    dedup_window: float = Field(120.0, description="JetStream duplicate window of the streams (s)")
    ack_wait: float = Field(30.0, description="an unacknowledged message is redelivered after (s)")
    max_deliver: int = Field(5, description="deliveries of one message before it becomes a dead letter")
    connect_timeout: float = Field(5.0, description="bound on one connection attempt (s)")
    # --- retention: bounds on the server's disk and memory for a long-running deployment ------
    events_max_age: float = Field(3 * 24 * 3600.0, description="task traces and final results (s)")
    events_max_bytes: int = Field(256 * 1024**2, description="events stream size cap; oldest dropped")
    metrics_max_age: float = Field(3 * 24 * 3600.0, description="metric events the monitor replays (s)")
    metrics_max_bytes: int = Field(128 * 1024**2, description="metrics stream size cap; oldest dropped")
    dead_letters_max_age: float = Field(7 * 24 * 3600.0, description="dead letters (s)")
    dead_letters_max_bytes: int = Field(64 * 1024**2, description="dead-letter stream size cap")
    kv_history: int = Field(1, description="revisions kept per workflow key (writes are revision-checked)")
    artifacts_max_age: float = Field(7 * 24 * 3600.0, description="workspaces and large outputs (s)")
    upload_max_age: float = Field(24 * 3600.0, description="how long uploads stay in the uploads stream (s)")
    uploads_max_bytes: int = Field(
        1024**3,
        description="uploads stream size cap; when full, new uploads are refused (never others' evicted)",
    )
    downloads_max_bytes: int = Field(1024**3, description="downloads stream size cap; oldest dropped")

    # --- workspace limits (every unpacker: the orchestrator at the door, agents per step) ----
    max_workspace_bytes: int = Field(16 * 1024 * 1024, description="a workspace archive, packed")
    max_unpacked_bytes: int = Field(64 * 1024 * 1024, description="a workspace, unpacked")
    max_workspace_files: int = Field(5_000, description="files in a workspace")

    # --- identity and health ------------------------------------------------------
    instance_id: str = Field(
        default_factory=default_instance_id, description="this instance's name (host-pid)"
    )
    heartbeat_interval: float = Field(2.0, description="seconds between heartbeats")
    dead_after: float = Field(5.0, description="an instance silent this long is dead (s)")
    monitor_forget_after: float = Field(3600.0, description="drop a dead instance from the table after (s)")
    drain_timeout: float = Field(20.0, description="bound on finishing in-flight work after SIGTERM (s)")
    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR")

    @field_validator("prefix")
    @classmethod
    def _prefix_is_token(cls, v: str) -> str:
        Subjects(v)
        return v

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]
