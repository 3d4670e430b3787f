"""Every subject, stream and bucket name, in one place.

All names hang off a prefix (default ``cadre``) so several deployments, or
tests running side by side, share one server without seeing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.contract.errors import InvalidSubjectToken
from shared.contract.protocol import AGENT_ROLES, PRIORITIES

__all__ = ["Subjects", "token", "StepSource"]

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def token(value: str) -> str:
    """Validate one subject token (no dots, wildcards or spaces)."""
    if not _TOKEN.match(value):
        raise InvalidSubjectToken(value)
    return value


@dataclass(frozen=True)
class StepSource:
    """Who a step message's subject says sent it (enforced by the server's permissions)."""

    role: str
    task_id: str


@dataclass(frozen=True)
class Subjects:
    """Subject builders and JetStream names for one prefix."""

    prefix: str = "cadre"

    def __post_init__(self) -> None:
        token(self.prefix)

    # --- subjects -----------------------------------------------------------
    # What a client sends and what comes back to it carry the client's name as a token:
    # the server's permissions let each client user use only its own name, so the name
    # is an identity the server enforces (never a claim in a payload). docs/security.md.
    def task_submit(self, client: str) -> str:
        """Where ``client`` submits tasks (its user may publish only under its own name)."""
        return f"{self.prefix}.task.submit.{token(client)}"

    @property
    def task_submit_all(self) -> str:
        return f"{self.prefix}.task.submit.*"

    def task_cancel(self, client: str) -> str:
        """Request/reply: ``client`` asks the orchestrator to cancel one of its tasks."""
        return f"{self.prefix}.task.cancel.{token(client)}"

    @property
    def task_cancel_all(self) -> str:
        return f"{self.prefix}.task.cancel.*"

    def client_of(self, subject: str) -> str | None:
        """The client token of a submit or cancel subject (``<prefix>.task.<verb>.<client>``), else None."""
        parts = subject.split(".")
        if len(parts) != 4 or parts[0] != self.prefix or parts[1] != "task":
            return None
        if parts[2] not in ("submit", "cancel") or not _TOKEN.match(parts[3]):
            return None
        return parts[3]

    def work(self, role: str, priority: str) -> str:
        if role not in AGENT_ROLES:
            raise InvalidSubjectToken(role, f"unknown agent role {role!r}")
        if priority not in PRIORITIES:
            raise InvalidSubjectToken(priority, f"unknown priority {priority!r}")
        return f"{self.prefix}.work.{role}.{priority}"

    def work_all(self, role: str = "*") -> str:
        return f"{self.prefix}.work.{role}.*" if role != "*" else f"{self.prefix}.work.>"

    def step_result(self, role: str, task_id: str) -> str:
        """Where an agent of ``role`` publishes its step messages for one task.

        The role is in the subject so the server's permissions bind a result to
        the user that sent it: each agent user may publish only under its own role.
        """
        if role not in AGENT_ROLES:
            raise InvalidSubjectToken(role, f"unknown agent role {role!r}")
        return f"{self.prefix}.step.result.{role}.{token(task_id)}"

    def step_results_of(self, role: str) -> str:
        """Every step message one role may send (the permission pattern)."""
        return f"{self.prefix}.step.result.{token(role)}.*"

    @property
    def step_result_all(self) -> str:
        return f"{self.prefix}.step.result.>"

    def step_source(self, subject: str) -> StepSource | None:
        """The role and task id a step-result subject names, or None when it is not one."""
        parts = subject.split(".")
        head = f"{self.prefix}.step.result".split(".")
        if len(parts) != len(head) + 2 or parts[: len(head)] != head:
            return None
        return StepSource(role=parts[-2], task_id=parts[-1])

    def heartbeat_role(self, subject: str) -> str | None:
        """The role token of a heartbeat subject (``<prefix>.heartbeat.<role>.<instance>``)."""
        parts = subject.split(".")
        if len(parts) != 4 or parts[0] != self.prefix or parts[1] != "heartbeat":
            return None
        return parts[2]

    def refused(self, client: str, message_id: str) -> str:
        """Where the orchestrator answers a submission it refused whose task id is not its own.

        A refused submission that reuses another task's id must not overwrite
        ``result.<client>.<task_id>``; its sender reads the refusal here, by its message id.
        """
        return f"{self.prefix}.refused.{token(client)}.{token(message_id)}"

    @property
    def refused_all(self) -> str:
        return f"{self.prefix}.refused.>"

    def events(self, client: str, task_id: str, kind: str) -> str:
        """One event of a task, under the client that submitted it."""
        return f"{self.prefix}.events.{token(client)}.{token(task_id)}.{token(kind)}"

    def events_of(self, client: str, task_id: str = "*") -> str:
        """Every event of one task of ``client`` (``*``: of all its tasks)."""
        task = task_id if task_id == "*" else token(task_id)
        return f"{self.prefix}.events.{token(client)}.{task}.>"

    @property
    def events_all(self) -> str:
        return f"{self.prefix}.events.>"

    def result(self, client: str, task_id: str) -> str:
        """A task's final result, under the client that submitted it."""
        return f"{self.prefix}.result.{token(client)}.{token(task_id)}"

    def result_any(self, task_id: str) -> str:
        """A task's result under any client (task ids are unique across clients)."""
        return f"{self.prefix}.result.*.{token(task_id)}"

    @property
    def result_all(self) -> str:
        return f"{self.prefix}.result.>"

    def download(self, client: str, sha256: str, index: int) -> str:
        """One chunk of a result artifact the orchestrator offers to ``client`` (read by direct get)."""
        return f"{self.prefix}.download.{token(client)}.{token(sha256)}.{int(index)}"

    @property
    def download_all(self) -> str:
        return f"{self.prefix}.download.>"

    def heartbeat(self, role: str, instance_id: str) -> str:
        return f"{self.prefix}.heartbeat.{token(role)}.{token(instance_id)}"

    @property
    def heartbeat_all(self) -> str:
        return f"{self.prefix}.heartbeat.>"

    def metrics(self, role: str) -> str:
        return f"{self.prefix}.metrics.{token(role)}"

    @property
    def metrics_all(self) -> str:
        return f"{self.prefix}.metrics.>"

    def cancel(self, task_id: str) -> str:
        """Broadcast to agents: stop work on this task (core NATS)."""
        return f"{self.prefix}.control.cancel.{token(task_id)}"

    @property
    def cancel_all(self) -> str:
        return f"{self.prefix}.control.cancel.>"

    def alert(self, kind: str) -> str:
        return f"{self.prefix}.alert.{token(kind)}"

    @property
    def alert_all(self) -> str:
        return f"{self.prefix}.alert.>"

    def dead_letter(self, service: str) -> str:
        return f"{self.prefix}.deadletter.{token(service)}"

    @property
    def dead_letter_all(self) -> str:
        return f"{self.prefix}.deadletter.>"

    def upload(self, client: str, sha256: str, index: int) -> str:
        """One chunk of a client's upload: only that client's user may publish under its name."""
        return f"{self.prefix}.upload.{token(client)}.{token(sha256)}.{int(index)}"

    def uploads_of(self, client: str) -> str:
        return f"{self.prefix}.upload.{token(client)}.>"

    @property
    def upload_all(self) -> str:
        return f"{self.prefix}.upload.>"

    @property
    def monitor_snapshot(self) -> str:
        return f"{self.prefix}.monitor.snapshot"

    def agent_status(self, role: str, instance_id: str) -> str:
        """An agent instance's nats micro ``status`` endpoint (request/reply, answers ``AgentStatus``)."""
        return f"{self.prefix}.svc.{token(role)}.{token(instance_id)}.status"

    # --- JetStream names ------------------------------------------------------
    def _name(self, what: str) -> str:
        return f"{self.prefix.upper()}_{what}".replace("-", "_")

    @property
    def stream_tasks(self) -> str:
        return self._name("TASKS")

    @property
    def stream_work(self) -> str:
        return self._name("WORK")

    @property
    def stream_results(self) -> str:
        return self._name("STEP_RESULTS")

    @property
    def stream_events(self) -> str:
        return self._name("EVENTS")

    @property
    def stream_metrics(self) -> str:
        return self._name("METRICS")

    @property
    def stream_uploads(self) -> str:
        return self._name("UPLOADS")

    @property
    def stream_downloads(self) -> str:
        return self._name("DOWNLOADS")

    @property
    def stream_dead_letters(self) -> str:
        return self._name("DEAD_LETTERS")

    @property
    def kv_workflows(self) -> str:
        return self._name("workflows")

    @property
    def object_store(self) -> str:
        return self._name("artifacts")

    @staticmethod
    def work_consumer(role: str, priority: str) -> str:
        return f"{role}-{priority}"

    intake_consumer = "orchestrator-intake"
    results_consumer = "orchestrator-results"
