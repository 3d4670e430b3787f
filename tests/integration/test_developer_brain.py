"""The builtin developer as a real service process on a real nats-server, fixing a real workspace."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from services.developer.builtin import NEEDS_LLM
from shared.bus.core import Bus
from shared.contract.protocol import (
    ArtifactRef,
    DevelopmentOutput,
    FixInputs,
    ReviewInputs,
    StepInputs,
    WorkItem,
)
from shared.contract.workspace import pack_dir, unpack_to
from shared.embedded.launcher import Stack
from shared.tools.analysis import analyze
from shared.tools.testing import PerformanceProfile, run_tests
from tests.helpers import StepFeed, make_item

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "auth-api"


def dev_item(
    step: str, task_type: str, workspace: ArtifactRef | None, inputs: StepInputs | None = None
) -> WorkItem:
    return make_item(
        "developer",
        task_type,
        step,
        task_id="task_dev",
        description=f"{task_type} for the auth API",
        deadline_in=180,
        workspace=workspace,
        inputs=inputs,
    )


async def test_developer_service_fixes_the_example_and_keeps_its_tests_green(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    stack.add("developer")
    source = tmp_path / "source"
    shutil.copytree(EXAMPLE, source)
    findings = analyze(source)
    baseline = run_tests(source)
    assert baseline is not None and baseline.ok
    etag = next(i for i in findings if i.rule == "bandit:B324" and i.file == "auth_api/app.py")
    ref = await bus.put_artifact(pack_dir(source), description="auth-api workspace")
    item = dev_item("fix-1", "fix", ref, FixInputs(findings=findings))
    await bus.publish(bus.subjects.work("developer", "normal"), item)

    result = await StepFeed(bus).result("fix-1", timeout=180)
    assert result.status == "completed", result.error
    out = result.output
    assert isinstance(out, DevelopmentOutput)
    assert out.summary.startswith(f"Fixed {len(findings) - 1} of {len(findings)} findings (1 disputed)")
    # the disputed ETag: a performance argument for the policy to weigh
    assert [(d.issue_id, d.concern) for d in out.disputes] == [(etag.id, "performance")]
    assert {c.addresses for c in out.changes} == {i.id for i in findings} - {etag.id}
    assert all(
        c.diff.startswith(f"--- a/{c.file}\n+++ b/{c.file}\n") for c in out.changes if c.kind != "format"
    )
    assert out.tests is not None and out.tests.ok and out.tests.passed == baseline.passed
    assert out.tests.coverage is not None and out.refused == []
    # the secret moved out of the code is listed to configure (optional: the tests import it unset)
    assert [(s.name, s.file, s.required) for s in out.configure] == [
        ("AUTH_API_SECRET_KEY", "auth_api/config.py", False)
    ]
    assert "configure before running: AUTH_API_SECRET_KEY" in out.summary

    # the stored workspace really holds the fixes, and its tests really pass
    fixed = tmp_path / "fixed"
    unpack_to(await bus.get_artifact(result.artifacts["workspace"]), fixed)
    config = (fixed / "auth_api/config.py").read_text()
    assert "yaml.safe_load(fh)" in config and 'os.environ.get("AUTH_API_SECRET_KEY")' in config
    passwords = (fixed / "auth_api/passwords.py").read_text()
    assert "hashlib.scrypt(" in passwords and "secrets.choice(_ALPHABET)" in passwords
    assert "hashlib.md5(body)" in (fixed / "auth_api/app.py").read_text()
    assert (
        'subprocess.run(["cp", str(self.path), str(dest)], shell=False'
        in (fixed / "auth_api/store.py").read_text()
    )
    rerun = run_tests(fixed)
    assert rerun is not None and rerun.ok and rerun.passed == baseline.passed
    left = {i.id for i in analyze(fixed)}
    assert etag.id in left and not left & {c.addresses for c in out.changes}


async def test_developer_service_answers_prose_test_and_performance_steps_honestly_and_refuses_wrong_inputs(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    stack.add("developer")
    source = tmp_path / "source"
    shutil.copytree(EXAMPLE, source)
    ref = await bus.put_artifact(pack_dir(source), description="auth-api workspace")
    subject = bus.subjects.work("developer", "normal")
    await bus.publish(subject, dev_item("impl", "implementation", None))
    await bus.publish(subject, dev_item("fix-nows", "fix", None))
    await bus.publish(subject, dev_item("test", "test", ref))
    await bus.publish(subject, dev_item("perf", "performance_check", ref))
    # a fix step handed the inputs of another step kind: no findings to read, and a retry would not help
    await bus.publish(subject, dev_item("fix-wrong", "fix", ref, ReviewInputs(threshold=90)))
    feed = StepFeed(bus)

    wrong = await feed.result("fix-wrong")
    assert wrong.status == "failed" and wrong.retryable is False
    assert wrong.error == (
        "step fix-wrong (developer fix) needs FixInputs inputs, but its work item carries ReviewInputs"
    )

    impl = await feed.result("impl")
    assert impl.status == "unsupported" and impl.summary == NEEDS_LLM and impl.error == NEEDS_LLM
    assert "CADRE_BRAIN=llm" in impl.error and "CADRE_LLM_BASE_URL" in impl.error

    no_ws = await feed.result("fix-nows")
    assert no_ws.status == "failed" and "workspace" in (no_ws.error or "")

    test = await feed.result("test")
    assert test.status == "completed" and test.artifacts["workspace"] == ref
    assert isinstance(test.output, DevelopmentOutput) and test.output.tests is not None
    assert test.output.tests.ok and test.output.tests.passed > 0 and test.output.tests.coverage is not None

    perf = await feed.result("perf")
    assert perf.status == "completed" and perf.artifacts["workspace"] == ref
    profile = msgspec.json.decode(
        await bus.get_artifact(perf.artifacts["performance"]), type=PerformanceProfile
    )
    assert profile.tests is not None and profile.tests.passed == test.output.tests.passed
    assert profile.slowest and profile.hot_spots and profile.wall_seconds
    assert f"{profile.wall_seconds:.2f}s wall" in perf.summary
