"""The review loop and dispute resolution: how a review verdict reshapes the plan.

A reviewer result on a ``review_loop`` step is judged here. Approved (score at
or above the threshold and no open HIGH finding) ends the loop. Otherwise a
``<origin>.fixN`` developer step (with the findings) and a
``<origin>.reviewN+1`` re-review are inserted after the review, and later
steps are re-wired to wait for the re-review; after ``review_max_rounds`` fix
rounds the task fails. A fix round that changed nothing (no change, no
dispute) ends the loop at once: another review would find the same, so the
task fails with the open findings listed as needing a human or an LLM
developer (``needs_attention``). A fix result may dispute findings: the conflict policy
(``policy.py``) decides each one; a developer win waives the finding, a
reviewer win sends it back as a ``<fix>.must`` step that may not dispute again.
"""

from __future__ import annotations

import logging

from services.orchestrator.config import Ending, EngineConfig
from services.orchestrator.emit import Emitter
from services.orchestrator.policy import ConflictPolicy
from services.orchestrator.state import StepState, WorkflowState
from shared.contract.protocol import DevelopmentOutput, Dispute, FixInputs, Issue, ReviewOutput
from shared.tools.scoring import blocks

__all__ = ["review_verdict", "resolve_disputes", "insert_after", "no_progress", "name_blocking"]

logger = logging.getLogger(__name__)


def name_blocking(issues: list[Issue], limit: int = 5) -> str:
    """The findings that block approval, named for a person: ``bandit:B608 at notes/views.py:40, ...``."""
    named = [f"{i.rule} at {i.file}:{i.line}" if i.file else i.rule for i in issues[:limit]]
    more = f" and {len(issues) - limit} more" if len(issues) > limit else ""
    return ", ".join(named) + more


def review_verdict(
    config: EngineConfig, emit: Emitter, st: WorkflowState, step: StepState, out: ReviewOutput, now: float
) -> Ending | None:
    """Approve, or insert the next fix round and re-review, or end the task at the round cap."""
    st.score_history.append(out.score)
    blocking = [i for i in out.issues if (blocks(i) or i.id in out.blocking) and i.id not in st.waived]
    approved = out.score >= config.review_threshold and not blocking
    origin = step.origin or step.id
    emit.metric(
        st,
        "review_verdict",
        now,
        step_id=step.id,
        approved=approved,
        first_round=step.round == 0,
        value=float(out.score),
    )
    history = " → ".join(str(s) for s in st.score_history)
    if approved:
        st.approved = True
        emit.event(
            st,
            "approved",
            f"[Orchestrator] {origin} approved (score {out.score}/100; history {history})",
            now,
            step_id=step.id,
            score=out.score,
        )
        return None
    st.approved = False
    if step.round >= config.review_max_rounds:
        st.needs_attention = [i for i in out.issues if i.id not in st.waived]
        return Ending(
            "failed",
            f"review cap reached: {origin} not approved after {step.round} fix rounds "
            f"(scores {history}; threshold {config.review_threshold}; "
            + (
                f"{len(blocking)} blocking finding(s) open: {name_blocking(blocking)})"
                if blocking
                else "no blocking finding open)"
            ),
        )
    findings = [i for i in out.issues if i.id not in st.waived]
    n = step.round + 1
    fix = StepState(
        id=f"{origin}.fix{n}",
        role="developer",
        task_type="fix",
        description=f"Fix security issues: address the reviewer's {len(findings)} findings from {step.id}",
        depends_on=[step.id],
        fix=FixInputs(
            findings=findings,
            must_fix=[i for i in st.must_fix if any(f.id == i for f in findings)],
            waived=list(st.waived),
        ),
        origin=origin,
        round=n,
    )
    plan_step = st.step(origin)
    rereview = StepState(
        id=f"{origin}.review{n + 1}",
        role="reviewer",
        task_type=plan_step.task_type if plan_step else step.task_type,
        description=f"Re-review after fix round {n}: {plan_step.description if plan_step else step.description}",
        depends_on=[fix.id],
        review_loop=True,
        origin=origin,
        round=n,
    )
    insert_after(st, step, [fix, rereview], rewire_to=rereview.id)
    why = [f"score {out.score} < {config.review_threshold}"] if out.score < config.review_threshold else []
    why += [f"{len(blocking)} blocking finding(s) open: {name_blocking(blocking)}"] if blocking else []
    emit.event(
        st,
        "fix_requested",
        f"[Orchestrator] Review of {origin} not approved ({'; '.join(why)}): "
        f"fix round {n} of {config.review_max_rounds}",
        now,
        step_id=fix.id,
        score=out.score,
    )
    return None


def insert_after(st: WorkflowState, step: StepState, new: list[StepState], rewire_to: str) -> None:
    """Insert steps after ``step``; whatever depended on ``step`` now waits for ``rewire_to``."""
    new_ids = {s.id for s in new}
    for other in st.steps:
        if other.id not in new_ids and step.id in other.depends_on:
            other.depends_on = [rewire_to if d == step.id else d for d in other.depends_on]
    idx = st.steps.index(step) + 1
    st.steps[idx:idx] = new


def resolve_disputes(
    policy: ConflictPolicy,
    emit: Emitter,
    st: WorkflowState,
    step: StepState,
    disputes: list[Dispute],
    now: float,
) -> None:
    """Decide each disputed finding of a fix step by policy; re-send the lost ones as must-fix."""
    given = step.fix if step.fix is not None else FixInputs()
    by_id = {i.id: i for i in given.findings}
    already_forced = set(given.must_fix)
    must: list[Issue] = []
    for dispute in disputes:
        issue = by_id.get(dispute.issue_id)
        if issue is None:
            continue
        if issue.id in already_forced:
            emit.event(
                st,
                "dispute_overruled",
                f"[Orchestrator] {issue.rule} was already decided: must fix",
                now,
                step_id=step.id,
            )
            continue
        conflict = policy.decide(step.id, issue, dispute)
        st.conflicts.append(conflict)
        text = "\n".join(
            [
                f'[Developer]: "{conflict.developer_position}" ({conflict.developer_concern})',
                f'[Reviewer]: "{conflict.reviewer_position}" ({conflict.reviewer_concern})',
                f"[Orchestrator] Resolution by policy {policy.text}: rule {conflict.rule}",
                f"Final Decision: {conflict.decision}",
            ]
        )
        emit.event(st, "conflict_resolved", text, now, step_id=step.id, conflict=conflict)
        emit.metric(st, "conflict_resolved", now, step_id=step.id)
        if conflict.winner == "developer":
            st.waived.append(issue.id)
        else:
            st.must_fix.append(issue.id)
            must.append(issue)
    if must:
        forced = StepState(
            id=f"{step.id}.must",
            role="developer",
            task_type="fix",
            description=f"Fix security issues decided by policy (must fix {len(must)}): "
            + "; ".join(f"{i.rule} at {i.file}:{i.line}" for i in must),
            depends_on=[step.id],
            fix=FixInputs(findings=must, must_fix=[i.id for i in must], waived=list(st.waived)),
            origin=step.origin,
            round=step.round,
        )
        insert_after(st, step, [forced], rewire_to=forced.id)


def no_progress(st: WorkflowState, step: StepState, out: DevelopmentOutput) -> Ending:
    """A fix round changed nothing: end the loop, listing what is left for a human or an LLM developer."""
    findings = step.fix.findings if step.fix is not None else []
    st.needs_attention = [i for i in findings if i.id not in st.waived]
    origin = step.origin or step.id
    history = " → ".join(str(s) for s in st.score_history)
    blocking = [i for i in st.needs_attention if blocks(i)]
    named = f"; approval blocked by {name_blocking(blocking)}" if blocking else ""
    return Ending(
        "failed",
        f"review loop of {origin} stopped: fix round {step.round} changed nothing ({out.summary}); "
        f"{len(st.needs_attention)} finding(s) need a human or an LLM developer (scores {history}){named}",
    )
