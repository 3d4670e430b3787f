"""A scripted brain whose outputs are as large as a test asks (``CADRE_BRAIN=tests.chaos.brains:BigOutputBrain``).

``input_data.script.big`` = ``{"kb": N, "field": F, "steps": [ids]}``: the
named steps (all, when ``steps`` is absent) return about N KiB in field F:

- ``passages``: a research output whose passages hold the bulk (shortenable);
- ``issues``: a review with N KiB of findings (decision data: kept whole);
- ``summary``: the step result's own summary line (not part of the output).

Every other step plays ``tests.brains.ScriptedBrain``.
"""

from __future__ import annotations

import msgspec

from shared.agent.brains import BrainResult, StepContext
from shared.contract.protocol import Issue, Passage, ResearchOutput, ReviewOutput, WorkItem
from tests.brains import ScriptedBrain

__all__ = ["BigOutputBrain"]


class BigOutputBrain(ScriptedBrain):
    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        rule = item.task.input_data.get("script", {}).get("big")
        result = await super().run(item, ctx)
        if not rule or ("steps" in rule and item.step_id not in rule["steps"]):
            return result
        size = int(rule["kb"]) * 1024
        field = rule.get("field", "passages")
        if field == "summary":
            return BrainResult(result.status, "S" * size, output=result.output, score=result.score)
        if field == "issues":
            issue = Issue(
                id="x", severity="LOW", rule="big", message="m" * 100, tool="scripted", concern="style"
            )
            n = size // len(msgspec.json.encode(issue)) + 1
            issues = [msgspec.structs.replace(issue, id=f"iss-{i}") for i in range(n)]
            out = ReviewOutput(summary=f"{n} findings", score=95, verdict="approved", issues=issues)
            return BrainResult("completed", out.summary, output=out, issues=issues, score=95)
        chunk = "p" * 4096
        passages = [
            Passage(source=f"big/{i}.md", section="all", text=chunk, score=1.0)
            for i in range(size // 4096 + 1)
        ]
        out = ResearchOutput(summary=f"{len(passages)} passages", passages=passages)
        return BrainResult("completed", out.summary, output=out)
