"""The orchestrator's own step: "Design architecture" (spec step 2).

Derived, not invented: the components come from the task's requirements and
expected files, the decisions from the task's own ``api_spec`` (if any), the
researcher's recommended libraries and cited findings. With no research input it says so.
"""

from __future__ import annotations

from shared.contract.protocol import DesignOutput, ResearchOutput, TaskSubmission

__all__ = ["design"]


def design(submission: TaskSubmission, research: ResearchOutput | None) -> DesignOutput:
    """Turn requirements and research into components and decisions."""
    components = [f"Requirement: {req}" for req in submission.task.requirements]
    components += [f"File: {name}" for name in submission.expected_output.files]
    decisions: list[str] = []
    if submission.context:
        decisions.append("Stack: " + ", ".join(f"{k}={v}" for k, v in submission.context.items()))
    # user data, not a control value: the task's own API text, if the user gave one (the design,
    # which quotes it, is what the next steps get as their typed ``api_spec``)
    spec = submission.task.input_data.get("api_spec")
    if isinstance(spec, str) and spec.strip():
        decisions.append(f"API (from the task): {spec.strip()}")
    if research is not None:
        for lib in research.libraries:
            version = f" {lib.version}" if lib.version else ""
            decisions.append(f"Use {lib.name}{version}: {lib.reason}")
        for passage in research.passages[:3]:
            decisions.append(f"Follow: {passage.section} ({passage.source})")
    if submission.expected_output.tests:
        decisions.append(f"Tests: {submission.expected_output.tests}")
    if submission.expected_output.coverage:
        decisions.append(f"Coverage: {submission.expected_output.coverage}")
    basis = "requirements and research" if research is not None else "requirements only (no research input)"
    summary = f"Design from {basis}: {len(components)} components, {len(decisions)} decisions"
    return DesignOutput(summary=summary, components=components, decisions=decisions)
