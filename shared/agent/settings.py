"""What an agent process (researcher, developer, reviewer) is configured by.

``LLMSettings`` is the OpenAI-compatible endpoint (the LLM brains, and the
orchestrator's LLM planner, which extends it too); ``AgentSettings`` adds the
brain, its work folders, the research corpus, and the sandbox and per-project
environments that workspace code runs in (``shared/tools/sandbox.py``,
``shared/tools/testing.py``). Same ``CADRE_*`` names as ever.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from shared.bus.settings import SETTINGS_CONFIG, BusSettings, CommaList

__all__ = ["AgentSettings", "LLMSettings"]


class LLMSettings(BaseSettings):
    """An OpenAI-compatible chat endpoint (``shared/agent/llm.py``); unset URL: no model."""

    model_config = SETTINGS_CONFIG

    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://ollama:11434/v1"
    )
    llm_model: str = Field("gpt-4o-mini", description="model name the endpoint serves")
    llm_api_key: str = Field("not-needed", description="bearer token for the endpoint")
    llm_timeout: float = Field(120.0, description="bound on one request (s)")
    llm_max_retries: int = Field(4, description="retries of a transient failure (with backoff)")
    llm_price_input_per_1k: float = Field(
        0.0, description="cost per 1000 prompt tokens, for the cost figures"
    )
    llm_price_output_per_1k: float = Field(0.0, description="cost per 1000 completion tokens")
    llm_json_mode: bool = Field(
        True, description="send response_format=json_object (turn off for servers that reject it)"
    )


class AgentSettings(BusSettings, LLMSettings):
    """One agent instance: its brain, its folders, the sandbox for workspace code."""

    model_config = SETTINGS_CONFIG

    concurrency: int = Field(1, description="work items one instance runs at once")

    # --- brains ---------------------------------------------------------------
    brain: str = Field("builtin", description="builtin | llm | module:attribute")
    work_dir: Path = Field(Path(".cadre/work"), description="where each step's copy of the workspace goes")
    corpus_dirs: CommaList[Path] = Field(
        [], description="folders of documents the research index reads (a,b)"
    )
    index_path: Path = Field(
        Path(".cadre/research-index.sqlite"), description="the research index (SQLite FTS5)"
    )
    include_installed_packages: bool = Field(
        True, description="also index the metadata of the installed Python packages"
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
    sandbox_cpu_seconds: int = Field(300, description="CPU-time limit of sandboxed processes (s)")
    sandbox_memory_mb: int = Field(2048, description="address-space limit of sandboxed processes")
    sandbox_max_processes: int = Field(256, description="processes of the sandbox's uid")
    sandbox_file_size_mb: int = Field(256, description="largest file sandboxed code may write")
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
