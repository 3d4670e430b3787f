"""Task files: the spec's message structure as JSON or YAML, plus an optional workspace folder.

A task file is what ``cadre submit FILE`` reads::

    task_type: review
    priority: high
    context: {project: auth-api, language: python}
    task:
      description: Harden the user authentication API
      requirements: [Rate limiting]
    expected_output: {tests: all passing, coverage: ">80%"}
    workspace: ../auth-api        # a folder, relative to this file

Validation is msgspec's, against ``TaskSubmission``: an error names the
field and why (``Expected `str`, got `int` - at `$.task.description```).
``message_id`` may be left out (one is generated).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shared.contract.errors import CadreError
from shared.contract.protocol import TaskSubmission, new_id

__all__ = ["TaskFile", "TaskFileError", "load_task_file", "parse_task"]


class TaskFileError(CadreError):
    """A task file that cannot be read or does not match the task message."""

    non_retryable = True

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"invalid task file {source}: {reason}")


@dataclass(frozen=True)
class TaskFile:
    """A validated task and the folder to attach as its workspace (if any)."""

    submission: TaskSubmission
    workspace_dir: Path | None = None


def _decode(text: str, source: str, as_json: bool) -> Any:
    if as_json:
        try:
            return msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise TaskFileError(source, f"not valid JSON: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaskFileError(source, "not valid YAML: " + " ".join(str(exc).split())) from exc


def _apply(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Command-line flags win over the file; ``description`` and ``requirements`` go in ``task``."""
    for key, value in overrides.items():
        if value is None or value == [] or value == {}:
            continue
        if key in ("description", "requirements"):
            body = data.setdefault("task", {})
            if not isinstance(body, dict):
                continue  # msgspec reports the wrong type of `task` below
            body[key] = value
        elif key == "context":
            ctx = data.get("context")
            data["context"] = {**ctx, **value} if isinstance(ctx, dict) else value
        else:
            data[key] = value


def parse_task(
    text: str,
    source: str = "<stdin>",
    base_dir: Path | None = None,
    *,
    as_json: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> TaskFile:
    """Validate task text (JSON or YAML) into a ``TaskFile``.

    ``base_dir`` resolves a relative ``workspace`` path (default: the current
    directory). ``overrides`` are field values from the command line.
    """
    if as_json is None:
        as_json = text.lstrip().startswith("{")
    data = _decode(text, source, as_json) if text.strip() else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TaskFileError(source, f"Expected `object`, got `{type(data).__name__}` - at `$`")
    _apply(data, overrides or {})

    workspace_dir: Path | None = None
    workspace = data.get("workspace")
    if isinstance(workspace, str):
        workspace_dir = ((base_dir or Path.cwd()) / workspace).resolve()
        if not workspace_dir.is_dir():
            raise TaskFileError(
                source, f"folder {workspace!r} ({workspace_dir}) does not exist - at `$.workspace`"
            )
        del data["workspace"]
    data.setdefault("message_id", new_id("msg"))

    try:
        submission = msgspec.convert(data, TaskSubmission)
    except msgspec.ValidationError as exc:
        raise TaskFileError(source, str(exc)) from exc
    return TaskFile(submission, workspace_dir)


def load_task_file(path: str | Path, *, overrides: dict[str, Any] | None = None) -> TaskFile:
    """Read a task file (``-`` reads standard input); the suffix picks JSON or YAML."""
    if str(path) == "-":
        return parse_task(sys.stdin.read(), "<stdin>", Path.cwd(), overrides=overrides)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        raise TaskFileError(str(path), reason) from exc
    suffix = file.suffix.lower()
    as_json = True if suffix == ".json" else False if suffix in (".yaml", ".yml") else None
    return parse_task(text, str(path), file.parent, as_json=as_json, overrides=overrides)
