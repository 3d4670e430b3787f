"""Extractive summaries of research passages: the sentences that best answer a question, cited."""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Sequence

from shared.contract.protocol import Passage
from shared.tools.research_index import fts_query, query_terms
from shared.tools.text_sections import sentence_units

__all__ = ["summarize"]


_LIST_ITEMS = 6  # list items a chosen "...:" sentence brings along


def summarize(
    query: str, passages: list[Passage], max_sentences: int = 5, cite: Sequence[int] | None = None
) -> str:
    """Extractive summary: sentences that share the most question terms, one a line, each cited ``[n]``.

    ``n`` is the 1-based position of the sentence's passage in ``passages``
    (or ``cite[position]`` when the caller numbers its sources itself). A chosen
    sentence that introduces a list (ends with ``:``) is followed by the first
    sentence of each item of that list: "use a slow hash:" is no answer
    without the hashes it lists.
    Overlap is weighted by each term's rarity among the sentences and matched
    with the index's own stemming (an in-memory FTS5 table); a term found only
    in the passage's section title counts half. The passages' own ranking
    decides coverage: the best sentence of each passage in turn, then the best
    of the rest. Output keeps passage order.
    """
    terms = query_terms(query)
    units = [
        (n, pos, s, p.section, item)
        for n, p in enumerate(passages, 1)
        for pos, (s, item) in enumerate(sentence_units(p.text))
    ]
    if not terms or not units or max_sentences <= 0:
        return ""
    weight = [0.0] * len(units)
    with contextlib.closing(sqlite3.connect(":memory:")) as con:
        con.execute("CREATE VIRTUAL TABLE s USING fts5(body, section, tokenize='porter unicode61')")
        con.executemany(
            "INSERT INTO s(rowid, body, section) VALUES (?, ?, ?)",
            ((k, u[2], u[3]) for k, u in enumerate(units)),
        )
        for term in terms:
            quoted = fts_query([term])
            body = {k for (k,) in con.execute("SELECT rowid FROM s WHERE s MATCH ?", (f"body : {quoted}",))}
            title = {
                k for (k,) in con.execute("SELECT rowid FROM s WHERE s MATCH ?", (f"section : {quoted}",))
            }
            idf = math.log(1 + len(units) / len(body | title)) if body | title else 0.0
            for k in body:
                weight[k] += idf
            for k in title - body:
                weight[k] += idf / 2
    ranked = sorted((k for k in range(len(units)) if weight[k] > 0), key=lambda k: (-weight[k], k))
    best_of_passage: dict[int, int] = {}
    for k in ranked:
        best_of_passage.setdefault(units[k][0], k)
    chosen: list[int] = []
    seen: set[str] = set()
    for k in [best_of_passage[n] for n in sorted(best_of_passage)] + ranked:
        if len(chosen) < max_sentences and units[k][2].lower() not in seen:
            seen.add(units[k][2].lower())
            chosen.append(k)
    for k in list(chosen):
        if units[k][2].endswith(":"):
            after: list[int] = []
            for j in range(k + 1, len(units)):
                if units[j][0] != units[k][0] or units[j][2].endswith(":") or len(after) == _LIST_ITEMS:
                    break  # the passage, or the list, ends
                if units[j][4]:
                    after.append(j)
            for j in after:
                if j not in chosen:
                    chosen.append(j)
    chosen.sort(key=lambda k: (units[k][0], units[k][1]))
    number = list(cite) if cite is not None else list(range(1, len(passages) + 1))
    return "\n".join(f"{units[k][2]} [{number[units[k][0] - 1]}]" for k in chosen)
