"""``cadre up`` / ``cadre down``: the command side of the embedded deployment (``shared.embedded.stack``).

``up`` checks its options, refuses to start a second deployment, starts
nats-server (unless ``--nats-url`` names one) and every service through
``Embedded``, waits until each answers nats micro, then either stays up until
Ctrl-C / ``cadre down`` (saying once when a service exits on its own) or, with
``--example``, submits the example task, follows it and stops. ``down`` stops
what ``up`` recorded in ``<state-dir>/up.json``. ``shared.client.cli.app`` registers both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Annotated

import typer

from shared.client import CadreClient
from shared.client.cli.options import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TASK,
    EXIT_USAGE,
    Prefix,
    StateDir,
    Timeout,
    err,
    fail,
    follow_and_report,
    out,
    resolve_settings,
    run,
    signals,
    unless_stopped,
)
from shared.client.cli.settings import StackSettings
from shared.client.cli.view import services_table
from shared.client.taskfile import load_task_file
from shared.embedded.launcher import SERVICES
from shared.embedded.stack import Embedded, PortTaken, ServiceFailed, live_state, monitor_port, stop_recorded

__all__ = ["up", "down"]

logger = logging.getLogger(__name__)


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
        fail(f"unknown service(s) {unknown or names}: choose from {', '.join(SERVICES)}", EXIT_USAGE)
    running = live_state(state_dir)
    if running is not None:
        fail(f"cadre up is already running (pid {running.pid}) at {running.nats_url}: run `cadre down`", 2)
    settings = resolve_settings(nats_url, prefix, state_dir, StackSettings, use_state=False)
    if brain:
        settings = settings.model_copy(update={"brain": brain})
    elif settings.llm_base_url and settings.brain == "builtin":
        settings = settings.model_copy(update={"brain": "llm"})
    task_file = _example_file(settings) if example else None
    if nats_url:
        run(_probe(settings))

    emb: Embedded[StackSettings] = Embedded(
        settings, state_dir, names, replicas, use_existing_server=bool(nats_url)
    )
    code = EXIT_TASK
    try:
        if "monitor" in names:  # the configured port, or a free one when the default is taken
            emb.settings = settings.model_copy(update=monitor_port(settings))
        settings = emb.start()
        out.print(f"nats-server: {settings.nats_url} · prefix {settings.prefix} · logs {state_dir / 'logs'}")
        code = run(_serve(emb, settings, task_file, start_timeout, timeout))
    except typer.Exit as exc:  # a one-line error was printed already (click's Exit is a RuntimeError)
        code = exc.exit_code
    except (ServiceFailed, FileNotFoundError, PortTaken) as exc:
        err.print(f"error: {exc}", markup=False)
        code = EXIT_TASK if isinstance(exc, ServiceFailed) else EXIT_USAGE
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


def down(
    timeout: Annotated[float, typer.Option(help="seconds to wait for a clean stop")] = 60.0,
    state_dir: StateDir = Path(".cadre"),
) -> None:
    """Stop the deployment `cadre up` started (it drains services, then stops nats-server)."""
    state = stop_recorded(state_dir, timeout)
    if state is None:
        fail(f"nothing to stop: no {state_dir / 'up.json'} (is `cadre up` running?)", EXIT_TASK)
    out.print(f"stopped cadre up (pid {state.pid}) at {state.nats_url}", markup=False)


def _example_file(settings: StackSettings) -> Path:
    name = "build-auth-api.yaml" if settings.llm_base_url else "harden-auth-api.yaml"
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        path = root / "examples" / "tasks" / name
        if path.is_file():
            return path
    fail(f"example task examples/tasks/{name} not found (run from the Cadre checkout)", EXIT_USAGE)


async def _probe(settings: StackSettings) -> None:
    async with CadreClient.connect(settings, "cadre-up-probe"):
        pass


async def _serve(
    emb: Embedded, settings: StackSettings, task_file: Path | None, start_timeout: float, bound: float | None
) -> int:
    stop = signals()
    async with CadreClient.connect(settings, "cadre-up") as client:
        found = await unless_stopped(emb.wait_healthy(client, start_timeout), stop)
        out.print(services_table(found, "Healthy services"))
        if emb.monitor_url:
            out.print(f"monitor: {emb.monitor_url} (dashboard · /metrics · /status)", markup=False)
        if task_file is None:
            out.print("Cadre is up. Ctrl-C or `cadre down` stops it.")
            await _watch_processes(emb, stop)
            return EXIT_OK
        tf = load_task_file(task_file)
        task_id = await client.submit(tf.submission, workspace_dir=tf.workspace_dir)
        out.print(f"submitted {task_file.name} as {task_id}", markup=False)
        return await unless_stopped(follow_and_report(client, task_id, bound, True), stop)


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
