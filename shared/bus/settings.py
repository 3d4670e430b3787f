"""Configuration for every service: pydantic-settings with the ``CADRE_`` prefix.

Built once in each ``__main__`` and passed in; nothing else reads the environment.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.contract.protocol import Concern
from shared.contract.subjects import Subjects

__all__ = ["Settings", "default_instance_id"]


def default_instance_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}".replace(".", "-")


class Settings(BaseSettings):
    """Every knob, with the defaults a single-machine deployment wants."""

    model_config = SettingsConfigDict(env_prefix="CADRE_", extra="ignore")

    # --- bus ---------------------------------------------------------------
    nats_url: str = Field("nats://127.0.0.1:4222", description="comma-separated server URLs")
    creds_file: Path | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_tls_ca: Path | None = None
    inbox_prefix: str = Field(
        "_INBOX", description="reply-subject prefix; per-user (e.g. _INBOX_developer) under least privilege"
    )
    prefix: str = "cadre"
    bootstrap: bool = Field(True, description="create streams/buckets at start (off under least privilege)")
    replicas: int = 1
    dedup_window: float = 120.0
    ack_wait: float = 30.0
    max_deliver: int = 5
    # --- retention: bounds on the server's disk and memory for a long-running deployment ------
    events_max_age: float = Field(3 * 24 * 3600.0, description="task traces and final results (s)")
    events_max_bytes: int = Field(256 * 1024**2, description="events stream size cap; oldest dropped")
    metrics_max_age: float = Field(3 * 24 * 3600.0, description="metric events the monitor replays (s)")
    metrics_max_bytes: int = Field(128 * 1024**2, description="metrics stream size cap; oldest dropped")
    dead_letters_max_age: float = Field(7 * 24 * 3600.0, description="dead letters (s)")
    dead_letters_max_bytes: int = Field(64 * 1024**2, description="dead-letter stream size cap")
    kv_history: int = Field(1, description="revisions kept per workflow key (writes are revision-checked)")
    artifacts_max_age: float = Field(7 * 24 * 3600.0, description="workspaces and large outputs (s)")
    connect_timeout: float = 5.0
    log_level: str = "INFO"

    # --- identity ------------------------------------------------------------
    role: str = "developer"
    instance_id: str = Field(default_factory=default_instance_id)
    heartbeat_interval: float = 2.0
    concurrency: int = 1
    drain_timeout: float = 20.0

    # --- brains ---------------------------------------------------------------
    brain: str = Field("builtin", description="builtin | llm | module:attribute")
    work_dir: Path = Path(".cadre/work")
    corpus_dirs: Annotated[list[Path], NoDecode] = []
    index_path: Path = Path(".cadre/research-index.sqlite")
    include_installed_packages: bool = True

    llm_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_api_key: str = "not-needed"
    llm_timeout: float = 120.0
    llm_max_retries: int = 4
    llm_price_input_per_1k: float = 0.0
    llm_price_output_per_1k: float = 0.0
    llm_json_mode: bool = Field(
        True, description="send response_format=json_object (turn off for servers that reject it)"
    )
    llm_context_chars: int = Field(60_000, description="bound on workspace text put in one prompt")

    # --- sandbox for workspace code (shared/tools/sandbox.py, shared/tools/testing.py) ------
    sandbox_allow_unsandboxed: bool = Field(
        False,
        description="run workspace code WITHOUT the bwrap sandbox where it is unavailable (unsafe, logged)",
    )
    sandbox_uid: int = Field(
        1_900_000_000,
        description="as root: first uid/gid of the range each concurrent sandbox gets its own uid from"
        " (uids no account or container on the host uses)",
    )
    sandbox_uid_count: int = Field(
        64, description="how many uids the range holds (concurrent sandboxes per host)"
    )
    sandbox_run_dir: Path = Field(
        Path("/run/cadre/sandbox-uids"),
        description="lock files of the leased uids; every agent process on the host must use the same one",
    )
    sandbox_cpu_seconds: int = 300
    sandbox_memory_mb: int = Field(2048, description="address-space limit of sandboxed processes")
    sandbox_max_processes: int = 256
    sandbox_file_size_mb: int = 256
    sandbox_wall_seconds: float = Field(600.0, description="upper bound on one sandboxed command (s)")
    env_cache_dir: Path = Field(
        Path(".cadre/envs"),
        description="per-project virtual environments (by dependency hash) and uv's cache",
    )
    env_install: bool = Field(
        True, description="install what a workspace declares (reaches the package index)"
    )
    env_allow_builds: bool = Field(
        False,
        description="build dependencies that have no wheel from source (runs their build code in the"
        " install sandbox, which has the network); off: wheels only, uv alone uses the network",
    )

    # --- orchestrator -----------------------------------------------------------
    step_deadline: float = 30 * 60.0
    max_attempts: int = 3
    review_threshold: int = Field(90, ge=0, le=100, description="passing review score out of 100")
    review_max_rounds: int = 3
    conflict_policy: Annotated[list[Concern], NoDecode] = [
        "security",
        "correctness",
        "performance",
        "style",
    ]
    tick_interval: float = 1.0
    workflow_retention: float = Field(
        24 * 3600.0,
        description="delete a finished workflow's KV key this long after it ended (s); its trace"
        " and final result stay on the events stream for events_max_age",
    )
    planner: Literal["template", "llm"] = "template"

    client_name: str = Field(
        "",
        description=(
            "the client's name on the bus: it submits, cancels, uploads and reads back under it "
            "(cadre.task.submit.<name>, cadre.events.<name>.>, ...); empty: nats_user, else 'client'"
        ),
    )
    upload_max_age: float = Field(24 * 3600.0, description="how long uploads stay in the uploads stream (s)")

    # --- intake limits (checked at the door; docs/security.md) --------------------
    max_description_bytes: int = Field(8 * 1024, description="task.description, UTF-8 bytes")
    max_requirements: int = Field(100, description="how many task.requirements")
    max_requirement_bytes: int = Field(2 * 1024, description="one requirement, UTF-8 bytes")
    max_input_bytes: int = Field(64 * 1024, description="task.input_data plus context, as JSON")
    max_input_depth: int = Field(16, description="nesting of objects/arrays in input_data and context")
    max_workspace_bytes: int = Field(16 * 1024 * 1024, description="a workspace archive, packed")
    max_unpacked_bytes: int = Field(64 * 1024 * 1024, description="a workspace, unpacked")
    max_workspace_files: int = Field(5_000, description="files in a workspace")

    # --- monitor ------------------------------------------------------------------
    monitor_http_host: str = "127.0.0.1"
    monitor_http_port: int = 8080
    monitor_http_port_fallback: bool = Field(
        False,
        description="when monitor_http_port is taken, bind a free port instead"
        " (cadre up turns this on unless the port was set explicitly)",
    )
    suspect_after: float = 2.5
    dead_after: float = 5.0
    monitor_check_interval: float = Field(0.5, description="how often health is re-evaluated (s)")
    monitor_discovery_interval: float = Field(10.0, description="how often $SRV.INFO/STATS is asked (s)")
    monitor_stall_interval: float = Field(
        2.0, description="how often each role's pending work is compared with its pulling instances (s)"
    )
    monitor_roles: Annotated[list[str], NoDecode] = ["orchestrator", "researcher", "developer", "reviewer"]
    monitor_forget_after: float = Field(3600.0, description="drop a dead instance from the table after (s)")
    monitor_recent_tasks: int = 20
    monitor_recent_alerts: int = 50
    monitor_replay_timeout: float = Field(60.0, description="bound on the start-up metric replay (s)")

    @field_validator("prefix")
    @classmethod
    def _prefix_is_token(cls, v: str) -> str:
        Subjects(v)
        return v

    @field_validator("corpus_dirs", "conflict_policy", "monitor_roles", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> object:
        if isinstance(v, str) and not v.lstrip().startswith("["):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]
