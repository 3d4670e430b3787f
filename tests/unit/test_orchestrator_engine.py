"""The orchestrator's pure parts: templates, plan validation, conflict policy, engine transitions."""

from __future__ import annotations

import msgspec
import pytest

from services.orchestrator.plan import plan_from_template, templates, validate_plan
from services.orchestrator.policy import ConflictPolicy
from services.orchestrator.state import encode_state, state_decoder
from services.orchestrator.workflow import Engine, EngineConfig
from shared.contract.errors import PlanError
from shared.contract.protocol import (
    Dispute,
    Issue,
    Plan,
    PlanStep,
    ReviewOutput,
    StepResult,
    StepStarted,
    TaskBody,
    TaskEvent,
    TaskSubmission,
    Timings,
    WorkItem,
)
from shared.contract.subjects import Subjects

ISSUE = Issue(
    id="i1", severity="HIGH", rule="bandit:B324", message="Weak md5 hash", tool="bandit", concern="security"
)


def test_feature_template_is_the_specs_seven_steps() -> None:
    plan = plan_from_template("feature", "Build user authentication API")
    assert [(s.id, s.role) for s in plan.steps] == [
        ("analyze", "researcher"),
        ("design", "orchestrator"),
        ("implement", "developer"),
        ("tests", "developer"),
        ("security_review", "reviewer"),
        ("performance", "developer"),
        ("final_review", "reviewer"),
    ]
    assert "Build user authentication API" in plan.steps[0].description
    assert {"feature", "review", "research"} <= set(templates())


def test_unknown_task_type_names_the_known_templates() -> None:
    with pytest.raises(PlanError, match="known workflow templates are feature, research, review"):
        plan_from_template("astrology", "x")


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "no steps"),
        ([PlanStep(id="a", role="wizard", task_type="t", description="d")], "unknown role"),  # type: ignore[arg-type]
        (
            [PlanStep(id="a", role="developer", task_type="t", description="d", depends_on=["zz"])],
            "unknown step",
        ),
        (
            [
                PlanStep(id="a", role="developer", task_type="t", description="d", depends_on=["b"]),
                PlanStep(id="b", role="reviewer", task_type="t", description="d", depends_on=["a"]),
            ],
            "cycle",
        ),
    ],
)
def test_invalid_plans_are_refused_with_a_reason(steps: list[PlanStep], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        validate_plan(Plan(template="x", steps=steps))


def test_policy_security_beats_performance_and_performance_beats_style() -> None:
    policy = ConflictPolicy()
    perf = Dispute(issue_id="i1", argument="sync hashing is faster", concern="performance")
    c = policy.decide("fix1", ISSUE, perf)
    assert c.winner == "reviewer" and c.rule == "security > performance"
    style_issue = msgspec.structs.replace(ISSUE, concern="style", rule="radon:CC")
    c = policy.decide("fix1", style_issue, perf)
    assert c.winner == "developer" and c.rule == "performance > style"
    c = policy.decide("fix1", ISSUE, msgspec.structs.replace(perf, concern="security"))
    assert c.winner == "reviewer" and c.rule.startswith("tie on security")


def test_policy_order_is_configurable_and_must_name_each_concern_once() -> None:
    c = ConflictPolicy(("performance", "security", "correctness", "style")).decide(
        "s", ISSUE, Dispute(issue_id="i1", argument="a", concern="performance")
    )
    assert c.winner == "developer"
    with pytest.raises(ValueError):
        ConflictPolicy(("security", "security", "performance", "style"))


def _engine(**cfg: object) -> Engine:
    return Engine(Subjects("u"), EngineConfig(**cfg))  # type: ignore[arg-type]


def _submission(task_type: str = "research") -> TaskSubmission:
    return TaskSubmission(message_id="m1", task_id="t1", task_type=task_type, task=TaskBody(description="Q"))


def _decoded(state, kind: str) -> list:
    out = []
    for o in state.outbox:
        if o.subject.startswith("u.work."):
            out.append(msgspec.json.decode(o.data, type=WorkItem))
        elif o.subject.startswith("u.events.") and kind == "events":
            out.append(msgspec.json.decode(o.data, type=TaskEvent))
    return out


def _result(step: str, attempt: int, role: str = "researcher", **kw: object) -> StepResult:
    return StepResult(
        message_id="r",
        task_id="t1",
        step_id=step,
        attempt=attempt,
        role=role,  # type: ignore[arg-type]
        instance_id="i-1",
        status=kw.pop("status", "completed"),  # type: ignore[arg-type]
        timings=Timings(queued_at=0, started_at=1, finished_at=2),
        **kw,  # type: ignore[arg-type]
    )


def test_start_dispatches_ready_steps_and_state_round_trips_through_json() -> None:
    e = _engine()
    st = e.start("t1", _submission(), plan_from_template("research", "Q"), 0.01, now=100.0)
    works = [x for x in _decoded(st, "work") if isinstance(x, WorkItem)]
    assert [(w.step_id, w.attempt, w.deadline) for w in works] == [("research", 1, 100.0 + 1800.0)]
    assert state_decoder.decode(encode_state(st)) == st


def test_stale_attempt_results_are_recorded_not_applied() -> None:
    e = _engine(max_attempts=3)
    st = e.start("t1", _submission(), plan_from_template("research", "Q"), 0.01, now=0.0)
    assert e.on_step_message(
        st,
        StepStarted(
            task_id="t1", step_id="research", attempt=1, role="researcher", instance_id="a", started_at=1
        ),
        1,
    )
    assert e.on_tick(st, 5000.0, lambda i: "dead")
    assert st.step("research").attempt == 2 and st.recoveries[0].failed_instance == "a"
    assert st.step("research").avoid == ["a"]
    assert e.on_step_message(st, _result("research", 1), 5001.0)
    assert st.late_results and st.step("research").status == "running"
    assert not e.on_step_message(st, _result("research", 1), 5002.0), (
        "a duplicate late result changes nothing"
    )
    e.on_step_message(st, _result("research", 2), 5003.0)
    assert st.status == "completed"


def test_review_below_threshold_inserts_fix_and_rereview_and_rewires_dependents() -> None:
    e = _engine()
    sub = msgspec.structs.replace(_submission("review"), workspace=None)
    st = e.start("t1", sub, plan_from_template("review", "Q"), 0.0, now=0.0)
    e.on_step_message(st, _result("research", 1), 1.0)
    review = ReviewOutput(summary="s", score=80, verdict="changes_requested", issues=[ISSUE])
    e.on_step_message(
        st, _result("security_review", 1, role="reviewer", output=review, score=80, issues=[ISSUE]), 2.0
    )
    ids = [s.id for s in st.steps]
    assert ids == [
        "research",
        "security_review",
        "security_review.fix1",
        "security_review.review2",
        "final_review",
    ]
    assert st.step("final_review").depends_on == ["security_review.review2"]
    assert st.step("security_review.fix1").status == "running"
    fix1 = st.step("security_review.fix1")
    assert fix1 is not None and fix1.fix is not None and fix1.fix.findings[0].id == "i1"


def test_an_unsupported_step_fails_the_task_at_once_with_the_brains_reason() -> None:
    e = _engine(max_attempts=3)
    st = e.start("t1", _submission(), plan_from_template("research", "Q"), 0.01, now=0.0)
    reason = "Writing new code from a prose description needs an LLM brain"
    assert e.on_step_message(st, _result("research", 1, status="unsupported", error=reason), 1.0)
    assert st.status == "failed" and st.step("research").attempt == 1, "no retry: another attempt cannot help"
    assert reason in st.reason
