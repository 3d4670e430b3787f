"""The LLM reviewer brain: the builtin static review plus a semantic review by the model.

Static findings come from the same tools as the builtin reviewer (bandit,
ruff, radon via ``shared.tools.analysis``). The model then reads the code and
reports what linters cannot see (missing rate limiting, token lifetimes,
refresh-token rotation, authorisation gaps...). Its findings become ``Issue``s
with tool ``llm`` and rule ``llm:<slug>``, and are merged with the static ones
into the same score and verdict formula. Ids are fingerprints of tool, rule,
file and the normalised source line, so a finding keeps its id across rounds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import Counter
from pathlib import Path

import msgspec

from services.reviewer.builtin import open_review
from shared.agent.brains import BrainResult, StepContext, inputs_of
from shared.agent.llm import LLMClient, Meter, failed, workspace_digest
from shared.agent.settings import AgentSettings
from shared.contract.errors import LLMError
from shared.contract.protocol import Issue, ReviewInputs, ReviewOutput, TestReport, WorkItem
from shared.tools.analysis import analyze, score, verdict

__all__ = ["LLMReviewer", "ReviewReply", "ReviewFinding", "semantic_issues"]

logger = logging.getLogger(__name__)

_SEVERITIES = ("HIGH", "MEDIUM", "LOW")
_CONCERNS = ("security", "correctness", "performance", "style")
_ALIASES = {"CRITICAL": "HIGH", "ERROR": "HIGH", "WARNING": "MEDIUM", "MODERATE": "MEDIUM", "INFO": "LOW"}

_SYSTEM = """You are a senior security and code reviewer. Static analysers (bandit, ruff, radon) have
already run; their findings are listed, do not repeat them. Report what they cannot see: design and
logic problems such as missing rate limiting or lockout on authentication, token lifetimes that are
too long or missing expiry checks, refresh tokens that are not rotated or revocable, missing
authorisation checks, unsafe defaults, missing input validation, race conditions, untested paths.
Each finding: severity HIGH, MEDIUM or LOW; concern security, correctness, performance or style;
rule: a short kebab-case name of the problem (e.g. missing-rate-limit); message; the file path as
given and the line number; a concrete recommendation. Report only real problems in this code; an
empty list is a valid answer."""


class ReviewFinding(msgspec.Struct, forbid_unknown_fields=False):
    """One semantic finding as the model reports it (validated and normalised afterwards)."""

    message: str
    severity: str = "MEDIUM"
    concern: str = "correctness"
    rule: str = ""
    file: str | None = None
    line: int | None = None
    recommendation: str = ""


class ReviewReply(msgspec.Struct, forbid_unknown_fields=False):
    issues: list[ReviewFinding]


def _slug(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words[:6]) or "finding"


def semantic_issues(findings: list[ReviewFinding], root: Path) -> tuple[list[Issue], list[str]]:
    """The model's findings as ``Issue``s with stable ids, and why any were dropped."""
    issues: list[Issue] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for f in findings:
        severity = _ALIASES.get(f.severity.strip().upper(), f.severity.strip().upper())
        concern = f.concern.strip().lower()
        if severity not in _SEVERITIES or concern not in _CONCERNS or not f.message.strip():
            dropped.append(f"severity={f.severity!r} concern={f.concern!r} message={f.message[:60]!r}")
            continue
        rel, line, source_line = _locate(root, f.file, f.line)
        rule = f"llm:{_slug(f.rule or f.message)}"
        key = "\0".join(("llm", rule, rel or "", source_line))
        digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:12]
        if digest in seen:
            continue
        seen.add(digest)
        issues.append(
            Issue(
                id=digest,
                severity=severity,  # type: ignore[arg-type]  # checked against _SEVERITIES
                rule=rule,
                message=f.message.strip(),
                tool="llm",
                concern=concern,  # type: ignore[arg-type]  # checked against _CONCERNS
                file=rel,
                line=line,
                recommendation=f.recommendation.strip(),
            )
        )
    return issues, dropped


def _locate(root: Path, file: str | None, line: int | None) -> tuple[str | None, int | None, str]:
    """The finding's file (if it is in the workspace), line (if in range) and normalised source line."""
    if not file:
        return None, None, ""
    base = root.resolve()
    path = (base / file.strip()).resolve()
    if not path.is_file() or not path.is_relative_to(base):
        return None, None, ""
    rel = path.relative_to(base).as_posix()
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if line is None or not 1 <= line <= len(lines):
        return rel, None, ""
    return rel, line, " ".join(lines[line - 1].split())


class LLMReviewer:
    """Static analysis + the model's semantic review, merged into one score and verdict."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.client = LLMClient(settings)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        opened = await open_review(item, ctx)
        if isinstance(opened, BrainResult):
            return opened
        tests, threshold, workspace, waived = opened

        static = [i for i in await asyncio.to_thread(analyze, workspace) if i.id not in waived]
        meter = Meter()
        prompt = await asyncio.to_thread(self._prompt, item, workspace, static, tests)
        try:
            reply = await meter.ask(self.client, _SYSTEM, prompt, ReviewReply)
        except LLMError as exc:
            return failed(exc, meter.usage, "semantic review")
        semantic, dropped = semantic_issues(reply.issues, workspace)
        known = {i.id for i in static}
        issues = static + [i for i in semantic if i.id not in known and i.id not in waived]
        total, breakdown = score(issues, tests)
        decision = verdict(total, issues, threshold)
        counts: Counter[str] = Counter(i.severity for i in issues)
        tally = ", ".join(f"{counts[sev]} {sev}" for sev in _SEVERITIES)
        notes = [f"{len(static)} static, {len(semantic)} from the model"]
        if dropped:
            notes.append(f"{len(dropped)} malformed model findings ignored")
        if tests is not None and tests.environment_error:
            notes.append(f"tests not run ({tests.environment_error}; not scored)")
        elif tests is not None and not tests.ok:
            notes.append(f"tests failing ({tests.failed} failed, {tests.errors} errors)")
        summary = (
            f"Review score: {total}/100 — {tally} ({'; '.join(notes)}); "
            f"{'approved' if decision == 'approved' else 'changes requested'}"
        )
        logger.info(
            "review done step=%s score=%d verdict=%s static=%d semantic=%d dropped=%d",
            item.step_id,
            total,
            decision,
            len(static),
            len(semantic),
            len(dropped),
        )
        output = ReviewOutput(
            summary=summary, score=total, verdict=decision, issues=issues, breakdown=breakdown, tests=tests
        )
        return BrainResult("completed", summary, output=output, issues=issues, score=total, usage=meter.usage)

    def _prompt(self, item: WorkItem, workspace: Path, static: list[Issue], tests: TestReport | None) -> str:
        code, left_out = workspace_digest(workspace, self.settings.llm_context_chars)
        lines = [f"Review ({item.task_type}): {item.task.description}"]
        if item.task.requirements:
            lines.append("Requirements: " + "; ".join(item.task.requirements))
        research = inputs_of(item, ReviewInputs).research_results
        if research is not None:
            lines += ["Research findings to check the code against:", research.summary[:4000]]
        lines.append("Static findings already reported:")
        lines += [f"- {i.rule} {i.file}:{i.line} {i.message}" for i in static[:40]] or ["- none"]
        if tests is not None:
            lines.append(
                f"Developer's tests: {tests.passed} passed, {tests.failed} failed, {tests.errors} errors"
            )
        lines += ["", "Code:", code]
        if left_out:
            lines.append("Files not shown (too large for the prompt): " + ", ".join(left_out))
        return "\n".join(lines)
