"""The `cadre` CLI as a user runs it (a subprocess) and the wire contract as a raw client sees it.

Real nats-server, real orchestrator and agent processes. The scripted
EchoBrain plays the researcher where a test is about the CLI, not the brains;
the example-task tests run the real builtin brains.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared.bus import downloads
from shared.bus.core import Bus
from shared.client import ArtifactCorrupt, CadreClient
from shared.client.cli.settings import StackSettings
from shared.client.wstree import read_tree
from shared.contract.errors import TaskNotFound
from shared.contract.protocol import ArtifactRef, TaskBody, TaskSubmission, event_decoder, new_id
from shared.contract.workspace import SKIP_DIRS, pack_dir, pack_files
from shared.embedded.launcher import Stack
from shared.embedded.stack import pid_alive, read_state
from tests.helpers import wait_for_value

ROOT = Path(__file__).resolve().parents[2]
ECHO = "tests.brains:EchoBrain"


@dataclass
class Ran:
    rc: int
    out: str
    err: str


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["CADRE_MONITOR_HTTP_PORT"] = "0"  # never fight over 8080
    env["NO_COLOR"] = "1"
    return env


async def cadre(*args: str, settings: StackSettings | None = None, cwd: Path, timeout: float = 120) -> Ran:
    """Run `python -m shared.client.cli.app ARGS` (with the test's server and prefix) and collect its output."""
    extra = ["--nats-url", settings.nats_url, "--prefix", settings.prefix] if settings else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.client.cli.app",
        *args,
        *extra,
        cwd=cwd,
        env=_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError as exc:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"cadre {' '.join(args)} did not finish in {timeout}s:\n{out.decode()}\n{err.decode()}"
        ) from exc
    return Ran(proc.returncode or 0, out.decode(), err.decode())


def one_line_error(ran: Ran, code: int, *fragments: str) -> None:
    assert ran.rc == code, (ran.rc, ran.out, ran.err)
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), ran.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def tree_of(folder: Path) -> dict[str, bytes]:
    """A folder's files as a workspace carries them (caches and VCS data left out)."""
    return read_tree(pack_dir(folder))


def research_file(tmp_path: Path, description: str, **input_data: object) -> Path:
    path = tmp_path / f"task-{uuid.uuid4().hex[:6]}.json"
    task = {
        "task_type": "research",
        "context": {"project": "auth-api", "language": "python"},
        "task": {"description": description, "input_data": input_data},
    }
    path.write_text(json.dumps(task))
    return path


# --- error cases ----------------------------------------------------------------------------------------
async def test_no_reachable_server_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    for args in (["watch", "task_x"], ["result", "task_x"], ["status"], ["submit", "-d", "x"]):
        ran = await cadre(*args, "--nats-url", f"nats://127.0.0.1:{port}", cwd=tmp_path, timeout=30)
        one_line_error(ran, 2, f"no NATS server reachable at nats://127.0.0.1:{port}")


async def test_a_server_without_a_cadre_deployment_is_named(settings: StackSettings, tmp_path: Path) -> None:
    ran = await cadre("submit", "-d", "x", settings=settings, cwd=tmp_path)
    one_line_error(ran, 2, "no Cadre deployment", settings.prefix)


async def test_unknown_task_ids_exit_3(bus: Bus, settings: StackSettings, tmp_path: Path) -> None:
    for command in ("watch", "result", "cancel"):
        ran = await cadre(command, "task_nobody_knows", settings=settings, cwd=tmp_path)
        one_line_error(ran, 3, "unknown task id 'task_nobody_knows'")


async def test_invalid_task_files_name_the_field_and_exit_2(tmp_path: Path) -> None:
    cases = {
        "missing.json": ('{"task_type": "review"}', "Object missing required field `task`"),
        "wrong.yaml": ("task: {description: 42}", "Expected `str`, got `int` - at `$.task.description`"),
        "enum.yaml": ("priority: urgent\ntask: {description: x}", "Invalid enum value 'urgent'"),
        "broken.yaml": ("task: [\n", "not valid YAML"),
        "nows.yaml": ("task: {description: x}\nworkspace: nowhere", "at `$.workspace`"),
    }
    for name, (text, why) in cases.items():
        (tmp_path / name).write_text(text)
        ran = await cadre("submit", name, "--nats-url", "nats://127.0.0.1:1", cwd=tmp_path, timeout=30)
        one_line_error(ran, 2, f"invalid task file {name}: ", why)


# --- the wire contract, without the SDK ----------------------------------------------------------------
async def test_a_raw_nats_py_client_submits_plain_json_and_reads_the_result(
    bus: Bus, stack: Stack, settings: StackSettings
) -> None:
    """Only nats-py and JSON: what a client in any language does (docs/wire-protocol.md)."""
    stack.add("orchestrator")
    stack.add("researcher", brain=ECHO)
    prefix = settings.prefix
    task_id = f"task_raw_{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        # everything a client sends and reads is under its name: `client` unauthenticated
        live = await nc.subscribe(f"{prefix}.result.client.{task_id}")  # core NATS, before publishing
        task = {
            "type": "task",
            "message_id": f"msg_{task_id}",
            "task_id": task_id,
            "task_type": "research",
            "priority": "high",
            "context": {"project": "auth-api", "language": "python"},
            "task": {"description": "JWT refresh token rotation", "requirements": ["Refresh token (7 days)"]},
        }
        ack = await js.publish(
            f"{prefix}.task.submit.client",
            json.dumps(task).encode(),
            headers={"Nats-Msg-Id": task["message_id"]},
        )
        assert ack.stream == f"{prefix.upper()}_TASKS"
        msg = await live.next_msg(timeout=60)
        result = json.loads(msg.data)
        assert result["type"] == "result"
        assert result["task_id"] == task_id
        assert result["status"] == "completed", result.get("reason")
        assert result["steps"][0]["role"] == "researcher"
        assert "JWT refresh token rotation" in result["report_markdown"]

        # a late reader replays every event, then the stored result, from the events stream (as in
        # docs/wire-protocol.md). Not the other way round: the core subscriber above may get the
        # result a moment before the stream has stored it, but the result is stored before the
        # final event is published, so once "completed" is read the stored result is there.
        # a named consumer (the filter goes into the create subject, as permissions need) and
        # direct get by subject: the forms a least-privilege client user is allowed
        sub = await js.subscribe(
            f"{prefix}.events.client.{task_id}.>",
            stream=f"{prefix.upper()}_EVENTS",
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            config=ConsumerConfig(name=f"follow_{task_id}"),
        )
        kinds = []
        while not kinds or kinds[-1] != "completed":
            kinds.append(json.loads((await sub.next_msg(timeout=10)).data)["kind"])
        assert kinds[0] == "received" and "delegated" in kinds
        stored = await js.get_last_msg(
            f"{prefix.upper()}_EVENTS", f"{prefix}.result.client.{task_id}", direct=True
        )
        assert json.loads(stored.data)["status"] == "completed"
    finally:
        await nc.close()


# --- submit, watch, result, cancel -------------------------------------------------------------------------
async def test_submit_wait_prints_the_trace_then_the_result_and_watch_replays_it(
    bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    stack.add("orchestrator")
    stack.add("researcher", brain=ECHO)
    task = research_file(tmp_path, "Research best practices for JWT authentication")
    ran = await cadre("submit", task.name, "--wait", "--timeout", "90", settings=settings, cwd=tmp_path)
    assert ran.rc == 0, ran.err
    task_id = ran.out.splitlines()[0].strip()
    assert task_id.startswith("task_")
    trace = [
        "[Orchestrator] Received task: Research best practices for JWT authentication",
        "[Orchestrator] → [Researcher]:",
        "  Task: Research best practices for JWT authentication",
        "  Context: auth-api, python",
        "[Researcher] → [Orchestrator]:",
        "[Orchestrator] → Final Output:",
    ]
    positions = [ran.out.index(line) for line in trace]
    assert positions == sorted(positions), ran.out
    assert f"Task {task_id}: COMPLETED" in ran.out

    # attached after the end: the whole trace again, from the first event
    watched = await cadre("watch", task_id, settings=settings, cwd=tmp_path)
    assert watched.rc == 0, watched.err
    assert [watched.out.index(line) for line in trace] == sorted(watched.out.index(line) for line in trace)
    assert watched.out.startswith("[Orchestrator] Received task:")

    as_json = await cadre("result", task_id, "--format", "json", settings=settings, cwd=tmp_path)
    assert as_json.rc == 0
    assert msgspec.json.decode(as_json.out)["status"] == "completed"
    report = await cadre("result", task_id, settings=settings, cwd=tmp_path)
    assert report.rc == 0 and report.out.startswith("#"), report.out
    assert "approved" not in report.out  # a research task has no review, so no verdict
    no_code = await cadre(
        "result", task_id, "--workspace", str(tmp_path / "x"), settings=settings, cwd=tmp_path
    )
    one_line_error(no_code, 1, f"task {task_id} has no workspace artifact")
    assert not (tmp_path / "x").exists()
    too_late = await cadre("cancel", task_id, settings=settings, cwd=tmp_path)
    one_line_error(too_late, 1, f"cannot cancel {task_id}", "already completed")


SMALL_APP = {
    "app/passwords.py": (
        "import hashlib\n\n\n"
        "def hash_password(password: str) -> str:\n"
        "    return hashlib.md5(password.encode()).hexdigest()\n"
    ),
    "app/__init__.py": "",
    "README.md": "A small app.\n",
}


async def test_result_writes_the_patched_tree_and_a_patch_that_git_applies_to_the_submitted_code(
    bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    stack.add("orchestrator", step_deadline=600.0)  # a loaded 2-core machine: real tools take a while
    for name in ("researcher", "developer", "reviewer"):
        stack.add(name)
    original = tmp_path / "small-app"
    for name, text in SMALL_APP.items():
        (original / name).parent.mkdir(parents=True, exist_ok=True)
        (original / name).write_text(text)
    ran = await cadre(
        "submit", "-t", "review", "-d", "Harden the password storage", "-w", str(original), "--wait",
        "--timeout", "600", settings=settings, cwd=tmp_path, timeout=660,
    )  # fmt: skip
    assert ran.rc == 0, ran.out[-3000:] + ran.err[-3000:]
    task_id = ran.out.splitlines()[0].strip()
    result = await CadreClient(bus).result(task_id, timeout=0)
    assert {"workspace", "submitted_workspace"} <= result.artifacts.keys()
    # --wait ends with a per-file summary, not the diffs
    assert "Changed files (1)" in ran.out and "app/passwords.py" in ran.out, ran.out[-3000:]
    assert "```diff" not in ran.out and "\n@@ -" not in ran.out

    fixed = tmp_path / "fixed"
    got = await cadre("result", task_id, "--workspace", str(fixed), settings=settings, cwd=tmp_path)
    assert got.rc == 0, got.err
    assert f"workspace sha256 {result.artifacts['workspace'].sha256}" in got.out
    downloaded = tree_of(fixed)
    assert downloaded.keys() == tree_of(original).keys()
    assert downloaded["README.md"] == b"A small app.\n"
    assert b"hashlib.md5(" not in downloaded["app/passwords.py"]  # the reviewer's HIGH finding, fixed

    again = await cadre("result", task_id, "--workspace", str(fixed), settings=settings, cwd=tmp_path)
    one_line_error(again, 1, "is not empty", "--force")

    patch = tmp_path / "fix.patch"
    made = await cadre("result", task_id, "--patch", str(patch), settings=settings, cwd=tmp_path)
    assert made.err == "" and "fix.patch: 1 file(s) changed" in made.out, made
    assert patch.read_text().startswith("diff --git a/app/passwords.py b/app/passwords.py\n")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    applied = subprocess.run(["git", "apply", str(patch)], cwd=copy, capture_output=True, text=True)  # noqa: S603, S607
    assert applied.returncode == 0, applied.stderr
    assert tree_of(copy) == downloaded


async def test_an_artifact_whose_bytes_do_not_match_its_sha256_name_is_refused(
    bus: Bus, tmp_path: Path
) -> None:
    client = CadreClient(bus)
    good = await bus.put_artifact(pack_files({"a.py": "x = 1\n"}))
    assert await downloads.offer(bus, client.client_name, [good]) == 1
    assert read_tree(await client.artifact(good)) == {"a.py": b"x = 1\n"}
    # a download stored under a hash that is not its own: a damaged or tampered stream
    forged = "f" * 64
    bad = pack_files({"a.py": "import os; os.system('rm -rf ~')\n"})
    await bus.js.publish(bus.subjects.download(client.client_name, forged, 0), bad)
    ref = ArtifactRef(name=forged, size=len(bad), sha256=forged)
    with pytest.raises(ArtifactCorrupt, match="does not hash to its name"):
        await client.artifact(ref)


async def test_a_rejected_task_exits_1_with_its_reason(
    bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    stack.add("orchestrator")
    # a review needs code to review; none attached
    ran = await cadre(
        "submit",
        "-d",
        "Review nothing",
        "-t",
        "review",
        "--wait",
        "--timeout",
        "60",
        settings=settings,
        cwd=tmp_path,
    )
    assert ran.rc == 1, (ran.out, ran.err)
    assert "Task rejected" in ran.out and "REJECTED" in ran.out
    task_id = ran.out.splitlines()[0].strip()
    watched = await cadre("watch", task_id, settings=settings, cwd=tmp_path)
    assert watched.rc == 1 and "Task rejected" in watched.out


async def test_cancel_stops_a_running_task_and_watch_reports_it(
    bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    stack.add("orchestrator")
    stack.add("researcher", brain=ECHO)
    hold = tmp_path / "hold"
    hold.touch()
    try:
        task = research_file(tmp_path, "A long question", hold_file=str(hold))
        ran = await cadre("submit", task.name, settings=settings, cwd=tmp_path)
        assert ran.rc == 0, ran.err
        task_id = ran.out.strip()

        async with CadreClient.connect(settings) as client:

            async def started() -> bool:
                found = [e async for e in _events_so_far(client, task_id)]
                return any(e.kind == "step_started" for e in found)

            await wait_for_value(started, 60, what="the research step to start")
        stopped = await cadre(
            "cancel", task_id, "--reason", "changed my mind", settings=settings, cwd=tmp_path
        )
        assert stopped.rc == 0, stopped.err
        assert f"cancelled {task_id}" in stopped.out
        watched = await cadre("watch", task_id, settings=settings, cwd=tmp_path)
        assert watched.rc == 1
        assert "changed my mind" in watched.out
    finally:
        hold.unlink(missing_ok=True)


async def _events_so_far(client: CadreClient, task_id: str):
    """The events stored so far (the SDK iterator would wait for the end)."""
    s = client.subjects
    sub = await client.bus.js.subscribe(
        s.events_of("client", task_id),
        stream=s.stream_events,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except Exception:
                return
            yield event_decoder.decode(msg.data)
    finally:
        await sub.unsubscribe()


# --- the SDK ---------------------------------------------------------------------------------------------------
async def test_sdk_follows_a_task_to_its_end_and_knows_unknown_ids(
    bus: Bus, stack: Stack, settings: StackSettings
) -> None:
    stack.add("orchestrator")
    stack.add("researcher", brain=ECHO)
    async with CadreClient.connect(settings) as client:
        with pytest.raises(TaskNotFound):
            await client.result("task_never_was", timeout=0)
        task_id = await client.submit(
            TaskSubmission(message_id="", task_type="research", task=TaskBody(description="What is PKCE?"))
        )
        kinds = [e.kind async for e in client.events(task_id, timeout=60)]
        assert kinds[0] == "received" and kinds[-1] == "completed"
        result = await client.result(task_id, timeout=10)
        assert result.status == "completed" and result.task_id == task_id
        # replay=True from another iterator gives the same sequence
        assert [e.kind async for e in client.events(task_id, timeout=10)] == kinds
        found = await client.services(wait=0.5)
        assert {s.name for s in found} == {"cadre-orchestrator", "cadre-researcher"}


async def test_sdk_resubmitting_a_message_id_is_the_same_task(
    bus: Bus, stack: Stack, settings: StackSettings
) -> None:
    stack.add("orchestrator")
    stack.add("researcher", brain=ECHO)
    async with CadreClient.connect(settings) as client:
        task = TaskSubmission(
            message_id=new_id("msg"), task_type="research", task=TaskBody(description="once")
        )
        first = await client.submit(task)
        assert first == f"task_{task.message_id}"
        # a re-send (a retry after a lost ack) maps to the same task: one task, one result
        assert await client.submit(task) == first
        assert await client.submit(msgspec.structs.replace(task, task_id=first)) == first
        result = await client.result(first, timeout=60)
        assert result.status == "completed", result.reason
        received = [e for e in [e async for e in client.events(first, timeout=10)] if e.kind == "received"]
        assert len(received) == 1, received


# --- status / metrics -------------------------------------------------------------------------------------------
async def test_status_and_metrics_come_from_the_monitor(
    bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    stack.add("researcher", brain=ECHO)
    no_monitor = await cadre("metrics", settings=settings, cwd=tmp_path)
    one_line_error(no_monitor, 2, "no monitor is answering", f"{settings.prefix}.monitor.snapshot")

    stack.add("monitor", monitor_http_port=0)

    async def monitor_up() -> Ran | None:
        ran = await cadre("metrics", settings=settings, cwd=tmp_path)
        return ran if ran.rc == 0 else None

    metrics = await wait_for_value(monitor_up, 60, interval=0.3, what="the monitor's snapshot")
    figures = json.loads(metrics.out)
    assert set(figures) == {"orchestrator", "researcher", "developer", "reviewer"}
    assert "tasks_completed" in figures["researcher"]

    status = await cadre("status", settings=settings, cwd=tmp_path)
    assert status.rc == 0, status.err
    assert "researcher-1" in status.out and "cadre-monitor" in status.out


# --- the embedded deployment ----------------------------------------------------------------------------------------
async def test_up_starts_healthy_services_and_down_stops_them(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.client.cli.app",
        "up",
        "--services",
        "researcher,developer,reviewer",
        "--replicas",
        "2",
        "--brain",
        ECHO,
        "--state-dir",
        str(state_dir),
        "--prefix",
        "uptest",
        cwd=tmp_path,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def ready():
            state = read_state(state_dir)
            return state if state and state.ready else None

        state = await wait_for_value(ready, 90, interval=0.2, what="cadre up to report ready")
        assert len(state.services) == 6 and state.nats is not None
        # other commands find the deployment through the state file
        status = await cadre("status", "--state-dir", str(state_dir), cwd=tmp_path)
        assert status.rc == 0, status.err
        for instance in ("researcher-1", "researcher-2", "developer-2", "reviewer-2"):
            assert instance in status.out
        down = await cadre("down", "--state-dir", str(state_dir), cwd=tmp_path)
        assert down.rc == 0, down.err
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "Healthy services" in out.decode() and "stopped" in out.decode()
        pids = [s.pid for s in state.services] + [state.nats.pid]
        assert not [p for p in pids if pid_alive(p)]
        assert read_state(state_dir) is None
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


@pytest.mark.slow
async def test_up_example_runs_the_offline_example_to_an_approved_result(tmp_path: Path) -> None:
    """`make run`: nats-server, every service with the builtin brains, the example task, clean stop."""
    ran = await cadre(
        "up",
        "--example",
        "--timeout",
        "300",
        "--state-dir",
        str(tmp_path / "state"),
        cwd=tmp_path,
        timeout=420,
    )
    assert ran.rc == 0, ran.out[-3000:] + ran.err[-3000:]
    out = ran.out
    assert "Healthy services" in out
    for line in (
        "[Orchestrator] Received task: Harden the user authentication API",
        "[Orchestrator] → [Researcher]:",
        "[Orchestrator] → [Reviewer]:",
        "[Reviewer] → [Orchestrator]:",
        "[Orchestrator] → Final Output:",
    ):
        assert line in out, line
    assert ": COMPLETED (approved)" in out
    assert out.rstrip().endswith("stopped")


@pytest.mark.slow
@pytest.mark.timeout(900)  # three agents running real tools; minutes on a loaded 2-core machine
async def test_submit_wait_on_the_example_task_prints_the_trace_and_an_approved_result(
    bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    stack.add("orchestrator", step_deadline=600.0)  # a loaded 2-core machine: fix steps can take minutes
    for name in ("researcher", "developer", "reviewer"):
        stack.add(name)
    example = ROOT / "examples" / "tasks" / "harden-auth-api.yaml"
    ran = await cadre(
        "submit", str(example), "--wait", "--timeout", "600", settings=settings, cwd=tmp_path, timeout=660
    )
    assert ran.rc == 0, ran.out[-3000:] + ran.err[-3000:]
    assert "[Reviewer] → [Orchestrator]:" in ran.out
    assert "Security score:" in ran.out
    assert "[Orchestrator] → [Developer]:" in ran.out  # the fix round
    assert ": COMPLETED (approved)" in ran.out
    # a per-file summary, not every diff
    assert "Changed files (" in ran.out and "auth_api/passwords.py" in ran.out
    assert "```diff" not in ran.out and "\n@@ -" not in ran.out and "+++ b/" not in ran.out
    task_id = ran.out.splitlines()[0].strip()

    # the patched tree, as the user gets it
    fixed = tmp_path / "fixed"
    got = await cadre("result", task_id, "--workspace", str(fixed), settings=settings, cwd=tmp_path)
    assert got.rc == 0, got.err
    result = await CadreClient(bus).result(task_id, timeout=0)
    assert f"workspace sha256 {result.artifacts['workspace'].sha256}" in got.out
    downloaded = tree_of(fixed)
    original = tree_of(ROOT / "examples" / "auth-api")
    assert downloaded != original and downloaded.keys() >= {"auth_api/passwords.py", "tests/test_auth.py"}
    assert b"hashlib.md5(" not in downloaded["auth_api/passwords.py"]  # the reviewer's HIGH finding, fixed

    # a non-empty folder is refused (nothing written) unless --force
    again = await cadre("result", task_id, "--workspace", str(fixed), settings=settings, cwd=tmp_path)
    one_line_error(again, 1, "is not empty", "--force")
    forced = await cadre("result", task_id, "-w", str(fixed), "--force", settings=settings, cwd=tmp_path)
    assert forced.rc == 0, forced.err

    # the patch applies with git to a copy of the submitted code and gives the downloaded tree
    patch = tmp_path / "fix.patch"
    made = await cadre("result", task_id, "--patch", str(patch), settings=settings, cwd=tmp_path)
    assert made.rc == 0, made.err
    assert patch.read_text().startswith("diff --git a/")
    copy = tmp_path / "copy"
    shutil.copytree(
        ROOT / "examples" / "auth-api", copy, ignore=shutil.ignore_patterns(*SKIP_DIRS, ".coverage")
    )
    applied = subprocess.run(  # noqa: S603
        ["git", "apply", "--whitespace=nowarn", str(patch)],  # noqa: S607
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert applied.returncode == 0, applied.stderr
    assert tree_of(copy) == downloaded
