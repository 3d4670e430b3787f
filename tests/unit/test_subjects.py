"""Subjects carry what the server's permissions can check: the sending role of a step message,
the client a task belongs to."""

from __future__ import annotations

import pytest

from shared.contract.errors import InvalidSubjectToken
from shared.contract.subjects import StepSource, Subjects


def test_a_step_result_subject_names_the_sending_role_and_parses_back() -> None:
    s = Subjects("cadre")
    subject = s.step_result("reviewer", "task_1")
    assert subject == "cadre.step.result.reviewer.task_1"
    assert s.step_source(subject) == StepSource(role="reviewer", task_id="task_1")
    assert s.step_results_of("developer") == "cadre.step.result.developer.*"


@pytest.mark.parametrize(
    "subject", ["cadre.step.result.task_1", "other.step.result.reviewer.t", "cadre.x.y.z.w"]
)
def test_a_subject_that_is_not_a_role_bound_step_result_parses_to_none(subject: str) -> None:
    assert Subjects("cadre").step_source(subject) is None


def test_only_agent_roles_and_valid_task_ids_make_step_result_subjects() -> None:
    s = Subjects("cadre")
    with pytest.raises(InvalidSubjectToken):
        s.step_result("orchestrator", "task_1")
    with pytest.raises(InvalidSubjectToken):
        s.step_result("developer", "a.b")


def test_heartbeat_and_refusal_subjects() -> None:
    s = Subjects("cadre")
    assert s.heartbeat_role(s.heartbeat("developer", "developer-1")) == "developer"
    assert s.heartbeat_role("cadre.metrics.developer") is None
    assert s.refused("client", "msg_1") == "cadre.refused.client.msg_1"
    with pytest.raises(InvalidSubjectToken):
        s.refused("client", "*")


def test_everything_a_client_sends_or_reads_back_names_the_client() -> None:
    s = Subjects("cadre")
    assert s.task_submit("alice") == "cadre.task.submit.alice"
    assert s.task_cancel("alice") == "cadre.task.cancel.alice"
    assert s.events("alice", "task_1", "completed") == "cadre.events.alice.task_1.completed"
    assert s.events_of("alice", "task_1") == "cadre.events.alice.task_1.>"
    assert s.result("alice", "task_1") == "cadre.result.alice.task_1"
    assert s.result_any("task_1") == "cadre.result.*.task_1"
    assert s.download("alice", "ab" * 32, 2) == f"cadre.download.alice.{'ab' * 32}.2"
    assert s.client_of(s.task_submit("alice")) == "alice"
    assert s.client_of(s.task_cancel("bob")) == "bob"


@pytest.mark.parametrize(
    "subject", ["cadre.task.submit", "cadre.task.submit.a.b", "other.task.submit.alice", "cadre.task.x.alice"]
)
def test_a_subject_that_names_no_client_parses_to_none(subject: str) -> None:
    assert Subjects("cadre").client_of(subject) is None


@pytest.mark.parametrize("name", ["*", ">", "a.b", ""])
def test_a_client_name_that_is_not_one_token_makes_no_subject(name: str) -> None:
    with pytest.raises(InvalidSubjectToken):
        Subjects("cadre").task_submit(name)
