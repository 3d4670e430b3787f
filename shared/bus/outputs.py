"""Large step outputs live in the object store; messages and workflow state carry a short copy.

A fix round on a real repository can return hundreds of full diffs; kept
inline they fill the step result, the workflow state (one KV value) and the
final result until a write passes the server's 1 MiB message limit. So an
output whose JSON is larger than ``limit`` bytes is stored whole as a JSON
artifact (``StepResult.output_ref``) and replaced by a shortened copy that
keeps everything the orchestrator decides on (findings, change list, scores,
test counts) and drops or clips the bulky text (diffs, test logs, passages).

``shorten`` is pure; ``offload_output`` does the one object-store write. The
agent runtime calls it before publishing a result, and the orchestrator again
on receipt (a result from an older or foreign agent may still be large).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from shared.contract.protocol import (
    Change,
    DesignOutput,
    DevelopmentOutput,
    Issue,
    ResearchOutput,
    ReviewOutput,
    StepOutput,
    StepResult,
    StepStarted,
    TestReport,
    encode,
)

if TYPE_CHECKING:
    from shared.bus.core import Bus

__all__ = [
    "INLINE_OUTPUT_LIMIT",
    "CLIPPED",
    "clip",
    "shorten",
    "offload_output",
    "offload_step_output",
    "output_decoder",
]

INLINE_OUTPUT_LIMIT = 32 * 1024
"""Default bound (bytes of JSON) on a step output kept inline."""

CLIPPED = "\n… [clipped: the full text is in the step's output_ref artifact]"

_TEXT = 400  # a clipped message / recommendation / passage
_TAIL = 2000  # a clipped test log tail

output_decoder = msgspec.json.Decoder(StepOutput)
"""Reads an ``output_ref`` artifact back into the full output."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying so when it was cut."""
    return text if len(text) <= limit else text[:limit] + CLIPPED


def _issue(i: Issue) -> Issue:
    return msgspec.structs.replace(
        i, message=clip(i.message, _TEXT), recommendation=clip(i.recommendation, _TEXT)
    )


def _tests(t: TestReport | None) -> TestReport | None:
    if t is None:
        return None
    return msgspec.structs.replace(t, output_tail=t.output_tail[-_TAIL:])


def _change(c: Change) -> Change:
    return msgspec.structs.replace(c, description=clip(c.description, _TEXT), diff="")


def shorten(output: StepOutput, limit: int) -> StepOutput:
    """A copy of ``output`` without its bulk: diffs dropped, long texts clipped.

    Decision data stays whole (finding ids and severities, change and dispute
    lists, scores, test counts); lists of changes are cut only when even the
    diff-less list is over ``limit``, and the summary says how many remain.
    """
    if isinstance(output, DevelopmentOutput):
        changes = [_change(c) for c in output.changes]
        refused = [_change(c) for c in output.refused]
        short = msgspec.structs.replace(output, changes=changes, refused=refused, tests=_tests(output.tests))
        size, keep = len(encode(short)), len(changes)
        while size > limit and keep > 1:
            keep = max(1, int(keep * limit / size * 0.9))
            short = msgspec.structs.replace(
                short,
                changes=changes[:keep],
                refused=refused[:keep],
                summary=f"{output.summary} [{len(changes)} change(s), {len(refused)} refused; "
                f"the first {keep} of each are listed here, all in output_ref]",
            )
            size = len(encode(short))
        return short
    if isinstance(output, ReviewOutput):
        return msgspec.structs.replace(
            output, issues=[_issue(i) for i in output.issues], tests=_tests(output.tests)
        )
    if isinstance(output, ResearchOutput):
        passages = [msgspec.structs.replace(p, text=clip(p.text, _TEXT)) for p in output.passages]
        return msgspec.structs.replace(output, summary=clip(output.summary, limit // 2), passages=passages)
    if isinstance(output, DesignOutput):
        return msgspec.structs.replace(output, summary=clip(output.summary, limit // 2))
    return output


async def offload_output(bus: Bus, result: StepResult, limit: int = INLINE_OUTPUT_LIMIT) -> StepResult:
    """``result`` with a large output moved to the object store (unchanged when it is small)."""
    if result.output is None or result.output_ref is not None:
        return result
    data = encode(result.output)
    if len(data) <= limit:
        return result
    ref = await bus.put_artifact(
        data,
        content_type="application/json",
        description=f"full output of {result.step_id} attempt {result.attempt} ({len(data)} bytes)",
    )
    return msgspec.structs.replace(
        result,
        output=shorten(result.output, limit),
        issues=[_issue(i) for i in result.issues],
        output_ref=ref,
    )


async def offload_step_output(
    bus: Bus, msg: StepStarted | StepResult, limit: int = INLINE_OUTPUT_LIMIT
) -> StepStarted | StepResult:
    """``offload_output`` for any step message (a started notice passes through)."""
    return await offload_output(bus, msg, limit) if isinstance(msg, StepResult) else msg
