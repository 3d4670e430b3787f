"""Typed step inputs: each step kind gets its own struct, built by the orchestrator from the
workflow, never from the user's ``task.input_data`` (which reaches the agent untouched)."""

from __future__ import annotations

import msgspec
import pytest

from services.orchestrator.plan import plan_from_template, validate_plan
from services.orchestrator.workflow import Engine, EngineConfig
from shared.contract.errors import PlanError
from shared.contract.protocol import (
    Change,
    DesignOutput,
    DevelopInputs,
    DevelopmentOutput,
    FixInputs,
    Issue,
    Library,
    Plan,
    PlanStep,
    ResearchInputs,
    ResearchOutput,
    ReviewInputs,
    ReviewOutput,
    StepResult,
    TaskBody,
    TaskSubmission,
    Timings,
    WorkItem,
    encode,
    work_decoder,
)
from shared.contract.protocol import TestReport as Report  # (a Test* name would be collected)
from shared.contract.subjects import Subjects

ISSUE = Issue(
    id="i1", severity="HIGH", rule="bandit:B324", message="Weak md5 hash", tool="bandit", concern="security"
)
# what a user may put in input_data: the names the orchestrator's control values once had
USER_DATA = {
    "tests": {"passed": 0, "failed": 9, "errors": 9, "coverage": 0.0, "command": "rm -rf /"},
    "findings": [{"id": "user-1", "severity": "HIGH", "rule": "x", "message": "m", "tool": "user"}],
    "must_fix": ["user-1"],
    "waived": ["i1"],
    "threshold": 0,
    "research_results": "the user's own notes",
    "api_spec": "POST /login",
}


def _engine() -> Engine:
    return Engine(Subjects("u"), EngineConfig(review_threshold=85))


def _submission(task_type: str) -> TaskSubmission:
    return TaskSubmission(
        message_id="m1",
        task_id="t1",
        task_type=task_type,
        task=TaskBody(description="Q", input_data=USER_DATA),
    )


def _items(state, step: str) -> list[WorkItem]:
    items = [work_decoder.decode(o.data) for o in state.outbox if o.subject.startswith("u.work.")]
    return [i for i in items if i.step_id == step]


def _result(step: str, role: str, **kw: object) -> StepResult:
    return StepResult(
        message_id="r",
        task_id="t1",
        step_id=step,
        attempt=1,
        role=role,  # type: ignore[arg-type]
        instance_id="i-1",
        status="completed",
        timings=Timings(queued_at=0, started_at=1, finished_at=2),
        **kw,  # type: ignore[arg-type]
    )


def test_a_reviewer_gets_the_orchestrators_threshold_waived_ids_and_tests_never_the_users() -> None:
    e = _engine()
    st = e.start("t1", _submission("review"), plan_from_template("review", "Q"), 0.0, now=0.0)
    (research,) = _items(st, "research")
    assert research.inputs == ResearchInputs()
    assert research.task.input_data == USER_DATA, "the user's data goes on untouched, as user data"

    found = ResearchOutput(
        summary="Use scrypt [1]", libraries=[Library(name="a", version=None, summary="", reason="")]
    )
    e.on_step_message(st, _result("research", "researcher", output=found), 1.0)
    (review,) = _items(st, "security_review")
    assert review.inputs == ReviewInputs(threshold=85, waived=[], tests=None, research_results=found)
    assert review.task.input_data == USER_DATA

    out = ReviewOutput(summary="s", score=60, verdict="changes_requested", issues=[ISSUE])
    e.on_step_message(st, _result("security_review", "reviewer", output=out, score=60, issues=[ISSUE]), 2.0)
    (fix,) = _items(st, "security_review.fix1")
    assert fix.inputs == FixInputs(findings=[ISSUE], must_fix=[], waived=[])
    assert fix.task.input_data == USER_DATA

    ran = Report(passed=4, failed=0, errors=0, coverage=91.0, command="pytest")
    change = Change(file="a.py", kind="fix", description="scrypt", diff="+x\n", addresses="i1")
    dev = DevelopmentOutput(summary="fixed", changes=[change], tests=ran)
    e.on_step_message(st, _result("security_review.fix1", "developer", output=dev), 3.0)
    (rereview,) = _items(st, "security_review.review2")
    assert isinstance(rereview.inputs, ReviewInputs) and rereview.inputs.tests == ran
    assert rereview.inputs.research_results is None, "the re-review is not wired to the research"


def test_a_developer_step_gets_the_research_and_the_design_typed() -> None:
    e = _engine()
    st = e.start("t1", _submission("feature"), plan_from_template("feature", "Q"), 0.0, now=0.0)
    found = ResearchOutput(summary="Use PyJWT [1]")
    e.on_step_message(st, _result("analyze", "researcher", output=found), 1.0)
    (implement,) = _items(st, "implement")
    assert isinstance(implement.inputs, DevelopInputs)
    assert implement.inputs.research_results == found
    assert isinstance(implement.inputs.api_spec, DesignOutput)
    assert "API (from the task): POST /login" in implement.inputs.api_spec.decisions
    assert implement.inputs.implementation is None
    assert implement.task.input_data == USER_DATA
    design = st.step("design")
    assert design is not None and design.inline_output == implement.inputs.api_spec


def test_the_inputs_round_trip_as_a_tagged_union_on_the_wire() -> None:
    e = _engine()
    st = e.start("t1", _submission("review"), plan_from_template("review", "Q"), 0.0, now=0.0)
    (item,) = _items(st, "research")
    wire = msgspec.json.decode(encode(item))
    assert wire["inputs"] == {"type": "research"}
    fix = msgspec.structs.replace(item, inputs=FixInputs(findings=[ISSUE], must_fix=["i1"]))
    assert work_decoder.decode(encode(fix)).inputs == fix.inputs
    bad = encode(msgspec.structs.replace(item, inputs=ReviewInputs(threshold=85))).replace(
        b'"threshold":85', b'"threshold":101'
    )
    with pytest.raises(msgspec.ValidationError, match="threshold"):
        work_decoder.decode(bad)


@pytest.mark.parametrize(
    ("inputs", "source_role", "message"),
    [
        ({"notes": "s"}, "researcher", "has no input 'notes'"),
        ({"api_spec": "s"}, "orchestrator", r"reviewer review\) has no input 'api_spec'"),
        ({"research_results": "s"}, "developer", "takes 'research_results' from a researcher step"),
    ],
)
def test_plans_refuse_inputs_the_step_kind_has_no_typed_field_for(
    inputs: dict[str, str], source_role: str, message: str
) -> None:
    steps = [
        PlanStep(id="s", role=source_role, task_type="t", description="d"),  # type: ignore[arg-type]
        PlanStep(
            id="r", role="reviewer", task_type="review", description="d", depends_on=["s"], inputs=inputs
        ),
    ]
    with pytest.raises(PlanError, match=message):
        validate_plan(Plan(template="x", steps=steps))


def test_a_fix_step_in_a_plan_takes_no_upstream_outputs() -> None:
    steps = [
        PlanStep(id="s", role="researcher", task_type="research", description="d"),
        PlanStep(
            id="f",
            role="developer",
            task_type="fix",
            description="d",
            depends_on=["s"],
            inputs={"research_results": "s"},
        ),
    ]
    with pytest.raises(
        PlanError, match=r"developer fix\) has no input 'research_results' \(it takes: none\)"
    ):
        validate_plan(Plan(template="x", steps=steps))
