"""What every ``cadre`` command shares: exit codes, consoles, options, errors, Ctrl-C, following a task.

A command resolves its connection options to ``ClientSettings`` (option >
environment > the running ``cadre up`` > default, see ``resolve_settings``), runs one
coroutine through ``run`` so every known failure becomes a one-line
``error: ...`` on stderr with a documented exit code (``docs/cli.md``), and
stops cleanly on SIGINT/SIGTERM (``unless_stopped``). ``connected`` turns
``async def body(client, settings, **options)`` into such a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import pydantic
import typer
from rich.console import Console
from rich.live import Live

from shared.bus.settings import BusSettings
from shared.client import CadreClient, NoDeployment, NoService, PermissionDenied
from shared.client.cli.view import StepBoard, print_result, trace_text
from shared.client.settings import ClientSettings
from shared.client.taskfile import TaskFileError
from shared.client.wstree import FileChange
from shared.contract.errors import CadreError, InvalidSubjectToken, NotConnected, TaskNotFound
from shared.contract.protocol import FinalResult, TaskEvent
from shared.embedded.stack import live_state

__all__ = [
    "EXIT_OK",
    "EXIT_TASK",
    "EXIT_USAGE",
    "EXIT_UNKNOWN_TASK",
    "EXIT_PENDING",
    "EXIT_INTERRUPTED",
    "out",
    "err",
    "NatsUrl",
    "Prefix",
    "StateDir",
    "Timeout",
    "Interrupted",
    "fail",
    "resolve_settings",
    "run",
    "unless_stopped",
    "signals",
    "connected",
    "follow",
    "follow_and_report",
    "workspace_changes",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_TASK = 1  # the task finished but not "completed" (failed/rejected/cancelled), or a refusal
EXIT_USAGE = 2  # no server / deployment / service reachable, a login refused, invalid input
EXIT_UNKNOWN_TASK = 3
EXIT_PENDING = 4  # no result yet / timed out waiting
EXIT_INTERRUPTED = 130

T = TypeVar("T")

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

# what every command that talks to a deployment takes last (see ``connected``)
_CONNECTION_OPTIONS = [
    inspect.Parameter("nats_url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=NatsUrl),
    inspect.Parameter("prefix", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Prefix),
    inspect.Parameter(
        "state_dir", inspect.Parameter.KEYWORD_ONLY, default=Path(".cadre"), annotation=StateDir
    ),
]


class Interrupted(Exception):
    """SIGINT/SIGTERM while waiting."""


def fail(message: str, code: int) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``code``."""
    err.print("error: " + " ".join(message.split()), markup=False)
    raise typer.Exit(code)


S = TypeVar("S", bound=BusSettings)


def resolve_settings(
    nats_url: str | None,
    prefix: str | None,
    state_dir: Path,
    kind: type[S],
    *,
    use_state: bool = True,
) -> S:
    """Option > environment > running ``cadre up`` > default, as ``kind`` (``ClientSettings``,
    or ``StackSettings`` for ``cadre up``)."""
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
        return kind(**overrides)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", EXIT_USAGE)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine and turn the known failures into one-line errors."""
    try:
        return asyncio.run(coro)
    except (
        NotConnected,
        NoDeployment,
        NoService,
        PermissionDenied,
        TaskFileError,
        InvalidSubjectToken,
    ) as exc:
        fail(str(exc), EXIT_USAGE)
    except TaskNotFound as exc:
        fail(str(exc), EXIT_UNKNOWN_TASK)
    except TimeoutError as exc:
        fail(str(exc) or "timed out", EXIT_PENDING)
    except (Interrupted, KeyboardInterrupt):
        fail("interrupted", EXIT_INTERRUPTED)
    except CadreError as exc:
        fail(str(exc), EXIT_TASK)
    except typer.Exit:  # a command's own one-line error (click's Exit is a RuntimeError)
        raise
    except Exception as exc:  # still one line; `cadre -v` logs the traceback
        logger.exception("unexpected failure")
        fail(f"{type(exc).__name__}: {exc}", EXIT_TASK)


async def unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T:
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


def signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def connected(body: Callable[..., Awaitable[int]]) -> Callable[..., None]:
    """A command from ``async def body(client, settings, **options) -> exit code``.

    The command takes ``body``'s own options plus ``--nats-url``, ``--prefix``
    and ``--state-dir``; it connects, runs ``body`` and exits with the code it
    returns (known failures become one-line errors, see ``run``).
    """
    own = list(inspect.signature(body, eval_str=True).parameters.values())[2:]

    def command(*, nats_url: str | None, prefix: str | None, state_dir: Path, **options: Any) -> None:
        resolved = resolve_settings(nats_url, prefix, state_dir, ClientSettings)

        async def main() -> int:
            async with CadreClient.connect(resolved) as client:
                return await body(client, resolved, **options)

        raise typer.Exit(run(main()))

    params = [*own, *_CONNECTION_OPTIONS]
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__, command.__qualname__, command.__doc__ = body.__name__, body.__qualname__, body.__doc__
    return command


async def follow(client: CadreClient, task_id: str, *, replay: bool, bound: float | None) -> TaskEvent:
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


async def follow_and_report(client: CadreClient, task_id: str, bound: float | None, report: bool) -> int:
    """Follow the task to its end, then print its result; the exit code says whether it completed."""
    await follow(client, task_id, replay=True, bound=bound)
    result = await client.result(task_id, timeout=30)
    out.print()
    print_result(out, result, report=report, changes=await workspace_changes(client, result))
    return EXIT_OK if result.status == "completed" else EXIT_TASK


async def workspace_changes(client: CadreClient, result: FinalResult) -> list[FileChange] | None:
    """The per-file summary of what the task changed in its workspace; None when it has none to compare.

    A result without both workspaces (a research task, no code attached) has
    nothing to summarise; an artifact that cannot be read is reported on stderr
    and the result is still shown.
    """
    if not {"workspace", "submitted_workspace"} <= result.artifacts.keys():
        return None
    try:
        return await client.workspace_changes(result)
    except CadreError as exc:
        err.print(f"warning: cannot summarise the changed files: {exc}", markup=False)
        return None
