"""The history checker itself: each bad figure is found, and a clean history passes."""

from __future__ import annotations

import msgspec

from shared.contract.protocol import FinalResult, StepRecord, StepRun, StepStarted, TaskEvent
from tests.chaos.history import History, check


def _result(task: str, status: str = "completed", attempts: int = 1, reason: str = "") -> FinalResult:
    step = StepRecord(
        step_id="analyze",
        role="researcher",
        task_type="research",
        description="d",
        status="completed",
        attempts=attempts,
        instance_id="researcher-1",
        summary="s",
    )
    return FinalResult(
        task_id=task, status=status, approved=status == "completed", reason=reason, steps=[step]
    )  # type: ignore[arg-type]


def _started(task: str, instance: str, attempt: int = 1) -> StepStarted:
    return StepStarted(
        task_id=task,
        step_id="analyze",
        attempt=attempt,
        role="researcher",
        instance_id=instance,
        started_at=1.0,
    )


def _event(task: str, seq: int, kind: str, step: str | None = None) -> TaskEvent:
    return TaskEvent(task_id=task, kind=kind, text=kind, at=float(seq), seq=seq, step_id=step)


def _clean(task: str) -> list[TaskEvent]:
    return [
        _event(task, 1, "received"),
        _event(task, 2, "step_started", "analyze"),
        _event(task, 3, "completed"),
    ]


def test_a_clean_history_passes_with_its_figures() -> None:
    h = History(submitted=["t1"])
    h.saw_started(_started("t1", "researcher-1"))
    h.saw_result(_result("t1"))
    h.stored["t1"].append(_result("t1"))
    h.events["t1"] = _clean("t1")
    verdict = check(h)
    assert verdict.ok, verdict.table()
    assert (verdict.submitted, verdict.completed) == (1, 1)
    assert "lost              0" in verdict.table()


def test_a_task_without_a_stored_result_is_lost() -> None:
    h = History(submitted=["t1", "t2"])
    h.stored["t1"].append(_result("t1"))
    h.events["t1"] = _clean("t1")
    verdict = check(h)
    assert verdict.lost == ["t2"] and not verdict.ok


def test_two_different_results_for_one_task_are_caught_even_when_only_one_is_stored() -> None:
    h = History(submitted=["t1"])
    h.saw_result(_result("t1"))
    h.saw_result(_result("t1", "failed", reason="boom"))
    h.stored["t1"].append(_result("t1"))
    h.events["t1"] = _clean("t1")
    verdict = check(h)
    assert verdict.two_results == {"t1": ["completed", "failed"]}


def test_the_same_result_published_twice_is_one_result() -> None:
    h = History(submitted=["t1"])
    h.saw_result(_result("t1"))
    h.saw_result(_result("t1"))
    h.stored["t1"].append(_result("t1"))
    h.events["t1"] = _clean("t1")
    assert check(h).two_results == {}


def test_a_step_run_twice_but_reported_once_is_a_hidden_rerun() -> None:
    h = History(submitted=["t1"])
    h.saw_started(_started("t1", "researcher-1"))
    h.saw_started(_started("t1", "researcher-2"))
    h.stored["t1"].append(_result("t1"))
    h.events["t1"] = _clean("t1")
    verdict = check(h)
    assert verdict.reruns_hidden[0].startswith("t1/analyze x2") and not verdict.ok


def test_a_step_run_twice_and_traced_twice_is_a_visible_rerun() -> None:
    h = History(submitted=["t1"])
    h.saw_started(_started("t1", "researcher-1"))
    h.saw_started(_started("t1", "researcher-2", attempt=2))
    h.stored["t1"].append(_result("t1", attempts=2))
    h.events["t1"] = _clean("t1")
    verdict = check(h)
    assert verdict.reruns_visible[0].startswith("t1/analyze x2") and verdict.ok


def test_a_trace_with_a_seq_gap_or_an_event_after_the_final_one_fails() -> None:
    h = History(submitted=["t1", "t2"])
    for t in ("t1", "t2"):
        h.stored[t].append(_result(t))
    h.events["t1"] = [_event("t1", 1, "received"), _event("t1", 3, "completed")]
    h.events["t2"] = [*_clean("t2"), _event("t2", 4, "late_result", "analyze")]
    verdict = check(h)
    assert verdict.trace_gaps[0].startswith("t1 ") and verdict.after_final == ["t2"] and not verdict.ok


def test_a_rerun_whose_late_result_was_dead_lettered_after_the_end_is_visible() -> None:
    h = History(submitted=["t1"])
    first = msgspec.structs.replace(_started("t1", "researcher-1"), run_id="run_a")
    second = msgspec.structs.replace(_started("t1", "researcher-2"), run_id="run_b")
    h.saw_started(first)
    h.saw_started(second)
    run = StepRun(run_id="run_a", attempt=1, instance_id="researcher-1", outcome="applied")
    res = _result("t1")
    res = msgspec.structs.replace(res, steps=[msgspec.structs.replace(res.steps[0], runs=[run])])
    h.stored["t1"].append(res)
    h.events["t1"] = _clean("t1")
    assert check(h).reruns_hidden  # run_b is nowhere yet
    h.saw_dead_letter(second)
    verdict = check(h)
    assert not verdict.reruns_hidden and "run_b" in verdict.reruns_visible[0]
