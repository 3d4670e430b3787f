"""The engine's promises: contiguous seq, nothing after the final event, visible re-runs,
honest retryability, review loops that stop without progress, and a bounded state."""

from __future__ import annotations

import msgspec

from services.orchestrator.plan import plan_from_template
from services.orchestrator.state import WorkflowState, encode_state
from services.orchestrator.workflow import Engine, EngineConfig
from shared.bus.outputs import shorten
from shared.contract.protocol import (
    ArtifactRef,
    Change,
    DeadLetter,
    DevelopmentOutput,
    FinalResult,
    Issue,
    ReviewOutput,
    StepResult,
    StepStarted,
    TaskBody,
    TaskEvent,
    TaskSubmission,
    Timings,
    encode,
)
from shared.contract.protocol import TestReport as _report  # (a Test* name would be collected)
from shared.contract.subjects import Subjects

ISSUE = Issue(
    id="i1", severity="HIGH", rule="bandit:B324", message="Weak md5 hash", tool="bandit", concern="security"
)
WORKSPACE = ArtifactRef(name="ws0", size=10, sha256="ws0")
FINAL = {"completed", "failed", "cancelled", "rejected"}


def _engine(**cfg: object) -> Engine:
    return Engine(Subjects("u"), EngineConfig(**cfg))  # type: ignore[arg-type]


def _start(e: Engine, template: str = "research") -> WorkflowState:
    sub = TaskSubmission(
        message_id="m1", task_id="t1", task_type=template, task=TaskBody(description="Q"), workspace=WORKSPACE
    )
    return e.start("t1", sub, plan_from_template(template, "Q"), 0.01, now=0.0)


def _events(st: WorkflowState) -> list[TaskEvent]:
    return [
        msgspec.json.decode(o.data, type=TaskEvent) for o in st.outbox if o.subject.startswith("u.events.")
    ]


def _dead_letters(st: WorkflowState) -> list[DeadLetter]:
    return [
        msgspec.json.decode(o.data, type=DeadLetter)
        for o in st.outbox
        if o.subject.startswith("u.deadletter.")
    ]


def _final(st: WorkflowState) -> FinalResult:
    (data,) = [o.data for o in st.outbox if o.subject.startswith("u.result.")]
    return msgspec.json.decode(data, type=FinalResult)


def _started(step: str, attempt: int, instance: str, run: str, role: str = "researcher") -> StepStarted:
    return StepStarted(
        task_id="t1",
        step_id=step,
        attempt=attempt,
        role=role,  # type: ignore[arg-type]
        instance_id=instance,
        started_at=1.0,
        run_id=run,
    )


def _result(step: str, attempt: int, role: str = "researcher", **kw: object) -> StepResult:
    return StepResult(
        message_id="r",
        task_id="t1",
        step_id=step,
        attempt=attempt,
        role=role,  # type: ignore[arg-type]
        instance_id=kw.pop("instance_id", "i-1"),  # type: ignore[arg-type]
        status=kw.pop("status", "completed"),  # type: ignore[arg-type]
        timings=Timings(queued_at=0, started_at=1, finished_at=2),
        **kw,  # type: ignore[arg-type]
    )


def _review(score: int, issues: list[Issue]) -> ReviewOutput:
    return ReviewOutput(
        summary=f"score {score}",
        score=score,
        verdict="approved" if score >= 90 and not issues else "changes_requested",
        issues=issues,
    )


def _fix(changes: int, diff: str = "+x\n") -> DevelopmentOutput:
    return DevelopmentOutput(
        summary=f"Fixed {changes} of 1 findings",
        changes=[Change(file=f"f{n}.py", kind="fix", description="d", diff=diff) for n in range(changes)],
    )


def test_seq_goes_up_by_one_per_event_though_metrics_are_published_in_between() -> None:
    e = _engine()
    st = _start(e)
    e.on_step_message(st, _started("research", 1, "a", "run_1"), 1.0)
    e.on_step_message(st, _result("research", 1, instance_id="a", run_id="run_1"), 2.0)
    events = _events(st)
    assert [ev.seq for ev in events] == list(range(1, len(events) + 1))
    assert any(o.subject == "u.metrics.orchestrator" for o in st.outbox), "metrics were published too"
    assert events[-1].kind == "completed" and st.seq == len(events)


def test_a_result_after_the_final_event_goes_to_the_dead_letters_not_the_trace() -> None:
    e = _engine()
    st = _start(e)
    assert e.cancel(st, 1.0, "changed my mind")
    before = _events(st)
    assert before[-1].kind == "cancelled"
    assert e.on_step_message(st, _result("research", 1), 2.0)
    assert _events(st) == before, "nothing is published for the task after its final event"
    (dead,) = _dead_letters(st)
    assert "already cancelled" in dead.reason and "after the final event" in dead.reason
    assert msgspec.json.decode(dead.payload.encode(), type=StepResult).step_id == "research"
    assert not e.on_step_message(st, _result("research", 1), 3.0), "a copy is dead-lettered once"
    late_start = _started("research", 1, "i-1", "")  # the run whose result was just dead-lettered
    assert not e.on_step_message(st, late_start, 3.0), "its run is already in the dead letters"


def test_a_start_after_the_final_event_of_an_unlisted_run_is_a_dead_letter_once() -> None:
    e = _engine()
    st = _start(e)
    assert e.cancel(st, 1.0, "changed my mind")
    before = _events(st)
    assert e.on_step_message(st, _started("research", 2, "b", "run_9"), 3.0)
    assert _events(st) == before, "nothing is published for the task after its final event"
    (dead,) = _dead_letters(st)
    assert "late start" in dead.reason and "run_9" in dead.reason
    assert msgspec.json.decode(dead.payload.encode(), type=StepStarted).run_id == "run_9"
    assert not e.on_step_message(st, _started("research", 2, "b", "run_9"), 4.0), "dead-lettered once"


def test_a_redelivered_copy_of_the_last_applied_result_is_not_a_dead_letter() -> None:
    e = _engine()
    st = _start(e)
    e.on_step_message(st, _result("research", 1, run_id="run_1"), 1.0)
    assert st.status == "completed"
    assert not e.on_step_message(st, _result("research", 1, run_id="run_1"), 2.0)
    assert not _dead_letters(st)


def test_a_rerun_by_the_same_instance_is_traced_and_reported_with_the_applied_run() -> None:
    e = _engine()
    st = _start(e)
    e.on_step_message(st, _started("research", 1, "researcher-1", "run_a"), 1.0)
    # the container restarts with the same instance id; the item is redelivered and runs again
    assert e.on_step_message(st, _started("research", 1, "researcher-1", "run_b"), 2.0)
    assert not e.on_step_message(st, _started("research", 1, "researcher-1", "run_b"), 2.1), "a copy"
    started = [ev for ev in _events(st) if ev.kind == "step_started"]
    assert len(started) == 2 and "re-run" in started[1].text and "re-run" in started[1].detail
    e.on_step_message(st, _result("research", 1, instance_id="researcher-1", run_id="run_b"), 3.0)
    assert st.status == "completed"
    result = _final(st)
    (record,) = result.steps
    assert [(r.run_id, r.outcome) for r in record.runs] == [("run_a", "no_result"), ("run_b", "applied")]
    assert record.applied_run == "run_b" and result.rerun_steps == ["research"]
    assert "Steps that ran more than once" in result.report_markdown


def test_a_second_runs_result_is_a_late_result_while_the_task_runs() -> None:
    e = _engine()
    st = _start(e, "review")
    e.on_step_message(st, _started("research", 1, "r-1", "run_a"), 1.0)
    e.on_step_message(st, _result("research", 1, instance_id="r-1", run_id="run_a"), 2.0)
    assert e.on_step_message(st, _result("research", 1, instance_id="r-1", run_id="run_b"), 3.0)
    late = [ev for ev in _events(st) if ev.kind == "late_result"]
    assert len(late) == 1 and "already has the result of another run" in late[0].text
    runs = {r.run_id: r.outcome for r in st.step("research").runs}  # type: ignore[union-attr]
    assert runs == {"run_a": "applied", "run_b": "not_applied"}
    assert not e.on_step_message(st, _result("research", 1, instance_id="r-1", run_id="run_a"), 4.0), (
        "a redelivered copy of the applied result changes nothing"
    )


def test_a_non_retryable_failure_ends_the_step_at_once_with_its_reason() -> None:
    e = _engine(max_attempts=3)
    st = _start(e)
    e.on_step_message(
        st, _result("research", 1, status="failed", error="needs a model", retryable=False), 1.0
    )
    assert st.status == "failed" and "not retryable" in st.reason and "needs a model" in st.reason
    assert st.step("research").attempt == 1 and not st.recoveries  # type: ignore[union-attr]


def test_recovery_kind_is_data_a_failure_is_retried_and_a_timeout_reassigned() -> None:
    e = _engine(max_attempts=3)
    st = _start(e)
    e.on_step_message(st, _result("research", 1, status="failed", error="flaky tool"), 1.0)
    e.on_tick(st, 5000.0, lambda i: "dead")
    assert [r.kind for r in st.recoveries] == ["failure", "timeout"]
    metrics = [o.data for o in st.outbox if o.subject == "u.metrics.orchestrator"]
    kinds = [msgspec.json.decode(m)["kind"] for m in metrics]
    assert kinds.count("retry") == 1 and kinds.count("reassigned") == 1
    assert e.on_undeliverable(st, "research", 3, 5, 5001.0, lambda i: "unknown")
    assert st.status == "failed" and "Undeliverable" in st.reason


def test_a_fix_round_that_changes_nothing_ends_the_loop_listing_what_needs_a_human() -> None:
    e = _engine(review_max_rounds=3)
    st = _start(e, "review")
    e.on_step_message(st, _result("research", 1), 1.0)
    e.on_step_message(
        st, _result("security_review", 1, role="reviewer", output=_review(60, [ISSUE]), score=60), 2.0
    )
    e.on_step_message(st, _result("security_review.fix1", 1, role="developer", output=_fix(1)), 3.0)
    e.on_step_message(
        st, _result("security_review.review2", 1, role="reviewer", output=_review(70, [ISSUE]), score=70), 4.0
    )
    assert st.step("security_review.fix2").status == "running"  # type: ignore[union-attr]
    e.on_step_message(st, _result("security_review.fix2", 1, role="developer", output=_fix(0)), 5.0)
    assert st.status == "failed"
    assert "fix round 2 changed nothing" in st.reason and "need a human or an LLM developer" in st.reason
    assert st.reason.endswith("approval blocked by bandit:B324"), "the reason names what blocks approval"
    assert st.step("security_review.review3").status == "pending", "no re-review of unchanged code"  # type: ignore[union-attr]
    result = _final(st)
    assert [i.id for i in result.needs_attention] == ["i1"]
    assert "Needs a human or an LLM developer" in result.report_markdown
    assert result.artifacts["workspace"] == WORKSPACE


def test_the_review_cap_also_lists_the_open_findings() -> None:
    e = _engine(review_max_rounds=1)
    st = _start(e, "review")
    e.on_step_message(st, _result("research", 1), 1.0)
    e.on_step_message(
        st, _result("security_review", 1, role="reviewer", output=_review(60, [ISSUE]), score=60), 2.0
    )
    e.on_step_message(st, _result("security_review.fix1", 1, role="developer", output=_fix(1)), 3.0)
    e.on_step_message(
        st, _result("security_review.review2", 1, role="reviewer", output=_review(70, [ISSUE]), score=70), 4.0
    )
    assert "review cap reached" in st.reason and [i.id for i in st.needs_attention] == ["i1"]
    assert "1 blocking finding(s) open: bandit:B324" in st.reason


def test_a_state_that_outgrows_the_message_limit_fails_the_task_and_still_fits() -> None:
    limit = 64 * 1024
    e = _engine(max_message_bytes=limit)
    st = _start(e, "review")
    e.on_step_message(st, _result("research", 1), 1.0)
    e.on_step_message(
        st, _result("security_review", 1, role="reviewer", output=_review(60, [ISSUE]), score=60), 2.0
    )
    big = _fix(40, diff="+" + "y" * 4000 + "\n")  # 160 KB of diffs kept inline (no offloading here)
    new_ws = ArtifactRef(name="ws1", size=10, sha256="ws1")
    e.on_step_message(
        st,
        _result("security_review.fix1", 1, role="developer", output=big, artifacts={"workspace": new_ws}),
        3.0,
    )
    assert len(encode_state(st)) > limit
    data = e.encode(st, 4.0)
    assert len(data) <= e.config.max_state_bytes
    assert st.status == "failed" and "workflow state too large" in st.reason
    result = _final(st)
    assert result.status == "failed" and result.artifacts["workspace"] == new_ws, "partial workspace"
    assert _events(st)[-1].kind == "failed"
    assert e.encode(st, 5.0) == data, "a state that fits is left alone"


def test_the_final_result_is_bounded_even_when_outputs_are_inline() -> None:
    e = _engine(max_message_bytes=1024 * 1024)
    st = _start(e)
    report = _report(passed=1, failed=0, errors=0, coverage=None, command="pytest", output_tail="z" * 500_000)
    out = DevelopmentOutput(
        summary="s", changes=[Change(file="a", kind="k", description="d", diff="+q" * 100)]
    )
    out = msgspec.structs.replace(out, tests=report)
    st.step("research").status = "running"  # type: ignore[union-attr]
    e.on_step_message(st, _result("research", 1, output=out), 1.0)
    assert st.status == "completed"
    assert len(encode(_final(st))) <= e.config.max_result_bytes


def test_shorten_keeps_decision_data_and_drops_the_bulk() -> None:
    out = _fix(300, diff="+" + "d" * 1000 + "\n")
    short = shorten(out, 32 * 1024)
    assert isinstance(short, DevelopmentOutput)
    assert all(c.diff == "" for c in short.changes)
    assert len(short.changes) == 300 and short.summary == out.summary, (
        "a diff-less list that fits stays whole"
    )
    shorter = shorten(out, 8 * 1024)
    assert isinstance(shorter, DevelopmentOutput) and len(encode(shorter)) <= 8 * 1024
    assert 0 < len(shorter.changes) < 300 and "300 change(s)" in shorter.summary
    review = _review(50, [msgspec.structs.replace(ISSUE, message="m" * 5000)] * 3)
    short_review = shorten(review, 1024)
    assert isinstance(short_review, ReviewOutput)
    assert [i.id for i in short_review.issues] == ["i1"] * 3 and short_review.score == 50
    assert len(short_review.issues[0].message) < 1000


def test_inline_files_packed_into_the_workspace_are_not_kept_twice_in_the_state() -> None:
    e = _engine()
    sub = TaskSubmission(
        message_id="m1",
        task_id="t1",
        task_type="research",
        task=TaskBody(description="Q", input_data={"files": {"a.py": "x" * 50_000}, "topic": "jwt"}),
        workspace=WORKSPACE,
    )
    st = e.start("t1", sub, plan_from_template("research", "Q"), 0.01, now=0.0)
    assert st.submission.task.input_data == {"topic": "jwt"}
    assert len(encode_state(st)) < 20_000


def test_a_final_result_with_thousands_of_findings_still_fits_its_bound() -> None:
    e = _engine(max_message_bytes=256 * 1024)
    st = _start(e, "review")
    e.on_step_message(st, _result("research", 1), 1.0)
    issues = [msgspec.structs.replace(ISSUE, id=f"i{n}", message="m" * 200) for n in range(2000)]
    e.on_step_message(
        st, _result("security_review", 1, role="reviewer", output=_review(10, issues), score=10), 2.0
    )
    # the fix round's work item (2000 findings) is over the bound: the task ends there
    assert st.status == "failed" and "cannot be delegated" in st.reason
    result = _final(st)
    assert len(encode(result)) <= e.config.max_result_bytes
    assert [s.step_id for s in result.steps][:2] == ["research", "security_review"]


def test_a_work_item_too_large_for_one_message_fails_the_task_instead_of_the_write() -> None:
    e = _engine(max_message_bytes=64 * 1024)
    sub = TaskSubmission(
        message_id="m1",
        task_id="t1",
        task_type="research",
        task=TaskBody(description="Q", input_data={"notes": "n" * 40_000}),
    )
    st = e.start("t1", sub, plan_from_template("research", "Q"), 0.01, now=0.0)
    assert st.status == "failed" and "cannot be delegated" in st.reason
    assert not [o for o in st.outbox if o.subject.startswith("u.work.")]
    assert _events(st)[-1].kind == "failed"
    assert len(e.encode(st, 1.0)) <= e.config.max_state_bytes


def test_a_message_for_an_unknown_step_is_a_change_so_a_stale_state_gets_re_read() -> None:
    e = _engine()
    st = _start(e)
    # e.g. a fix round another orchestrator added: the revision-checked write of this change fails
    # on a stale state, which is then re-read; on a current state it is recorded once
    assert e.on_step_message(st, _started("research.fix1", 1, "d-1", "run_x", role="developer"), 1.0)
    assert e.on_step_message(st, _result("research.fix1", 1, role="developer", run_id="run_x"), 2.0)
    assert not e.on_step_message(st, _result("research.fix1", 1, role="developer", run_id="run_x"), 3.0)
    late = [ev for ev in _events(st) if ev.kind == "late_result"]
    assert len(late) == 1 and "unknown step research.fix1" in late[0].text


def test_an_undeliverable_attempt_this_state_does_not_know_yet_is_a_change_not_a_drop() -> None:
    e = _engine()
    st = _start(e)
    assert e.on_undeliverable(st, "research", 2, 5, 1.0, lambda i: "unknown"), "attempt 2: state behind"
    assert not e.on_undeliverable(st, "research", 2, 5, 1.5, lambda i: "unknown")
    assert st.step("research").attempt == 1 and not st.recoveries  # type: ignore[union-attr]
    assert e.on_undeliverable(st, "research", 1, 5, 2.0, lambda i: "unknown")
    assert st.recoveries[0].kind == "undeliverable"


def test_a_result_whose_start_was_never_applied_traces_the_start_before_the_result() -> None:
    e = _engine()
    st = _start(e)
    assert e.on_step_message(st, _result("research", 1, instance_id="a", run_id="run_1"), 2.0)
    kinds = [(ev.kind, ev.step_id) for ev in _events(st)]
    at = kinds.index(("step_started", "research"))
    assert kinds[at + 1] == ("step_completed", "research")
    assert [ev.seq for ev in _events(st)] == list(range(1, len(kinds) + 1))
    (run,) = st.step("research").runs  # type: ignore[union-attr]
    assert (run.run_id, run.instance_id, run.started_at, run.outcome) == ("run_1", "a", 1.0, "applied")
    assert not e.on_step_message(st, _started("research", 1, "a", "run_1"), 3.0), "the late notice is a no-op"


def test_a_result_from_an_unlisted_starter_waits_for_its_notice_and_is_refused_only_at_the_last_try() -> None:
    from services.orchestrator.provenance import Guard

    e = _engine()
    st = _start(e)
    assert e.on_step_message(st, _started("research", 1, "a", "run_1"), 1.0)
    seq = st.seq
    # b's notice may still be held by another orchestrator: no change, no refusal yet
    waiting = Guard(e, _result("research", 1, instance_id="b", run_id="run_2"), may_defer=True)
    assert not waiting(st, 2.0)
    assert waiting.deferred is not None and "started by a" in waiting.deferred
    assert waiting.refused is None and st.seq == seq
    # once b's notice is applied, the same result is b's run and is applied
    assert e.on_step_message(st, _started("research", 1, "b", "run_2"), 3.0)
    assert waiting(st, 4.0) and waiting.deferred is None and waiting.refused is None
    # with no deferral left, a result from an instance that never started the attempt is refused
    st2 = _start(e)
    assert e.on_step_message(st2, _started("research", 1, "a", "run_1"), 1.0)
    last_try = Guard(e, _result("research", 1, instance_id="c", run_id="run_3"), may_defer=False)
    assert last_try(st2, 2.0)  # the refusal is traced (a write)
    assert last_try.refused is not None and last_try.deferred is None
    assert _events(st2)[-1].kind == "result_refused"
