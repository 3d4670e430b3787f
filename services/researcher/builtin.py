"""The builtin researcher brain: answers from a local, ranked corpus, with citations.

No model and no network: the question (task description, requirements and
context) is run against a SQLite FTS5 index of the installed Python packages,
the project's own ``docs/knowledge`` notes and the folders in
``settings.corpus_dirs``. When the step carries a code workspace, its Python
code is read first (statically, ``shared.tools.code_facts``): what the code
does about the question (an MD5 password hash, a plaintext password) leads the
answer, cites the file and line, and is looked up in the corpus on its own.
The answer is an extractive summary whose sentences cite the passages they
come from, plus the installed libraries that the cited passages corroborate.
When nothing matches it says so instead of inventing an answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.agent.brains import BrainResult, StepContext, inputs_of
from shared.agent.settings import AgentSettings
from shared.contract.protocol import Library, Passage, ResearchInputs, ResearchOutput, WorkItem
from shared.tools.code_facts import CodeFact, relevant_facts, scan_workspace
from shared.tools.research_index import ResearchIndex
from shared.tools.summary import summarize

__all__ = [
    "BuiltinResearcher",
    "KNOWLEDGE_DIR",
    "WORKSPACE_SOURCE",
    "Retrieval",
    "answer",
    "no_match",
    "report",
]

logger = logging.getLogger(__name__)

# Notes shipped with the project; always part of the corpus when present.
KNOWLEDGE_DIR = Path(__file__).resolve().parents[2] / "docs" / "knowledge"
# This project's own distribution is not a library to recommend (its docs quote the spec's example).
_SELF = ("cadre",)
_PASSAGES = 8
_LIBRARIES = 5
_SENTENCES = 6
_HEADLINE_LINES = 2
_FACTS = 6  # code facts quoted in an answer
_FACT_SEARCHES = 4  # distinct remedies looked up
_FACT_SENTENCES = 3
WORKSPACE_SOURCE = "workspace/"  # the prefix of a cited workspace file


@dataclass(frozen=True)
class Retrieval:
    """What one step found: the question, the query run, passages, libraries, and the code's facts.

    ``passages`` starts with the workspace code the answer is about (source
    ``workspace/<file>``), then the corpus passages for those facts, then the
    passages for the question itself. ``lookups`` pairs each looked-up remedy
    query with the positions of its passages in ``passages``.
    """

    question: str
    query: str
    passages: list[Passage]
    libraries: list[Library]
    facts: list[CodeFact] = field(default_factory=list)
    files_read: int = 0
    lookups: list[tuple[str, list[int]]] = field(default_factory=list)


class BuiltinResearcher:
    """Research brain over the local corpus (see ``docs/researcher.md``)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        dirs = [KNOWLEDGE_DIR] if KNOWLEDGE_DIR.is_dir() else []
        dirs += [Path(d) for d in settings.corpus_dirs]
        self.index = ResearchIndex(
            Path(settings.index_path),
            dirs,
            include_installed=settings.include_installed_packages,
            exclude_packages=_SELF,
        )

    async def retrieve(self, item: WorkItem, ctx: StepContext | None = None) -> Retrieval:
        """The code facts, passages and installed libraries for the step's question (index built if stale)."""
        question = item.task.description.strip()
        asked = " ".join([question, *item.task.requirements])
        query = " ".join([asked, *_context_text(item.context)])
        facts: list[CodeFact] = []
        files_read = 0
        if ctx is not None and item.workspace is not None:
            found, files_read = await asyncio.to_thread(scan_workspace, await ctx.workspace())
            facts = relevant_facts(found, asked)[:_FACTS]
        rebuilt = await asyncio.to_thread(self.index.ensure)
        if rebuilt:
            logger.info("research index rebuilt for step=%s", item.step_id)
        passages = [_code_passage(f) for f in facts]
        lookups: list[tuple[str, list[int]]] = []
        for search in list(dict.fromkeys(f.search for f in facts))[:_FACT_SEARCHES]:
            hits = await asyncio.to_thread(self.index.search, search, 2)
            lookups.append((search, [_add(passages, p) for p in hits]))
        for p in await asyncio.to_thread(self.index.search, query, _PASSAGES):
            _add(passages, p)
        libraries = await asyncio.to_thread(self.index.recommend_libraries, query, item.context, _LIBRARIES)
        libraries = [lib for lib in libraries if _corroborated(lib, passages)]
        return Retrieval(question, query, passages, libraries, facts, files_read, lookups)

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        inputs_of(item, ResearchInputs)  # a research step takes no control values: a wrong kind fails
        found = await self.retrieve(item, ctx)
        passages, libraries = found.passages, found.libraries
        notes = _workspace_notes(item, found)
        if not passages:
            text = no_match(found.question)
            return BrainResult(
                "completed", text, output=ResearchOutput(summary=report(text, [], libraries, notes))
            )
        summary = await asyncio.to_thread(answer, found)
        summary, passages = _drop_uncited_packages(summary, passages)
        if not summary:
            summary = f"{len(passages)} passages match {found.question!r}, but none has a sentence to quote; see them below."
        text = report(summary, passages, libraries, notes)
        headline = "\n".join(summary.splitlines()[:_HEADLINE_LINES])
        return BrainResult(
            "completed",
            headline,
            output=ResearchOutput(summary=text, passages=passages, libraries=libraries),
        )


def answer(found: Retrieval) -> str:
    """The cited answer: what the code does, what the corpus says about that, then about the question."""
    lines = [f"{f.file}:{f.line}: {f.finding} [{n}]" for n, f in enumerate(found.facts, 1)]
    for search, positions in found.lookups:
        chosen = [found.passages[i] for i in positions]
        lines += _new(lines, summarize(search, chosen[:1], _FACT_SENTENCES, cite=[positions[0] + 1]))
    rest = [n for n, p in enumerate(found.passages) if not p.source.startswith(WORKSPACE_SOURCE)]
    general = summarize(
        found.query, [found.passages[n] for n in rest], _SENTENCES, cite=[n + 1 for n in rest]
    )
    lines += _new(lines, general)
    return "\n".join(lines)


def _drop_uncited_packages(summary: str, passages: list[Passage]) -> tuple[str, list[Passage]]:
    """Leave out package passages the answer does not quote, renumbering the citations.

    A README that only shares a word with the question ("Flask" in an OpenAI
    webhook example) is no source of the answer; notes and corpus files stay
    listed as further reading.
    """
    cited = {int(m) for m in re.findall(r"\[(\d+)\]$", summary, re.M)}
    keep = [n for n, p in enumerate(passages, 1) if n in cited or not p.source.startswith("package:")]
    number = {old: new for new, old in enumerate(keep, 1)}
    renumbered = re.sub(r"\[(\d+)\]$", lambda m: f"[{number[int(m.group(1))]}]", summary, flags=re.M)
    return renumbered, [passages[n - 1] for n in keep]


def _new(have: list[str], text: str) -> list[str]:
    """The lines of ``text`` whose sentence is not already in ``have`` (citations aside)."""
    seen = {line.rsplit(" [", 1)[0] for line in have}
    return [line for line in text.splitlines() if line and line.rsplit(" [", 1)[0] not in seen]


def _code_passage(fact: CodeFact) -> Passage:
    return Passage(
        source=f"{WORKSPACE_SOURCE}{fact.file}", section=f"line {fact.line}", text=fact.code, score=0.0
    )


def _add(passages: list[Passage], passage: Passage) -> int:
    """Add ``passage`` unless it is already there; its position either way."""
    for n, p in enumerate(passages):
        if (p.source, p.section, p.text) == (passage.source, passage.section, passage.text):
            return n
    passages.append(passage)
    return len(passages) - 1


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _corroborated(lib: Library, passages: list[Passage]) -> bool:
    """A library is recommended only when a cited passage is its own doc or names it.

    A package whose summary merely shares a word with the question ("store"
    in truststore, "securely" in bandit) serves no one; a knowledge note that
    names PyJWT for JWT, or nats-py's own README for NATS, is the evidence.
    """
    name = _norm(lib.name)
    pattern = re.compile(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])")
    for p in passages:
        if p.source.startswith("package:") and _norm(p.source.removeprefix("package:").split(" ")[0]) == name:
            return True
        if not p.source.startswith(WORKSPACE_SOURCE) and pattern.search(_norm(p.text)):
            return True
    return False


def _workspace_notes(item: WorkItem, found: Retrieval) -> list[str]:
    if item.workspace is None:
        return []
    if not found.files_read:
        return ["The attached workspace has no Python files to read."]
    if not found.facts:
        return [
            f"Read {found.files_read} Python file(s) of the workspace: none of their code bears on the question."
        ]
    return [
        f"Read {found.files_read} Python file(s) of the workspace (tests left out); "
        f"{len(found.facts)} finding(s) bear on the question."
    ]


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
