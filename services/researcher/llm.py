"""The LLM researcher brain: retrieval from the local index, then a cited summary by the model.

Retrieval is the builtin researcher's (the same SQLite FTS5 index over the
project's ``docs/knowledge`` notes, ``CADRE_CORPUS_DIRS`` and the installed
packages); the model only writes the summary, citing the numbered passages it
was given as ``[n]``. Citations are checked: a marker that names no passage is
removed from the summary and reported, so every citation left points at a
real, returned passage. With nothing retrieved the model is not asked at all.
"""

from __future__ import annotations

import logging
import re

import msgspec

from services.researcher.builtin import BuiltinResearcher, no_match, report
from shared.agent.brains import BrainResult, StepContext, inputs_of
from shared.agent.llm import LLMClient, Meter, failed
from shared.agent.settings import AgentSettings
from shared.contract.errors import LLMError
from shared.contract.protocol import Library, Passage, ResearchInputs, ResearchOutput, WorkItem

__all__ = ["LLMResearcher", "ResearchReply", "check_citations"]

logger = logging.getLogger(__name__)

_PASSAGE_CHARS = 1800
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")

_SYSTEM = """You are a software research assistant. Answer the question using ONLY the numbered
passages you are given. Cite the passages each statement comes from with markers such as [1] or [2, 3],
using the passage numbers exactly as given. Do not cite anything else and do not invent facts.
Write a concise summary (3 to 8 sentences) aimed at a developer who will implement the task."""


class ResearchReply(msgspec.Struct, forbid_unknown_fields=False):
    summary: str


def check_citations(summary: str, count: int) -> tuple[str, list[int], list[int]]:
    """Keep the ``[n]`` markers that name one of ``count`` passages; drop the others.

    Returns the cleaned summary, the passage numbers cited, and the invalid numbers removed.
    """
    cited: list[int] = []
    invalid: list[int] = []

    def fix(match: re.Match[str]) -> str:
        numbers = [int(n) for n in match.group(1).split(",")]
        good = [n for n in numbers if 1 <= n <= count]
        invalid.extend(n for n in numbers if not 1 <= n <= count)
        cited.extend(good)
        return f"[{', '.join(map(str, good))}]" if good else ""

    cleaned = _CITATION.sub(fix, summary)
    cleaned = re.sub(r"[ \t]+([.,;:])", r"\1", re.sub(r"[ \t]{2,}", " ", cleaned)).strip()
    return cleaned, sorted(set(cited)), sorted(set(invalid))


class LLMResearcher:
    """Research brain: local retrieval + model summary with checked citations."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.client = LLMClient(settings)
        # retrieval is the builtin researcher's (same index, corpus folders, exclusions and query)
        self.retriever = BuiltinResearcher(settings)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        inputs_of(item, ResearchInputs)  # a research step takes no control values: a wrong kind fails
        found = await self.retriever.retrieve(item, ctx)
        passages, libraries = found.passages, found.libraries
        if not passages:
            text = no_match(found.question) + " The model was not asked: it would have nothing to cite."
            return BrainResult("completed", text, output=ResearchOutput(summary=text, libraries=libraries))
        meter = Meter()
        try:
            reply = await meter.ask(self.client, _SYSTEM, _prompt(item, passages, libraries), ResearchReply)
        except LLMError as exc:
            return failed(exc, meter.usage, "research summary")
        summary, cited, invalid = check_citations(reply.summary, len(passages))
        notes = []
        if invalid:
            notes.append(
                "Removed citations to passages that do not exist: " + ", ".join(f"[{n}]" for n in invalid)
            )
        if not cited:
            notes.append("The model's summary cites none of the passages: check it against the sources.")
        text = report(summary, passages, libraries, notes)
        logger.info(
            "research done step=%s passages=%d cited=%s invalid=%s",
            item.step_id,
            len(passages),
            cited,
            invalid,
        )
        headline = summary.splitlines()[0] if summary else "(empty summary)"
        return BrainResult(
            "completed",
            headline,
            output=ResearchOutput(summary=text, passages=passages, libraries=libraries),
            usage=meter.usage,
        )


def _prompt(item: WorkItem, passages: list[Passage], libraries: list[Library]) -> str:
    lines = [f"Question: {item.task.description}"]
    if item.task.requirements:
        lines.append("Requirements: " + "; ".join(item.task.requirements))
    if item.context:
        lines.append("Context: " + ", ".join(f"{k}={v}" for k, v in item.context.items()))
    lines += ["", "Passages:"]
    for n, p in enumerate(passages, 1):
        text = p.text if len(p.text) <= _PASSAGE_CHARS else p.text[:_PASSAGE_CHARS] + " ..."
        lines += [f"[{n}] {p.source} — {p.section}", text, ""]
    if libraries:
        lines.append("Installed libraries that match (you may mention them, they are not citable):")
        lines += [f"- {lib.name} {lib.version}: {lib.summary}" for lib in libraries]
    lines.append(f"\nCite only passage numbers 1 to {len(passages)}.")
    return "\n".join(lines)
