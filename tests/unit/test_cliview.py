"""The CLI's progress board follows a task's events; trace lines are printed verbatim."""

from __future__ import annotations

from rich.console import Console

from shared.client.cli.view import StepBoard, trace_text
from shared.contract.protocol import Plan, PlanStep, TaskEvent

PLAN = Plan(
    template="review",
    steps=[
        PlanStep(id="research", role="researcher", task_type="research", description="Research"),
        PlanStep(id="security_review", role="reviewer", task_type="security_review", description="Review"),
    ],
)


def event(kind: str, text: str = "", **fields: object) -> TaskEvent:
    return TaskEvent(task_id="task_t", kind=kind, text=text or kind, at=100.0, **fields)  # type: ignore[arg-type]


def test_the_board_tracks_each_step_through_its_events() -> None:
    board = StepBoard()
    board.update(event("planned", plan=PLAN))
    assert [r.state for r in board.rows.values()] == ["pending", "pending"]
    board.update(event("delegated", step_id="research", role="researcher", attempt=1))
    board.update(event("step_started", "[Researcher] researcher-2 started research", step_id="research"))
    assert board.rows["research"].state == "running"
    assert board.rows["research"].instance == "researcher-2"
    board.update(event("step_completed", step_id="research"))
    board.update(event("review", step_id="security_review", score=82))
    assert board.rows["research"].state == "done"
    assert board.rows["security_review"].score == 82


def test_fix_rounds_the_plan_did_not_list_get_their_own_row() -> None:
    board = StepBoard()
    board.update(event("planned", plan=PLAN))
    text = "[Orchestrator] → [Developer]:\n  Task: Fix security issues\n  Context: auth-api"
    board.update(event("delegated", text, step_id="security_review.fix1", role="developer", attempt=1))
    row = board.rows["security_review.fix1"]
    assert (row.role, row.description, row.state) == ("developer", "Fix security issues", "queued")
    board.update(event("failed", "[Orchestrator] Task failed: boom"))
    assert board.status == "failed" and row.state == "cancelled"


def test_trace_text_keeps_brackets_literal() -> None:
    console = Console(record=True, width=200, color_system=None)
    console.print(trace_text(event("delegated", "[Orchestrator] → [Reviewer]:\n  Task: Security review")))
    assert console.export_text() == "[Orchestrator] → [Reviewer]:\n  Task: Security review\n"
