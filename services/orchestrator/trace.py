"""The human trace lines, in the spec's "Agent Interaction Trace" style."""

from __future__ import annotations

from typing import Any

from shared.contract import textsafe
from shared.contract.protocol import (
    DesignOutput,
    DevelopmentOutput,
    Plan,
    Recovery,
    ResearchOutput,
    ReviewOutput,
    StepResult,
)

__all__ = ["actor", "received", "planned", "delegated", "returned", "recovery", "context_line"]


def actor(role: str) -> str:
    return f"[{role.capitalize()}]"


def context_line(context: dict[str, Any]) -> str:
    return ", ".join(str(v) for v in context.values()) or "-"


def received(description: str) -> str:
    return f"[Orchestrator] Received task: {description}"


def planned(plan: Plan, seconds: float) -> str:
    lines = [f"[Orchestrator] Task decomposition ({plan.template}, {plan.source}, {seconds:.3f}s):"]
    for n, step in enumerate(plan.steps, 1):
        who = "Orchestrator (self)" if step.role == "orchestrator" else f"Need {step.role.capitalize()}"
        lines.append(f"{n}. {step.description} → {who}")
    return "\n".join(lines)


def delegated(role: str, description: str, context: dict[str, Any], inputs: list[str], attempt: int) -> str:
    lines = [
        f"[Orchestrator] → {actor(role)}:",
        f"  Task: {description}",
        f"  Context: {context_line(context)}",
    ]
    if inputs:
        lines.append(f"  Input: {', '.join(inputs)}")
    if attempt > 1:
        lines.append(f"  Attempt: {attempt}")
    return "\n".join(lines)


def _bullets(result: StepResult) -> list[str]:
    out = result.output
    if isinstance(out, ReviewOutput):
        lines = [f"Security score: {out.score}/100"]
        if out.issues:
            lines.append("Issues found:")
            lines += [
                f"  * {i.message} ({i.severity}) [{i.rule} {textsafe.name(str(i.file))}:{i.line}]"
                for i in out.issues[:8]
            ]
            if len(out.issues) > 8:
                lines.append(f"  * … {len(out.issues) - 8} more")
        else:
            lines.append("All issues resolved")
        lines.append("Approved for merge" if out.verdict == "approved" else "Changes requested")
        return lines
    if isinstance(out, ResearchOutput):
        lines = [out.summary.splitlines()[0] if out.summary else "No summary"]
        lines += [f"Source: {p.source} — {p.section}" for p in out.passages[:3]]
        if out.libraries:
            libs = ", ".join(f"{lib.name} {lib.version or ''}".strip() for lib in out.libraries)
            lines.append(f"Recommended libraries: {libs}")
        return lines
    if isinstance(out, DevelopmentOutput):
        lines = [out.summary]
        lines += [f"{textsafe.name(c.file)}: {c.description}" for c in out.changes[:8]]
        lines += [f"Refused: {textsafe.name(c.file)}: {c.description}" for c in out.refused[:4]]
        lines += [f"Disputes: {d.argument} ({d.concern})" for d in out.disputes]
        if out.tests is not None:
            cov = f", coverage {out.tests.coverage:.0f}%" if out.tests.coverage is not None else ""
            lines.append(f"Tests: {out.tests.passed} passed, {out.tests.failed} failed{cov}")
        return lines
    if isinstance(out, DesignOutput):
        return [out.summary, *out.components]
    return [result.summary or result.status]


def returned(result: StepResult) -> str:
    lines = [f"{actor(result.role)} → [Orchestrator]:", "  Output:"]
    if result.status != "completed":
        lines.append(f"  - Status: {result.status}")
        lines.append(f"  - {result.error or result.summary}")
    else:
        lines += [f"  {b}" if b.startswith("  ") else f"  - {b}" for b in _bullets(result)]
    return "\n".join(lines)


def recovery(role: str, rec: Recovery, reason_text: str, new_deadline_text: str) -> str:
    who = rec.failed_instance or "no instance (never started)"
    return "\n".join(
        [
            f"[Orchestrator] → {actor(role)}: Task failed",
            f"  Reason: {reason_text}",
            "[Orchestrator] Recovery Actions:",
            f"1. Check agent health: {who} is {rec.instance_health}",
            f"2. Re-assign task to a different agent instance (attempt {rec.new_attempt})",
            f"3. Notify of delay: +{rec.delay_s:.1f}s",
            f"4. Adjust timeline: step deadline now {new_deadline_text}",
            "5. Log for monitoring",
        ]
    )
