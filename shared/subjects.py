"""Every subject, stream and bucket name, in one place.

All names hang off a prefix (default ``cadre``) so several deployments, or
tests running side by side, share one server without seeing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import InvalidSubjectToken
from shared.protocol import AGENT_ROLES, PRIORITIES

__all__ = ["Subjects", "token"]

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def token(value: str) -> str:
    """Validate one subject token (no dots, wildcards or spaces)."""
    if not _TOKEN.match(value):
        raise InvalidSubjectToken(value)
    return value


@dataclass(frozen=True)
class Subjects:
    """Subject builders and JetStream names for one prefix."""

    prefix: str = "cadre"

    def __post_init__(self) -> None:
        token(self.prefix)

    # --- subjects -----------------------------------------------------------
    @property
    def task_submit(self) -> str:
        return f"{self.prefix}.task.submit"

    @property
    def task_cancel(self) -> str:
        """Request/reply: ask the orchestrator to cancel a task."""
        return f"{self.prefix}.task.cancel"

    def work(self, role: str, priority: str) -> str:
        if role not in AGENT_ROLES:
            raise InvalidSubjectToken(role, f"unknown agent role {role!r}")
        if priority not in PRIORITIES:
            raise InvalidSubjectToken(priority, f"unknown priority {priority!r}")
        return f"{self.prefix}.work.{role}.{priority}"

    def work_all(self, role: str = "*") -> str:
        return f"{self.prefix}.work.{role}.*" if role != "*" else f"{self.prefix}.work.>"

    def step_result(self, task_id: str) -> str:
        return f"{self.prefix}.step.result.{token(task_id)}"

    @property
    def step_result_all(self) -> str:
        return f"{self.prefix}.step.result.>"

    def events(self, task_id: str, kind: str) -> str:
        return f"{self.prefix}.events.{token(task_id)}.{token(kind)}"

    def events_all(self, task_id: str = "*") -> str:
        return f"{self.prefix}.events.{task_id if task_id == '*' else token(task_id)}.>"

    def result(self, task_id: str) -> str:
        return f"{self.prefix}.result.{token(task_id)}"

    @property
    def result_all(self) -> str:
        return f"{self.prefix}.result.>"

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

    @property
    def monitor_snapshot(self) -> str:
        return f"{self.prefix}.monitor.snapshot"

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
