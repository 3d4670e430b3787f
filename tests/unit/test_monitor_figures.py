"""The spec's figures folded from MetricEvents: every figure from known inputs."""

from __future__ import annotations

import random

import msgspec
import pytest

from services.monitor.figures import ACCURACY_UNAVAILABLE, Figures, human_duration
from shared.contract.protocol import MetricEvent, Usage


def ev(kind: str, role: str = "orchestrator", at: float = 100.0, **kw: object) -> MetricEvent:
    fields: dict = {"instance_id": f"{role}-1", "task_id": "task_a", **kw}
    return MetricEvent(kind=kind, role=role, at=at, **fields)


def spec_example() -> list[MetricEvent]:
    """One run of the spec's feature task: research, implement, tests, review x2 with a fix, perf, final."""
    return [
        ev("decomposed", duration_s=2.3, at=100.0),
        *[ev("delegated", step_id=s, at=101.0) for s in ("research", "impl", "tests", "review", "fix")],
        *[ev("delegated", step_id=s, at=150.0) for s in ("review2", "perf", "final")],
        ev("step_completed", "researcher", duration_s=330.0, step_id="research"),
        ev("step_completed", "developer", duration_s=900.0, step_id="impl"),
        ev("step_completed", "developer", duration_s=600.0, step_id="tests"),
        ev("step_completed", "reviewer", duration_s=480.0, step_id="review", issues_found=3),
        ev("review_verdict", approved=False, first_round=True, value=85.0),
        ev("conflict_resolved", step_id="fix"),
        ev("step_completed", "developer", duration_s=300.0, step_id="fix"),
        ev("step_completed", "reviewer", duration_s=420.0, step_id="review2", issues_found=0),
        ev("review_verdict", approved=True, first_round=False, value=98.0),
        ev("step_completed", "developer", duration_s=200.0, step_id="perf"),
        ev("step_completed", "reviewer", duration_s=540.0, step_id="final", issues_found=1),
        ev("task_finished", value=1.0, at=200.0),
    ]


def fold(events: list[MetricEvent]) -> Figures:
    f = Figures()
    for e in events:
        f.fold(e)
    return f


def test_the_spec_example_yields_each_figure_of_the_spec() -> None:
    f = fold(spec_example())
    o, r, d, v = f.orchestrator(), f.researcher(), f.developer(), f.reviewer()
    assert (o.tasks_delegated, o.avg_decomposition_time, o.conflict_resolutions) == (8, "2.3s", 1)
    assert (r.tasks_completed, r.avg_research_time, r.accuracy_score) == (1, "5m 30s", None)
    assert r.accuracy_note == ACCURACY_UNAVAILABLE
    assert (d.tasks_completed, d.avg_coding_time, d.first_approval_rate) == (4, "8m 20s", 0.0)
    assert d.avg_coding_time_s == 500.0 and d.first_round_reviews == 1
    assert (v.tasks_completed, v.avg_review_time, v.issues_found_per_task) == (3, "8m", 1.333)
    assert v.issues_found == 4 and v.avg_review_score == 91.5
    t = f.totals()
    assert (t.tasks_finished, t.tasks_completed, t.tasks_failed, t.steps_completed) == (1, 1, 0, 8)
    (task,) = f.recent_tasks()
    assert (task.task_id, task.status, task.delegated, task.steps_completed, task.conflicts) == (
        "task_a",
        "completed",
        8,
        8,
        1,
    )
    assert task.duration_s == 100.0 and task.duration == "1m 40s"


def test_the_figures_do_not_depend_on_the_order_events_arrive_in() -> None:
    events = spec_example()
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)
    a, b = fold(events), fold(shuffled)
    assert msgspec.to_builtins(a.role_figures()) == msgspec.to_builtins(b.role_figures())
    assert a.totals() == b.totals()


def test_first_approval_rate_counts_only_first_round_verdicts() -> None:
    f = fold(
        [
            ev("review_verdict", approved=True, first_round=True),
            ev("review_verdict", approved=False, first_round=True),
            ev("review_verdict", approved=True, first_round=True),
            ev("review_verdict", approved=True, first_round=False),
        ]
    )
    assert f.developer().first_approval_rate == 0.667
    assert f.developer().first_round_reviews == 3


def test_accuracy_is_the_mean_of_research_used_judgements_when_there_are_any() -> None:
    f = fold(
        [
            ev("research_used", "orchestrator", value=1.0),
            ev("research_used", value=0.0),
            ev("research_used", value=1.0),
        ]
    )
    r = f.researcher()
    assert r.accuracy_score == 0.667
    assert "3 judged" in r.accuracy_note


def test_unmeasured_figures_are_null_not_zero() -> None:
    f = Figures()
    assert f.orchestrator().avg_decomposition_time is None
    assert f.researcher().avg_research_time_s is None
    assert f.developer().first_approval_rate is None
    assert f.reviewer().issues_found_per_task is None


def test_failures_retries_reassignments_and_usage_are_counted() -> None:
    f = fold(
        [
            ev(
                "step_failed",
                "developer",
                duration_s=3.0,
                usage=Usage(prompt_tokens=100, completion_tokens=20, requests=2, cost_usd=0.004),
            ),
            ev(
                "step_completed",
                "developer",
                duration_s=5.0,
                usage=Usage(prompt_tokens=50, completion_tokens=10, requests=1, cost_usd=0.002),
            ),
            ev("retry", step_id="impl"),
            ev("reassigned", step_id="impl"),
            ev("task_finished", value=0.0),
        ]
    )
    d = f.developer()
    assert (d.tasks_completed, d.failures, d.avg_coding_time_s) == (1, 1, 5.0)
    assert (d.usage.prompt_tokens, d.usage.completion_tokens, d.usage.requests, d.usage.cost_usd) == (
        150,
        30,
        3,
        0.006,
    )
    o = f.orchestrator()
    assert (o.retries, o.reassignments) == (1, 1)
    t = f.totals()
    assert (t.failures, t.retries, t.reassignments, t.tasks_failed) == (1, 1, 1, 1)
    assert t.usage.prompt_tokens == 150
    assert f.recent_tasks()[0].status == "failed"
    assert f.by_instance("developer-1") == (1, 1)


def test_unknown_kinds_are_ignored_and_counted() -> None:
    f = fold([ev("mystery"), ev("delegated")])
    assert f.totals().ignored_events == 1 and f.totals().events_folded == 2
    assert f.orchestrator().tasks_delegated == 1


def test_recent_tasks_are_newest_first_and_capped() -> None:
    f = Figures(recent_tasks_kept=3, tasks_tracked=5)
    for i in range(8):
        f.fold(ev("delegated", task_id=f"task_{i}", at=float(i)))
    assert [t.task_id for t in f.recent_tasks()] == ["task_7", "task_6", "task_5"]
    assert len(f._tasks) == 5


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, None),
        (0.00042, "0.42ms"),
        (0.042, "42ms"),
        (2.3, "2.3s"),
        (59.94, "59.9s"),
        (330, "5m 30s"),
        (900, "15m"),
        (480.4, "8m"),
        (3600, "1h"),
        (3900, "1h 5m"),
    ],
)
def test_durations_read_like_the_spec(seconds: float | None, text: str | None) -> None:
    assert human_duration(seconds) == text
