"""The builtin researcher brain: answers from a local, ranked corpus, with citations.

No model and no network: the question (task description, requirements and
context) is run against a SQLite FTS5 index of the installed Python packages,
the project's own ``docs/knowledge`` notes and the folders in
``settings.corpus_dirs``. The answer is an extractive summary whose sentences
cite the passages they come from, plus the installed libraries that match.
When nothing matches it says so instead of inventing an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.brains import BrainResult, StepContext
from shared.protocol import Library, Passage, ResearchOutput, WorkItem
from shared.settings import Settings
from shared.tools.research_index import ResearchIndex
from shared.tools.summary import summarize

__all__ = ["BuiltinResearcher", "KNOWLEDGE_DIR", "Retrieval", "no_match", "report"]

logger = logging.getLogger(__name__)

# Notes shipped with the project; always part of the corpus when present.
KNOWLEDGE_DIR = Path(__file__).resolve().parents[2] / "docs" / "knowledge"
# This project's own distribution is not a library to recommend (its docs quote the spec's example).
_SELF = ("cadre",)
_PASSAGES = 8
_LIBRARIES = 5
_SENTENCES = 6
_HEADLINE_LINES = 2


@dataclass(frozen=True)
class Retrieval:
    """What the local index found for one step: the question, the query run, passages, libraries."""

    question: str
    query: str
    passages: list[Passage]
    libraries: list[Library]


class BuiltinResearcher:
    """Research brain over the local corpus (see ``docs/researcher.md``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        dirs = [KNOWLEDGE_DIR] if KNOWLEDGE_DIR.is_dir() else []
        dirs += [Path(d) for d in settings.corpus_dirs]
        self.index = ResearchIndex(
            Path(settings.index_path),
            dirs,
            include_installed=settings.include_installed_packages,
            exclude_packages=_SELF,
        )

    async def retrieve(self, item: WorkItem) -> Retrieval:
        """The passages and installed libraries that match the step's question (index built if stale)."""
        question = item.task.description.strip()
        query = " ".join([question, *item.task.requirements, *_context_text(item.context)])
        rebuilt = await asyncio.to_thread(self.index.ensure)
        if rebuilt:
            logger.info("research index rebuilt for step=%s", item.step_id)
        passages = await asyncio.to_thread(self.index.search, query, _PASSAGES)
        libraries = await asyncio.to_thread(self.index.recommend_libraries, query, item.context, _LIBRARIES)
        return Retrieval(question, query, passages, libraries)

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        found = await self.retrieve(item)
        passages, libraries = found.passages, found.libraries
        if not passages:
            text = no_match(found.question)
            return BrainResult("completed", text, output=ResearchOutput(summary=text, libraries=libraries))
        summary = await asyncio.to_thread(summarize, found.query, passages, _SENTENCES)
        if not summary:
            summary = f"{len(passages)} passages match {found.question!r}, but none has a sentence to quote; see them below."
        text = report(summary, passages, libraries)
        headline = "\n".join(summary.splitlines()[:_HEADLINE_LINES])
        return BrainResult(
            "completed",
            headline,
            output=ResearchOutput(summary=text, passages=passages, libraries=libraries),
        )


def no_match(question: str) -> str:
    """What the researcher says when the corpus has nothing on the question."""
    return (
        f"No passages in the local corpus match {question!r}; add docs with CADRE_CORPUS_DIRS "
        "(folders of Markdown, reST or text files)."
    )


def _context_text(context: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for value in context.values():
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list | tuple):
            out.extend(v for v in value if isinstance(v, str))
    return out


def report(summary: str, passages: list[Passage], libraries: list[Library], notes: Sequence[str] = ()) -> str:
    """The summary (and any notes) with its numbered sources and the recommended libraries, as plain text."""
    lines = [summary, *(f"Note: {n}" for n in notes), "", "Sources:"]
    lines += [f"[{n}] {p.source} — {p.section}" for n, p in enumerate(passages, 1)]
    if libraries:
        lines += ["", "Installed libraries that match:"]
        lines += [f"- {lib.name} {lib.version}: {lib.summary}" for lib in libraries]
    return "\n".join(lines)
