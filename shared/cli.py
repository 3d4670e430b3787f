"""The ``cadre`` command: run the embedded deployment, submit tasks, watch them, read results.

Every command takes ``--nats-url`` and ``--prefix``; without them it uses
``CADRE_NATS_URL`` / ``CADRE_PREFIX``, else the running ``cadre up``
(``.cadre/up.json``), else the defaults. Errors are one line on stderr
(``error: ...``) with a documented exit code (see ``docs/cli.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import pydantic
import typer
from rich.console import Console
from rich.live import Live

from shared.client import CadreClient, NoDeployment, NoService
from shared.cliview import StepBoard, print_result, services_table, snapshot_view, trace_text
from shared.embedded import Embedded, ServiceFailed, live_state, stop_recorded
from shared.errors import CadreError, InvalidSubjectToken, NotConnected, TaskNotFound
from shared.launcher import SERVICES
from shared.protocol import ROLES, TaskEvent, encode
from shared.settings import Settings
from shared.taskfile import TaskFile, TaskFileError, load_task_file, parse_task

__all__ = ["app", "EXIT_OK", "EXIT_TASK", "EXIT_USAGE", "EXIT_UNKNOWN_TASK", "EXIT_PENDING"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_TASK = 1  # the task finished but not "completed" (failed/rejected/cancelled), or a refusal
EXIT_USAGE = 2  # no server / deployment / service reachable, invalid input
EXIT_UNKNOWN_TASK = 3
EXIT_PENDING = 4  # no result yet / timed out waiting
EXIT_INTERRUPTED = 130

T = TypeVar("T")

app = typer.Typer(
    name="cadre",
    help="Cadre: multi-agent orchestration over NATS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# piped output (logs, tests, CI) gets a wider page than the 80 columns rich assumes
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, soft_wrap=True)

NatsUrl = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        help="NATS URL(s); default CADRE_NATS_URL, else the running `cadre up`, else nats://127.0.0.1:4222",
        show_default=False,
    ),
]
Prefix = Annotated[
    str | None,
    typer.Option("--prefix", help="subject prefix; default CADRE_PREFIX, else `cadre up`'s, else cadre"),
]
StateDir = Annotated[
    Path,
    typer.Option("--state-dir", envvar="CADRE_STATE_DIR", help="where `cadre up` keeps up.json, logs, store"),
]
Timeout = Annotated[
    float | None, typer.Option("--timeout", help="give up after this many seconds (default: no bound)")
]


# what every command that talks to a deployment takes last (see ``_connected``)
_CONNECTION_OPTIONS = [
    inspect.Parameter("nats_url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=NatsUrl),
    inspect.Parameter("prefix", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Prefix),
    inspect.Parameter(
        "state_dir", inspect.Parameter.KEYWORD_ONLY, default=Path(".cadre"), annotation=StateDir
    ),
]


# the parts of the monitor snapshot `cadre status` shows (the figures are `cadre metrics`)
_STATUS_KEYS = ("health", "instances", "alerts", "recent_tasks")


class Interrupted(Exception):
    """SIGINT/SIGTERM while waiting."""


class ResultFormat(StrEnum):
    markdown = "markdown"
    json = "json"
    summary = "summary"


# --- plumbing ----------------------------------------------------------------------------------------------
def _fail(message: str, code: int) -> NoReturn:
    err.print("error: " + " ".join(message.split()), markup=False)
    raise typer.Exit(code)


def _settings(
    nats_url: str | None, prefix: str | None, state_dir: Path, *, use_state: bool = True
) -> Settings:
    """Option > environment > running ``cadre up`` > default."""
    overrides: dict[str, Any] = {}
    state = live_state(state_dir) if use_state else None
    if nats_url:
        overrides["nats_url"] = nats_url
    elif state is not None and "CADRE_NATS_URL" not in os.environ:
        overrides["nats_url"] = state.nats_url
    if prefix:
        overrides["prefix"] = prefix
    elif state is not None and "CADRE_PREFIX" not in os.environ:
        overrides["prefix"] = state.prefix
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", EXIT_USAGE)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine and turn the known failures into one-line errors."""
    try:
        return asyncio.run(coro)
    except (NotConnected, NoDeployment, NoService, TaskFileError, InvalidSubjectToken) as exc:
        _fail(str(exc), EXIT_USAGE)
    except TaskNotFound as exc:
        _fail(str(exc), EXIT_UNKNOWN_TASK)
    except TimeoutError as exc:
        _fail(str(exc) or "timed out", EXIT_PENDING)
    except (Interrupted, KeyboardInterrupt):
        _fail("interrupted", EXIT_INTERRUPTED)
    except CadreError as exc:
        _fail(str(exc), EXIT_TASK)
    except typer.Exit:  # a command's own one-line error (click's Exit is a RuntimeError)
        raise
    except Exception as exc:  # still one line; `cadre -v` logs the traceback
        logger.exception("unexpected failure")
        _fail(f"{type(exc).__name__}: {exc}", EXIT_TASK)


async def _unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T:
    """Await ``aw`` unless ``stop`` is set first (then cancel it and raise ``Interrupted``)."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Interrupted
    return task.result()


def _signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _connected(body: Callable[..., Awaitable[int]]) -> Callable[..., None]:
    """A command from ``async def body(client, settings, **options) -> exit code``.

    The command takes ``body``'s own options plus ``--nats-url``, ``--prefix``
    and ``--state-dir``; it connects, runs ``body`` and exits with the code it
    returns (known failures become one-line errors, see ``_run``).
    """
    own = list(inspect.signature(body, eval_str=True).parameters.values())[2:]

    def command(*, nats_url: str | None, prefix: str | None, state_dir: Path, **options: Any) -> None:
        settings = _settings(nats_url, prefix, state_dir)

        async def main() -> int:
            async with CadreClient.connect(settings) as client:
                return await body(client, settings, **options)

        raise typer.Exit(_run(main()))

    params = [*own, *_CONNECTION_OPTIONS]
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__, command.__qualname__, command.__doc__ = body.__name__, body.__qualname__, body.__doc__
    return command


async def _follow(client: CadreClient, task_id: str, *, replay: bool, bound: float | None) -> TaskEvent:
    """Print the trace as events arrive (with a per-step progress board on a terminal)."""
    board = StepBoard()
    final: TaskEvent | None = None
    live = Live(board, console=out, refresh_per_second=8) if out.is_terminal else None
    with live or contextlib.nullcontext():
        async for event in client.events(task_id, replay=replay, timeout=bound):
            board.update(event)
            if final is not None:
                out.print()
            out.print(trace_text(event), soft_wrap=True)
            final = event
    assert final is not None  # the iterator only ends after a final event
    return final


async def _follow_and_report(client: CadreClient, task_id: str, bound: float | None, report: bool) -> int:
    await _follow(client, task_id, replay=True, bound=bound)
    result = await client.result(task_id, timeout=30)
    out.print()
    print_result(out, result, report=report)
    return EXIT_OK if result.status == "completed" else EXIT_TASK


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


def _example_file(settings: Settings) -> Path:
    name = "build-auth-api.yaml" if settings.llm_base_url else "harden-auth-api.yaml"
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        path = root / "examples" / "tasks" / name
        if path.is_file():
            return path
    _fail(f"example task examples/tasks/{name} not found (run from the Cadre checkout)", EXIT_USAGE)


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
    settings = _settings(nats_url, prefix, state_dir)

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
            return await _unless_stopped(_follow_and_report(client, tid, timeout, report), _signals())

    raise typer.Exit(_run(main()))


@app.command()
@_connected
async def watch(
    client: CadreClient,
    settings: Settings,
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
    final = await _unless_stopped(_follow(client, task_id, replay=replay, bound=timeout), _signals())
    return EXIT_OK if final.kind == "completed" else EXIT_TASK


@app.command()
@_connected
async def result(
    client: CadreClient,
    settings: Settings,
    task_id: str,
    fmt: Annotated[ResultFormat, typer.Option("--format", "-f")] = ResultFormat.markdown,
    wait: Annotated[bool, typer.Option("--wait", help="wait for a running task's result")] = False,
    timeout: Timeout = None,  # noqa: ASYNC109 - the --timeout option, passed on as a bound
) -> int:
    """Print a task's final result: the Markdown report, the JSON, or a summary."""
    try:
        res = await client.result(task_id, timeout=timeout if wait else 0)
    except TimeoutError as exc:
        raise TimeoutError(f"task {task_id} has no result yet: it is still running") from exc
    if fmt is ResultFormat.json:
        sys.stdout.write(msgspec.json.format(encode(res)).decode() + "\n")
    elif fmt is ResultFormat.summary:
        print_result(out, res)
    else:
        text = res.report_markdown or f"# Task {res.task_id}: {res.status}\n\n{res.reason}\n"
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK if res.status == "completed" else EXIT_TASK


@app.command()
@_connected
async def cancel(
    client: CadreClient,
    settings: Settings,
    task_id: str,
    reason: Annotated[str, typer.Option(help="recorded in the task's trace")] = "cancelled by user",
) -> int:
    """Cancel a running task."""
    if not await client.exists(task_id):
        raise TaskNotFound(task_id)
    reply = await client.cancel(task_id, reason)
    if not reply.accepted:
        _fail(f"cannot cancel {task_id}: {reply.reason}", EXIT_TASK)
    out.print(f"cancelled {task_id}: {reply.reason}", markup=False)
    return EXIT_OK


@app.command()
@_connected
async def status(
    client: CadreClient,
    settings: Settings,
    as_json: Annotated[bool, typer.Option("--json", help="print raw JSON")] = False,
) -> int:
    """Agents and their health (from the monitor), plus the services answering nats micro."""
    snap: dict[str, Any] | None
    try:
        snap = await client.snapshot()
    except NoService:
        snap = None
    found = await client.services(wait=0.5)
    if snap is None and not found:
        raise NoService("Cadre service", f"prefix {settings.prefix!r} at {settings.nats_url}")
    if as_json:
        data = {"monitor": snap, "services": msgspec.to_builtins(found)}
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    if snap is None:
        err.print(f"warning: no monitor answering on {settings.subjects.monitor_snapshot}", markup=False)
    else:
        shown = {k: snap[k] for k in _STATUS_KEYS if k in snap}
        out.print(snapshot_view(shown or snap))
    out.print(services_table(found, "Services (nats micro discovery)"))
    return EXIT_OK


@app.command()
@_connected
async def metrics(
    client: CadreClient,
    settings: Settings,
    everything: Annotated[bool, typer.Option("--all", help="the whole monitor snapshot")] = False,
) -> int:
    """The per-role performance figures as the spec's JSON object (from the monitor)."""
    snap = await client.snapshot()
    spec = {role: snap[role] for role in ROLES if role in snap}
    data = snap if everything or not spec else spec
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    return EXIT_OK


@app.command()
def up(
    replicas: Annotated[int, typer.Option(min=1, help="instances per agent role")] = 1,
    example: Annotated[bool, typer.Option("--example", help="run the example task, then stop")] = False,
    services: Annotated[str, typer.Option(help="comma-separated services to start")] = ",".join(SERVICES),
    brain: Annotated[str | None, typer.Option(help="builtin | llm | module:attribute")] = None,
    start_timeout: Annotated[float, typer.Option(help="seconds to wait for health")] = 120.0,
    timeout: Timeout = None,
    nats_url: Annotated[
        str | None, typer.Option("--nats-url", help="use this server instead of starting one")
    ] = None,
    prefix: Prefix = None,
    state_dir: StateDir = Path(".cadre"),
) -> None:
    """Start nats-server and every service as local processes; stay up until Ctrl-C / `cadre down`."""
    names = tuple(s.strip() for s in services.split(",") if s.strip())
    unknown = [n for n in names if n not in SERVICES]
    if unknown or not names:
        _fail(f"unknown service(s) {unknown or names}: choose from {', '.join(SERVICES)}", EXIT_USAGE)
    running = live_state(state_dir)
    if running is not None:
        _fail(f"cadre up is already running (pid {running.pid}) at {running.nats_url}: run `cadre down`", 2)
    settings = _settings(nats_url, prefix, state_dir, use_state=False)
    if brain:
        settings = settings.model_copy(update={"brain": brain})
    elif settings.llm_base_url and settings.brain == "builtin":
        settings = settings.model_copy(update={"brain": "llm"})
    task_file = _example_file(settings) if example else None
    if nats_url:
        _run(_probe(settings))

    emb = Embedded(settings, state_dir, names, replicas, use_existing_server=bool(nats_url))
    code = EXIT_TASK
    try:
        settings = emb.start()
        out.print(f"nats-server: {settings.nats_url} · prefix {settings.prefix} · logs {state_dir / 'logs'}")
        code = _run(_serve(emb, settings, task_file, start_timeout, timeout))
    except typer.Exit as exc:  # a one-line error was printed already (click's Exit is a RuntimeError)
        code = exc.exit_code
    except (ServiceFailed, FileNotFoundError) as exc:
        err.print(f"error: {exc}", markup=False)
        code = EXIT_USAGE if isinstance(exc, FileNotFoundError) else EXIT_TASK
    except RuntimeError as exc:  # nats-server failed to start
        err.print("error: " + " ".join(str(exc).split()), markup=False)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        out.print("stopping services and nats-server…")
        emb.stop()
        out.print("stopped")
    raise typer.Exit(code)


async def _probe(settings: Settings) -> None:
    async with CadreClient.connect(settings, "cadre-up-probe"):
        pass


async def _serve(
    emb: Embedded, settings: Settings, task_file: Path | None, start_timeout: float, bound: float | None
) -> int:
    stop = _signals()
    async with CadreClient.connect(settings, "cadre-up") as client:
        found = await _unless_stopped(emb.wait_healthy(client, start_timeout), stop)
        out.print(services_table(found, "Healthy services"))
        if task_file is None:
            out.print("Cadre is up. Ctrl-C or `cadre down` stops it.")
            await _watch_processes(emb, stop)
            return EXIT_OK
        tf = load_task_file(task_file)
        task_id = await client.submit(tf.submission, workspace_dir=tf.workspace_dir)
        out.print(f"submitted {task_file.name} as {task_id}", markup=False)
        return await _unless_stopped(_follow_and_report(client, task_id, bound, True), stop)


async def _watch_processes(emb: Embedded, stop: asyncio.Event) -> None:
    """Stay up until a signal; say once when a service process exits on its own."""
    reported: set[int] = set()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        assert emb.stack is not None
        for p in emb.stack.processes:
            if not p.alive() and p.pid not in reported:
                reported.add(p.pid)
                err.print(f"warning: service {p.name} exited; see {p.log_path}", markup=False)


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="seconds to wait for a clean stop")] = 60.0,
    state_dir: StateDir = Path(".cadre"),
) -> None:
    """Stop the deployment `cadre up` started (it drains services, then stops nats-server)."""
    state = stop_recorded(state_dir, timeout)
    if state is None:
        _fail(f"nothing to stop: no {state_dir / 'up.json'} (is `cadre up` running?)", EXIT_TASK)
    out.print(f"stopped cadre up (pid {state.pid}) at {state.nats_url}", markup=False)


if __name__ == "__main__":
    app(prog_name="cadre")
