"""Task files: the spec's message structure in JSON or YAML, validated field by field."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from shared.client.taskfile import TaskFileError, load_task_file, parse_task

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "tasks"

SPEC_MESSAGE = {
    "message_id": "msg_123",
    "from_agent": "orchestrator",
    "to_agent": "developer",
    "task_type": "implementation",
    "priority": "high",
    "context": {"project": "auth-api", "language": "python", "framework": "fastapi"},
    "task": {
        "description": "Implement JWT authentication",
        "requirements": ["Access token (15min)", "Refresh token (7 days)", "Rate limiting"],
        "input_data": {"research_results": "...", "api_spec": "..."},
    },
    "expected_output": {"files": ["auth.py", "test_auth.py"], "tests": "all passing", "coverage": ">80%"},
}


def test_the_offline_example_names_the_auth_api_workspace() -> None:
    tf = load_task_file(EXAMPLES / "harden-auth-api.yaml")
    sub = tf.submission
    assert sub.task_type == "review"
    assert sub.task.description == "Harden the user authentication API"
    assert "Secure password hashing" in sub.task.requirements
    assert sub.context["project"] == "auth-api"
    assert sub.expected_output.coverage == ">80%"
    assert tf.workspace_dir == (ROOT / "examples" / "auth-api").resolve()
    assert sub.message_id.startswith("msg_")


def test_the_spec_feature_example_is_a_feature_task_without_workspace() -> None:
    tf = load_task_file(EXAMPLES / "build-auth-api.yaml")
    assert tf.submission.task_type == "feature"
    assert tf.submission.task.description == "Build user authentication API"
    assert tf.workspace_dir is None


def test_the_spec_message_structure_as_json_is_a_valid_task_file(tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    path.write_text(json.dumps(SPEC_MESSAGE))
    sub = load_task_file(path).submission
    assert sub.message_id == "msg_123"
    assert sub.priority == "high"
    assert sub.task.input_data["api_spec"] == "..."
    assert sub.expected_output.files == ["auth.py", "test_auth.py"]


def test_each_file_gets_its_own_message_id_when_it_has_none() -> None:
    a = parse_task("task: {description: one}")
    b = parse_task("task: {description: one}")
    assert a.submission.message_id != b.submission.message_id


def test_a_missing_task_object_is_named() -> None:
    with pytest.raises(TaskFileError) as info:
        parse_task('{"task_type": "review"}', "t.json")
    assert str(info.value) == "invalid task file t.json: Object missing required field `task`"


def test_a_wrong_type_names_the_field_path() -> None:
    with pytest.raises(TaskFileError, match=r"Expected `str`, got `int` - at `\$.task.description`"):
        parse_task("task: {description: 42}", "t.yaml")


def test_an_unknown_priority_is_refused() -> None:
    with pytest.raises(TaskFileError, match=r"Invalid enum value 'urgent' - at `\$.priority`"):
        parse_task("priority: urgent\ntask: {description: x}")


def test_a_workspace_folder_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("task: {description: x}\nworkspace: ../no-such-folder\n")
    with pytest.raises(TaskFileError, match=r"no-such-folder.*does not exist - at `\$.workspace`"):
        load_task_file(path)


def test_broken_json_and_yaml_say_so(tmp_path: Path) -> None:
    bad_json = tmp_path / "t.json"
    bad_json.write_text('{"task": ')
    with pytest.raises(TaskFileError, match="not valid JSON"):
        load_task_file(bad_json)
    bad_yaml = tmp_path / "t.yaml"
    bad_yaml.write_text("task: [\n")
    with pytest.raises(TaskFileError, match="not valid YAML") as info:
        load_task_file(bad_yaml)
    assert "\n" not in str(info.value)


def test_a_list_at_the_top_is_not_a_task() -> None:
    with pytest.raises(TaskFileError, match=r"Expected `object`, got `list` - at `\$`"):
        parse_task("- a\n- b\n")


def test_a_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match=r"invalid task file .*nope.yaml: No such file"):
        load_task_file(tmp_path / "nope.yaml")


def test_command_line_values_override_the_file() -> None:
    tf = parse_task(
        "task_type: review\npriority: low\ncontext: {language: python}\ntask: {description: old}",
        overrides={
            "description": "new",
            "task_type": "research",
            "priority": "high",
            "requirements": ["Rate limiting"],
            "context": {"framework": "stdlib"},
            "task_id": None,
        },
    )
    sub = tf.submission
    assert (sub.task.description, sub.task_type, sub.priority) == ("new", "research", "high")
    assert sub.task.requirements == ["Rate limiting"]
    assert sub.context == {"language": "python", "framework": "stdlib"}
    assert sub.task_id == ""


def test_flags_alone_make_a_task() -> None:
    sub = parse_task("", "<command line>", overrides={"description": "What is JWT?"}).submission
    assert sub.task.description == "What is JWT?"
    assert sub.task_type == "feature"


def test_stdin_is_read_for_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(SPEC_MESSAGE)))
    assert load_task_file("-").submission.message_id == "msg_123"
