"""The CLI's progress board follows a task's events; trace lines are printed verbatim."""

from __future__ import annotations

import json

from rich.console import Console

from shared.client.cli.view import StepBoard, snapshot_view, trace_text
from shared.contract.monitoring import snapshot_decoder
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


def test_the_status_view_shows_health_instances_alerts_and_tasks_from_a_typed_snapshot() -> None:
    from tests.unit.test_fuzz_decoders import SNAPSHOT

    doc = {
        **SNAPSHOT,
        "instances": [
            {
                "role": "developer",
                "instance_id": "developer-7",
                "state": "suspect",
                "status": "busy",
                "in_flight": 1,
                "current": ["task_a/fix/2"],
                "last_seen_s": 1.5,
                "uptime_s": 30.0,
                "heartbeat_interval": 0.5,
                "steps_completed": 4,
            }
        ],
        "alerts": [
            {
                "type": "alert",
                "alert_id": "a1",
                "kind": "instance_dead",
                "severity": "critical",
                "role": "developer",
                "instance_id": "developer-3",
                "text": "developer instance developer-3 is dead\x1b[2J",
                "at": 100.0,
            }
        ],
        "recent_tasks": [
            {
                "task_id": "task_a",
                "status": "running",
                "first_at": 1.0,
                "last_at": 2.0,
                "delegated": 3,
                "steps_completed": 2,
                "steps_failed": 0,
                "conflicts": 1,
                "retries": 0,
                "reassignments": 1,
                "duration_s": None,
                "duration": None,
            }
        ],
    }
    snap = snapshot_decoder.decode(json.dumps(doc))
    console = Console(width=200, record=True, color_system=None)
    console.print(snapshot_view(snap))
    out = console.export_text()
    assert "developer-7" in out and "suspect" in out and "task_a/fix/2" in out
    assert "developer-3 is dead" in out and "\x1b" not in out  # no terminal escapes from the bus
    assert "task_a" in out and "running" in out
    assert out.index("Health") < out.index("Instances") < out.index("Alerts") < out.index("Recent tasks")
