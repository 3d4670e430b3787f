"""One root exception; subclasses carry typed attributes and say whether a retry can help."""

from __future__ import annotations

__all__ = [
    "CadreError",
    "InvalidSubjectToken",
    "InvalidMessage",
    "BrainError",
    "CapabilityMissing",
    "WrongInputs",
    "ToolFailed",
    "PlanError",
    "LLMError",
    "NotConnected",
    "TaskNotFound",
]


class CadreError(Exception):
    """Root of every error Cadre raises on purpose.

    ``non_retryable`` travels on the wire: a brain that raises a non-retryable
    error yields a failed ``StepResult`` with ``retryable=False``, and the
    orchestrator then fails the step at once instead of re-dispatching it.
    """

    non_retryable: bool = False


class InvalidSubjectToken(CadreError, ValueError):
    non_retryable = True

    def __init__(self, value: str, why: str | None = None) -> None:
        self.value = value
        super().__init__(why or f"invalid subject token {value!r}: use letters, digits, '_' or '-'")


class InvalidMessage(CadreError):
    """A message that cannot be decoded or validated; it goes to the dead-letter stream."""

    non_retryable = True

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"invalid message on {subject}: {reason}")


class BrainError(CadreError):
    """A brain could not do its step."""


class CapabilityMissing(BrainError):
    """The step needs something this brain does not have (e.g. a model)."""

    non_retryable = True

    def __init__(self, what: str, needs: str) -> None:
        self.what = what
        self.needs = needs
        super().__init__(f"{what} needs {needs}")


class WrongInputs(BrainError):
    """A work item whose typed inputs are not the kind the brain works with for its step.

    Another attempt carries the same inputs, so it cannot help.
    """

    non_retryable = True

    def __init__(self, step: str, expected: str, got: str) -> None:
        self.step = step
        self.expected = expected
        self.got = got
        super().__init__(f"step {step} needs {expected} inputs, but its work item carries {got}")


class ToolFailed(BrainError):
    def __init__(self, tool: str, detail: str) -> None:
        self.tool = tool
        self.detail = detail
        super().__init__(f"{tool} failed: {detail}")


class PlanError(CadreError):
    non_retryable = True


class LLMError(BrainError):
    """The model endpoint failed or answered something unusable."""

    def __init__(self, detail: str, *, retryable: bool = False) -> None:
        self.detail = detail
        self.non_retryable = not retryable
        super().__init__(detail)


class NotConnected(CadreError):
    def __init__(self, servers: str, detail: str = "") -> None:
        self.servers = servers
        super().__init__(f"no NATS server reachable at {servers}" + (f": {detail}" if detail else ""))


class TaskNotFound(CadreError):
    non_retryable = True

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"unknown task id {task_id!r}: no events or result on the bus")
