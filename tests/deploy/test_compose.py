"""The real compose deployment: docker-compose.yml run by podman-compose on podman.

Run by ``make test-deploy`` (deploy/scripts/test-deploy.sh builds the images
first and sets ``CADRE_TEST_DEPLOY=1``); skipped anywhere else. One scenario:
bring the stack up (NATS with the least-privilege config, bootstrap,
orchestrator, 2 replicas of each agent role, monitor), see every service
report in through the monitor's published HTTP port, run each container's
healthcheck, submit the spec's example task from a client container, kill the
agent replica that is working on it, get the final result anyway, tear down.

podman-compose 1.0.3 ignores ``depends_on`` conditions and does not run
healthchecks by itself: the services retry their connections, and this test
runs ``podman healthcheck run`` on each container.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("CADRE_TEST_DEPLOY") != "1", reason="container deployment test: run `make test-deploy`"
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "deploy"
PROJECT = "cadretest"
SERVICES = ["nats", "bootstrap", "orchestrator", "researcher", "developer", "reviewer", "monitor"]
AGENTS = ("researcher", "developer", "reviewer")
REPLICAS = 2
EXAMPLE = "examples/tasks/harden-auth-api.yaml"

T = TypeVar("T")


def until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def json_document(text: str) -> Any:
    """The pretty-printed JSON object in a command's output (podman-compose adds its own lines)."""
    lines = text.splitlines()
    start = lines.index("{")
    end = len(lines) - 1 - lines[::-1].index("}")
    return json.loads("\n".join(lines[start : end + 1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Compose:
    env: dict[str, str]
    log: list[str] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.log.append("$ " + " ".join(args))
        proc = subprocess.run(
            list(args),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        self.log.append(proc.stdout[-4000:] + proc.stderr[-4000:])
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def compose(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("podman-compose", "-p", PROJECT, "-f", "docker-compose.yml", *args, **kw)

    def one_off(
        self, service: str, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A one-off container of ``service``, with the container's own exit code.

        podman-compose (1.0.x) prints ``exit code: N`` for `run` and itself exits 0, so the
        command's status is read from that line when the tool printed one.
        """
        proc = self.compose("run", "--rm", "--no-deps", "-T", service, *args, timeout=timeout, check=False)
        codes = re.findall(r"^exit code: (\d+)$", proc.stdout, flags=re.M)
        if codes:
            proc = subprocess.CompletedProcess(proc.args, int(codes[-1]), proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{service} {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}"
            )
        return proc

    def client(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A one-off container of the `client` service (the `cadre` CLI, client user)."""
        return self.one_off("client", *args, timeout=timeout, check=check)

    def operator(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A one-off container of the `operator` service (the `cadre` CLI, operator user)."""
        return self.one_off("operator", *args, timeout=timeout)

    def containers(self) -> dict[str, dict[str, Any]]:
        out = self.run(
            "podman", "ps", "-a", "--format", "json", "--filter", f"label=io.podman.compose.project={PROJECT}"
        )
        return {c["Names"][0]: c for c in json.loads(out.stdout or "[]")}

    def http_json(self, url: str) -> Any:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        self.compose("down", "-v", "-t", "10", check=False, timeout=180)
        # podman-compose 1.0.3 leaves its network (and sometimes the volume) behind
        self.run("podman", "network", "rm", "-f", f"{PROJECT}_default", check=False)
        self.run("podman", "volume", "rm", "-f", f"{PROJECT}_nats-data", check=False)

    def save_logs(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name in self.containers():
            logs = self.run("podman", "logs", name, check=False)
            (ARTIFACTS / f"{name}.log").write_text(logs.stdout + logs.stderr)
        (ARTIFACTS / "commands.log").write_text("\n".join(self.log))


@pytest.fixture(scope="module")
def stack() -> Iterator[Compose]:
    for tool in ("podman", "podman-compose"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (make test-deploy installs it)")
    passwords = {
        f"CADRE_PW_{u}": "pw" + uuid.uuid4().hex
        for u in (
            "BOOTSTRAP",
            "ORCHESTRATOR",
            "RESEARCHER",
            "DEVELOPER",
            "REVIEWER",
            "MONITOR",
            "OPERATOR",
            "CLIENT",
        )
    }
    env = {
        **os.environ,
        **passwords,
        "CADRE_REPLICAS": str(REPLICAS),
        "CADRE_MONITOR_PORT": str(free_port()),
        "CADRE_NATS_PORT": str(free_port()),
        # quick failure detection for the kill below: redelivery after 10 s, 0.5 s heartbeats
        "CADRE_ACK_WAIT": "10",
        "CADRE_HEARTBEAT_INTERVAL": "0.5",
    }
    c = Compose(env)
    c.cleanup()  # a previous run killed half-way
    try:
        c.compose("up", "-d", *SERVICES, timeout=600)
        yield c
    finally:
        c.save_logs()
        c.cleanup()


def monitor_url(c: Compose) -> str:
    return f"http://127.0.0.1:{c.env['CADRE_MONITOR_PORT']}"


def live_instances(c: Compose) -> list[dict[str, Any]]:
    status = c.http_json(monitor_url(c) + "/status") or {}
    return [i for i in status.get("instances", []) if i.get("state") == "alive"]


def test_the_compose_stack_runs_the_example_and_survives_a_killed_agent(stack: Compose) -> None:
    c = stack

    # 1. every service reports in: orchestrator + REPLICAS instances of each agent role
    def all_up() -> list[dict[str, Any]] | None:
        inst = live_instances(c)
        roles = [i["role"] for i in inst]
        ok = roles.count("orchestrator") >= 1 and all(roles.count(r) >= REPLICAS for r in AGENTS)
        return inst if ok else None

    instances = until(all_up, 180, "every service to heartbeat through the monitor")
    print(f"monitor sees {len(instances)} instances: {sorted(i['role'] for i in instances)}")
    boot = c.containers()[f"{PROJECT}_bootstrap_1"]
    assert boot["ExitCode"] == 0, boot

    # 2. submit the spec's example task from a client container
    task_id = f"task_deploy_{uuid.uuid4().hex[:8]}"
    submitted = c.client("cadre", "submit", EXAMPLE, "--task-id", task_id)
    assert task_id in submitted.stdout, submitted.stdout + submitted.stderr

    # 3. kill the agent replica that is working on it, mid-step: a developer (its steps run the
    #    workspace's test suite under coverage, ~10 s here; research and review steps take <1 s,
    #    too short to aim a kill at without racing the step's own end)
    def busy_developer() -> dict[str, Any] | None:
        status = c.http_json(monitor_url(c) + "/status") or {}
        task = next((t for t in status.get("recent_tasks", []) if t["task_id"] == task_id), None)
        if task is not None and task["status"] != "running":  # ended before any developer step
            shown = c.client("cadre", "result", task_id, "--format", "summary")
            raise AssertionError(
                f"task ended ({task['status']}) before a developer got busy:\n{shown.stdout}"
            )
        return next((i for i in live_instances(c) if i["role"] == "developer" and i.get("current")), None)

    victim = until(busy_developer, 240, "a developer replica to be busy with the task", interval=0.2)
    killed = c.run("podman", "kill", victim["instance_id"], check=False)
    print(f"killed {victim['role']} instance {victim['instance_id']} mid-step: rc={killed.returncode}")
    assert killed.returncode == 0, killed.stderr

    # 4. the task still completes: JetStream redelivers the unacked item to the other replica
    waited = c.client(
        "cadre", "result", task_id, "--wait", "--format", "json", "--timeout", "600", timeout=660
    )
    result = json_document(waited.stdout)
    print(f"result: status={result['status']} approved={result.get('approved')} steps={len(result['steps'])}")
    assert result["status"] == "completed", result.get("reason")
    # the step the killed replica held was finished by another replica
    step_id = victim["current"][0].split("/")[1]
    record = next(s for s in result["steps"] if s["step_id"] == step_id)
    print(f"step {step_id}: killed on {victim['instance_id']}, completed by {record['instance_id']}")
    assert record["status"] == "completed" and record["instance_id"] != victim["instance_id"]
    # 5. the monitor noticed the dead replica
    alerts = (c.http_json(monitor_url(c) + "/status") or {}).get("alerts", [])
    assert any(a.get("instance_id") == victim["instance_id"] for a in alerts), alerts
    # ... and its views are the operator's: `cadre status` works with the operator login and is
    #     refused, in one line naming that login, to the client login (it lists every client's tasks)
    as_operator = c.operator("cadre", "status", "--json")
    assert task_id in as_operator.stdout, as_operator.stdout + as_operator.stderr
    as_client = c.client("cadre", "status", check=False)
    print(f"cadre status as the client: rc={as_client.returncode} {as_client.stderr.strip()}")
    assert as_client.returncode == 2 and "operator login" in as_client.stderr, as_client.stderr

    # 6. each running container's own healthcheck passes (podman does not schedule them here; run
    #    once the task is done: on 2 cores the start-up burst can push a check past its timeout)
    for name, info in c.containers().items():
        if info["State"] != "running":
            continue
        # as compose's `retries: 3`: unhealthy only after three failed checks in a row
        for attempt in range(1, 4):
            hc = c.run("podman", "healthcheck", "run", name, check=False, timeout=60)
            print(f"healthcheck {name} (check {attempt}): rc={hc.returncode} {hc.stdout.strip()}")
            if hc.returncode == 0:
                break
        assert hc.returncode == 0, (name, hc.stdout, hc.stderr)
