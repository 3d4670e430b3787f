"""The ``cadre`` command: run the embedded deployment, submit tasks, watch them, read results.

Every command takes ``--nats-url`` and ``--prefix``; without them it uses
``CADRE_NATS_URL`` / ``CADRE_PREFIX``, else the running ``cadre up``
(``.cadre/up.json``), else the defaults. Errors are one line on stderr
(``error: ...``) with a documented exit code (see ``docs/cli.md``).

This module is the command table and the task commands; the shared plumbing
(exit codes, options, settings resolution, error mapping, following a trace)
is ``shared.client.cli.options`` and ``up`` / ``down`` live in ``shared.client.cli.up``.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from shared.client import CadreClient, NoService
from shared.client.cli.options import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_TASK,
    EXIT_UNKNOWN_TASK,
    EXIT_USAGE,
    NatsUrl,
    Prefix,
    StateDir,
    Timeout,
    connected,
    err,
    fail,
    follow,
    follow_and_report,
    out,
    resolve_settings,
    run,
    signals,
    unless_stopped,
    workspace_changes,
)
from shared.client.cli.up import down, up
from shared.client.cli.view import print_result, services_table, snapshot_view
from shared.client.settings import ClientSettings
from shared.client.taskfile import TaskFile, TaskFileError, load_task_file, parse_task
from shared.client.wstree import UnsafeWorkspace
from shared.contract import textsafe
from shared.contract.errors import TaskNotFound
from shared.contract.monitoring import Snapshot
from shared.contract.protocol import FinalResult, encode

__all__ = ["app", "EXIT_OK", "EXIT_TASK", "EXIT_USAGE", "EXIT_UNKNOWN_TASK", "EXIT_PENDING"]

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="cadre",
    help="Cadre: multi-agent orchestration over NATS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class ResultFormat(StrEnum):
    markdown = "markdown"
    json = "json"
    summary = "summary"


def _overrides(
    description: str | None,
    task_type: str | None,
    priority: str | None,
    requirement: list[str] | None,
    context: list[str] | None,
    task_id: str | None,
) -> dict[str, Any]:
    ctx: dict[str, str] = {}
    for pair in context or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TaskFileError("<command line>", f"--context expects key=value, got {pair!r}")
        ctx[key.strip()] = value.strip()
    return {
        "description": description,
        "task_type": task_type,
        "priority": priority,
        "requirements": requirement or None,
        "context": ctx,
        "task_id": task_id,
    }


# --- commands ------------------------------------------------------------------------------------------------
@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log to stderr")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def submit(
    file: Annotated[str | None, typer.Argument(help="task file (JSON or YAML); - reads stdin")] = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    task_type: Annotated[str | None, typer.Option("--type", "-t", help="feature | review | research")] = None,
    priority: Annotated[str | None, typer.Option("--priority", "-p", help="high | normal | low")] = None,
    requirement: Annotated[
        list[str] | None, typer.Option("--requirement", "-r", metavar="TEXT", help="repeatable")
    ] = None,
    context: Annotated[
        list[str] | None, typer.Option("--context", "-c", metavar="KEY=VALUE", help="repeatable")
    ] = None,
    workspace: Annotated[Path | None, typer.Option("--workspace", "-w", help="code folder to attach")] = None,
    task_id: Annotated[str | None, typer.Option("--task-id", help="choose the task id")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the task to its end")] = False,
    report: Annotated[bool, typer.Option(help="with --wait: print the Markdown report")] = True,
    timeout: Timeout = None,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
    state_dir: StateDir = Path(".cadre"),
) -> None:
    """Submit a task (file and/or flags) and print its id; --wait follows it to the end."""
    settings = resolve_settings(nats_url, prefix, state_dir, ClientSettings)

    async def main() -> int:
        overrides = _overrides(description, task_type, priority, requirement, context, task_id)
        if file is not None:
            tf = load_task_file(file, overrides=overrides)
        elif description:
            tf = parse_task("", "<command line>", overrides=overrides)
        else:
            raise TaskFileError("<command line>", "give a task FILE (- for stdin) or --description")
        if workspace is not None:
            if not workspace.is_dir():
                raise TaskFileError("<command line>", f"--workspace {workspace} is not a folder")
            tf = TaskFile(tf.submission, workspace.resolve())
        async with CadreClient.connect(settings) as client:
            tid = await client.submit(tf.submission, workspace_dir=tf.workspace_dir)
            print(tid, flush=True)
            if not wait:
                return EXIT_OK
            return await unless_stopped(follow_and_report(client, tid, timeout, report), signals())

    raise typer.Exit(run(main()))


@app.command()
@connected
async def watch(
    client: CadreClient,
    settings: ClientSettings,
    task_id: str,
    replay: Annotated[bool, typer.Option(help="start from the task's first event")] = True,
    timeout: Timeout = None,  # noqa: ASYNC109 - the --timeout option, passed on as a bound
) -> int:
    """Print a task's live trace (replayed from the start); exit 1 unless it completed."""
    if not await client.exists(task_id):
        raise TaskNotFound(task_id)
    done = None if replay else await client.last_result(task_id)
    if done is not None:  # nothing new will come: say how it ended
        out.print(f"task {task_id} already finished: {done.status}", markup=False)
        return EXIT_OK if done.status == "completed" else EXIT_TASK
    final = await unless_stopped(follow(client, task_id, replay=replay, bound=timeout), signals())
    return EXIT_OK if final.kind == "completed" else EXIT_TASK


@app.command()
@connected
async def result(
    client: CadreClient,
    settings: ClientSettings,
    task_id: str,
    fmt: Annotated[ResultFormat, typer.Option("--format", "-f")] = ResultFormat.markdown,
    wait: Annotated[bool, typer.Option("--wait", help="wait for a running task's result")] = False,
    timeout: Timeout = None,  # noqa: ASYNC109 - the --timeout option, passed on as a bound
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", metavar="DIR", help="write the patched code tree into DIR"),
    ] = None,
    patch: Annotated[
        str | None,
        typer.Option(
            "--patch", metavar="FILE", help="write a git diff (submitted → patched) to FILE; - = stdout"
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="write into a non-empty DIR / over an existing FILE")
    ] = False,
) -> int:
    """Print a task's final result (Markdown report, JSON or summary), or download its code."""
    try:
        res = await client.result(task_id, timeout=timeout if wait else 0)
    except TimeoutError as exc:
        raise TimeoutError(f"task {task_id} has no result yet: it is still running") from exc
    if workspace is not None or patch is not None:
        await _download(client, res, workspace, patch, force)
    elif fmt is ResultFormat.json:
        sys.stdout.write(msgspec.json.format(encode(res)).decode() + "\n")
    elif fmt is ResultFormat.summary:
        print_result(out, res, changes=await workspace_changes(client, res))
    else:
        text = textsafe.text(res.report_markdown or f"# Task {res.task_id}: {res.status}\n\n{res.reason}\n")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK if res.status == "completed" else EXIT_TASK


async def _download(
    client: CadreClient, res: FinalResult, workspace: Path | None, patch: str | None, force: bool
) -> None:
    """``result --workspace`` / ``--patch``: write the code, say what was written (on stderr with ``--patch -``)."""
    note = err if patch == "-" else out
    if patch is not None and patch != "-" and Path(patch).exists() and not force:
        raise UnsafeWorkspace(f"{patch} exists: choose another file, or pass --force")
    if workspace is not None:
        done = await client.download_workspace(res, workspace, force=force)
        note.print(
            f"wrote {len(done.files)} files to {workspace} (workspace sha256 {done.artifact.sha256})",
            markup=False,
            soft_wrap=True,
        )
    if patch is not None:
        text = await client.workspace_patch(res)
        if patch == "-":
            sys.stdout.write(text)
        else:
            Path(patch).write_text(text, encoding="utf-8")
        changed = sum(1 for line in text.splitlines() if line.startswith("diff --git "))
        note.print(
            f"wrote {'the patch' if patch == '-' else patch}: {changed} file(s) changed",
            markup=False,
            soft_wrap=True,
        )


@app.command()
@connected
async def cancel(
    client: CadreClient,
    settings: ClientSettings,
    task_id: str,
    reason: Annotated[str, typer.Option(help="recorded in the task's trace")] = "cancelled by user",
) -> int:
    """Cancel a running task."""
    if not await client.exists(task_id):
        raise TaskNotFound(task_id)
    reply = await client.cancel(task_id, reason)
    if not reply.accepted:
        fail(f"cannot cancel {task_id}: {reply.reason}", EXIT_TASK)
    out.print(f"cancelled {task_id}: {reply.reason}", markup=False)
    return EXIT_OK


@app.command()
@connected
async def status(
    client: CadreClient,
    settings: ClientSettings,
    as_json: Annotated[bool, typer.Option("--json", help="print raw JSON")] = False,
) -> int:
    """Agents and their health (from the monitor), plus the services answering nats micro."""
    snap: Snapshot | None
    try:
        snap = await client.snapshot()
    except NoService:
        snap = None
    found = await client.services(wait=0.5)
    if snap is None and not found:
        raise NoService("Cadre service", f"prefix {settings.prefix!r} at {settings.nats_url}")
    if as_json:
        data = {"monitor": msgspec.to_builtins(snap), "services": msgspec.to_builtins(found)}
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    if snap is None:
        err.print(f"warning: no monitor answering on {settings.subjects.monitor_snapshot}", markup=False)
    else:
        out.print(snapshot_view(snap))
    out.print(services_table(found, "Services (nats micro discovery)"))
    return EXIT_OK


@app.command()
@connected
async def metrics(
    client: CadreClient,
    settings: ClientSettings,
    everything: Annotated[bool, typer.Option("--all", help="the whole monitor snapshot")] = False,
) -> int:
    """The per-role performance figures as the spec's JSON object (from the monitor)."""
    snap = await client.snapshot()
    spec = {
        "orchestrator": snap.orchestrator,
        "researcher": snap.researcher,
        "developer": snap.developer,
        "reviewer": snap.reviewer,
    }
    data = msgspec.to_builtins(snap if everything else spec)
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    return EXIT_OK


# the embedded deployment (shared/client/cli/up.py), registered last so they list last in `cadre --help`
app.command()(up)
app.command()(down)


if __name__ == "__main__":
    app(prog_name="cadre")
