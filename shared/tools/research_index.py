"""A ranked full-text index (SQLite FTS5 + bm25) over the researcher's local corpus.

The corpus is what this machine really has: the metadata and long
descriptions of installed Python distributions, and folders of Markdown /
reST / text notes the user points at. The index is built once into a SQLite
file and rebuilt only when the corpus fingerprint changes, so every answer
is made of real, citable passages and needs no network.

Connections are opened per call and a rebuild swaps a finished file into
place atomically, so the index can be used from ``asyncio.to_thread`` and by
several processes sharing one ``index_path``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as importlib_metadata
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.contract.protocol import Library, Passage
from shared.tools.text_sections import RELEASE_NOTES, pack_passages, package_text, split_sections

__all__ = ["ResearchIndex", "DOC_SUFFIXES", "query_terms", "fts_query", "split_sections"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DOC_SUFFIXES = (".md", ".markdown", ".rst", ".txt")
_MAX_FILE_BYTES = 1_000_000
_MAX_TERMS = 32

# English function words, the verbs people wrap a question in and the manner adverbs
# ("securely") they qualify it with; they carry no topic.
_STOP = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers how i if in into is it its itself just me more most my no nor not now of off on once only
    or other our out over own same she should so some such than that the their them then there these they this
    those through to too under until up very was we were what when where which while who whom why will with
    would you your yours research find investigate explain describe please best practice practices standard
    standards using use used need want securely safely properly correctly efficiently reliably
    effectively easily quickly""".split()
)

# Words that describe almost any library: they never decide which one to recommend.
_GENERIC = frozenset(
    """api apis app application applications build code create implement implementation library
    libraries make module modules package packages project python software tool tools user users
    write""".split()
)

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE VIRTUAL TABLE passages USING fts5(
    title, section, body, source UNINDEXED, tokenize='porter unicode61');
CREATE VIRTUAL TABLE packages USING fts5(
    name, summary, keywords, classifiers, description, version UNINDEXED, tokenize='porter unicode61');
"""
# Column weights: a hit in a title or package name says more than one deep in a body.
_PASSAGE_RANK = "SELECT rowid, bm25(passages, 4.0, 2.0, 1.0), source, section, body FROM passages WHERE passages MATCH ? ORDER BY 2 LIMIT ?"
_PACKAGE_RANK = "SELECT rowid, bm25(packages, 10.0, 4.0, 4.0, 1.0, 1.0), name, version, summary FROM packages WHERE packages MATCH ? ORDER BY 2 LIMIT ?"
_METADATA = "{name summary keywords classifiers}"  # what "the package is about" means for recommending it
_SQL = {
    "passages": ("SELECT count(*) FROM passages", "SELECT rowid FROM passages WHERE passages MATCH ?"),
    "packages": ("SELECT count(*) FROM packages", "SELECT rowid FROM packages WHERE packages MATCH ?"),
}


def query_terms(text: str) -> list[str]:
    """The searchable words of free text: lower-cased, no stop-words, no bare numbers, no duplicates."""
    words = (w for w in re.findall(r"[^\W_]+", text.lower()) if len(w) > 1 and not w.isdigit())
    return list(dict.fromkeys(w for w in words if w not in _STOP))[:_MAX_TERMS]


def fts_query(terms: Iterable[str]) -> str:
    """An FTS5 MATCH expression that ORs each term as a quoted string (never raw user syntax)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


@dataclass(frozen=True)
class _Dist:
    name: str
    version: str
    summary: str
    keywords: str
    classifiers: tuple[str, ...]
    description: str
    markdown: bool


@dataclass(frozen=True)
class _Hit:
    columns: tuple[Any, ...]
    score: float
    terms: list[str]
    weight: float  # the deciding terms' summed rarity (idf): how much of the question it answers


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class ResearchIndex:
    """Installed packages and doc folders, searchable by bm25, cached in one SQLite file."""

    def __init__(
        self,
        index_path: Path,
        corpus_dirs: list[Path],
        include_installed: bool = True,
        exclude_packages: Iterable[str] = (),
    ) -> None:
        self.index_path = Path(index_path)
        self.corpus_dirs = [Path(d) for d in corpus_dirs]
        self.include_installed = include_installed
        self.exclude_packages = frozenset(_norm(n) for n in exclude_packages)
        self._lock = threading.Lock()

    # --- building ----------------------------------------------------------------------
    def ensure(self) -> bool:
        """Build the index if it is missing or the corpus changed; True when it was rebuilt."""
        with self._lock:
            dists = self._installed()
            files = self._doc_files()
            fingerprint = self._fingerprint(dists, files)
            if self._meta("fingerprint") == fingerprint:
                return False
            started = time.perf_counter()
            passages, packages = self._build(dists, files, fingerprint)
            logger.info(
                "research index built path=%s passages=%d packages=%d files=%d seconds=%.2f",
                self.index_path,
                passages,
                packages,
                len(files),
                time.perf_counter() - started,
            )
            return True

    def stats(self) -> dict[str, float]:
        """Sizes of the built index (passages, packages, bytes, build seconds)."""
        self._ready()
        with contextlib.closing(self._connect()) as con:
            n_passages = con.execute(_SQL["passages"][0]).fetchone()[0]
            n_packages = con.execute(_SQL["packages"][0]).fetchone()[0]
        return {
            "passages": n_passages,
            "packages": n_packages,
            "bytes": self.index_path.stat().st_size,
            "build_seconds": float(self._meta("build_seconds") or 0.0),
        }

    def _installed(self) -> list[_Dist]:
        if not self.include_installed:
            return []
        seen: dict[str, _Dist] = {}
        for dist in importlib_metadata.distributions():
            meta = dist.metadata

            def field(key: str, meta: importlib_metadata.PackageMetadata = meta) -> str:
                return str((meta.get_all(key) or [""])[0] or "").strip()

            name = field("Name")
            key = _norm(name)
            if not name or key in seen or key in self.exclude_packages:
                continue
            payload = getattr(meta, "get_payload", lambda: "")()  # metadata 2.1+ keeps it in the body
            description = re.sub(r"(?m)^ {7}\|", "", str(payload or field("Description")))
            seen[key] = _Dist(
                name=name,
                version=dist.version,
                summary=field("Summary"),
                keywords=field("Keywords").replace(",", " "),
                classifiers=tuple(meta.get_all("Classifier") or ()),
                description=description[:200_000],
                markdown="markdown" in field("Description-Content-Type"),
            )
        return sorted(seen.values(), key=lambda d: _norm(d.name))

    def _doc_files(self) -> list[Path]:
        found: dict[Path, None] = {}
        for root in self.corpus_dirs:
            root = root.resolve()
            if root.is_file():
                candidates: Iterable[Path] = [root]
            elif root.is_dir():
                candidates = (
                    p
                    for p in root.rglob("*")
                    if not any(part.startswith(".") for part in p.relative_to(root).parts)
                )
            else:
                logger.warning("corpus folder not found path=%s", root)
                continue
            for path in candidates:
                if path.suffix.lower() in DOC_SUFFIXES and path.is_file():
                    if path.stat().st_size <= _MAX_FILE_BYTES:
                        found[path] = None
        return sorted(found)

    def _fingerprint(self, dists: list[_Dist], files: list[Path]) -> str:
        state = {
            "schema": SCHEMA_VERSION,
            "installed": [[d.name, d.version] for d in dists],
            "docs": [[str(p), p.stat().st_mtime_ns, p.stat().st_size] for p in files],
        }
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

    def _build(self, dists: list[_Dist], files: list[Path], fingerprint: str) -> tuple[int, int]:
        started = time.perf_counter()
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_name(f".{self.index_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            con = sqlite3.connect(tmp)
            try:
                con.executescript(_SCHEMA)
                rows = list(self._passage_rows(dists, files))
                with con:
                    con.executemany(
                        "INSERT INTO passages(title, section, body, source) VALUES (?,?,?,?)", rows
                    )
                    con.executemany(
                        "INSERT INTO packages(name, summary, keywords, classifiers, description, version)"
                        " VALUES (?,?,?,?,?,?)",
                        [
                            (
                                d.name,
                                d.summary,
                                d.keywords,
                                "\n".join(d.classifiers),
                                d.description,
                                d.version,
                            )
                            for d in dists
                        ],
                    )
                    meta = {"fingerprint": fingerprint, "built_at": str(time.time())}
                    meta["build_seconds"] = f"{time.perf_counter() - started:.3f}"
                    con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                con.execute("INSERT INTO passages(passages) VALUES ('optimize')")
                con.execute("INSERT INTO packages(packages) VALUES ('optimize')")
                con.commit()
            finally:
                con.close()
            os.replace(tmp, self.index_path)  # atomic: readers see the old or the new index, never half
        finally:
            tmp.unlink(missing_ok=True)
        return len(rows), len(dists)

    def _passage_rows(self, dists: list[_Dist], files: list[Path]) -> Iterator[tuple[str, str, str, str]]:
        for d in dists:
            source = f"package:{d.name} {d.version}"
            topics = [c for c in d.classifiers if c.startswith(("Topic ::", "Framework ::"))]
            card = f"{d.name} {d.version}: {d.summary}".strip()
            if d.keywords.strip():
                card += f"\n\nKeywords: {d.keywords.strip()}"
            if topics:
                card += "\n\nTopics: " + "; ".join(topics)
            yield (d.name, "Package metadata", card, source)
            text = package_text(d.description)
            for path, body in split_sections(text, "md" if d.markdown else "rst"):
                if any(RELEASE_NOTES.search(title) for title in path):
                    continue  # a changelog answers "what changed in x.y", not the user's question
                section = " > ".join(path) or "Description"
                for chunk in pack_passages(body):
                    yield (d.name, section, chunk, source)
        for file in files:
            text = file.read_text(encoding="utf-8", errors="replace")
            style = "rst" if file.suffix.lower() == ".rst" else "md"
            for path, body in split_sections(text, style):
                section = " > ".join(path) or file.stem
                for chunk in pack_passages(body):
                    yield (file.stem.replace("_", " ").replace("-", " "), section, chunk, self._display(file))

    def _display(self, file: Path) -> str:
        """A citation-friendly source name: ``<corpus folder>/<path inside it>``, not a machine path."""
        for root in self.corpus_dirs:
            root = root.resolve()
            if root.is_dir() and file.is_relative_to(root):
                return f"{root.name}/{file.relative_to(root).as_posix()}"
        return file.name

    # --- reading -----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.index_path.resolve().as_uri() + "?mode=ro", uri=True)

    def _meta(self, key: str) -> str | None:
        if not self.index_path.exists():
            return None
        try:
            with contextlib.closing(self._connect()) as con:
                row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError:  # missing tables or a damaged file: treat as absent, rebuild
            return None
        return row[0] if row else None

    def _ready(self) -> None:
        if self._meta("fingerprint") is None:
            self.ensure()

    def _ranked(
        self, con: sqlite3.Connection, table: str, sql: str, terms: list[str], fetch: int, scope: str = ""
    ) -> list[_Hit]:
        """Rows by bm25, each with the query terms that make it an answer.

        bm25 gives no weight to a term found in half the rows or more; when the
        question has rarer terms, a row must match one of those. With ``scope``
        (an FTS5 column set such as ``{name summary}``) the deciding match must be
        in those columns, and how common a term is is judged there too (a word in
        every long description, such as "http" in links, may still be rare in
        summaries), while all columns still count for the ranking.
        """
        count_sql, term_sql = _SQL[table]
        total = con.execute(count_sql).fetchone()[0]

        def rows(expr: str) -> set[int]:
            return {r for (r,) in con.execute(term_sql, (expr,))}

        matches = {t: rows(f"{scope} : {fts_query([t])}" if scope else fts_query([t])) for t in terms}
        wanted = {t for t, found in matches.items() if found and 2 * len(found) < total} or set(terms)
        idf = {t: math.log(1 + total / len(matches[t])) if matches[t] else 0.0 for t in terms}
        # a passage answers a question of several topic words only if it shares two of them:
        # one qualifier ("Flask" in "this Flask app") alone pulls in any README with a Flask example
        topical = wanted - _GENERIC
        need = 2 if table == "passages" and len(topical) >= 2 else 1
        hits = []
        for rowid, rank, *columns in con.execute(sql, (fts_query(terms), fetch)):
            decisive = [t for t in terms if t in wanted and rowid in matches[t]]
            if decisive and len([t for t in decisive if t in topical]) >= min(need, len(decisive)):
                weight = round(sum(idf[t] for t in decisive), 4)
                hits.append(_Hit(tuple(columns), round(-rank, 4), decisive, weight))
        return hits

    def search(self, query: str, limit: int = 8) -> list[Passage]:
        """The passages that best answer ``query``, best first (score = -bm25, higher is better)."""
        terms = query_terms(query)
        if not terms or limit <= 0:
            return []
        self._ready()
        with contextlib.closing(self._connect()) as con:
            hits = self._ranked(con, "passages", _PASSAGE_RANK, terms, limit * 4)
        return [
            Passage(source=source, section=section, text=body, score=hit.score)
            for hit in hits[:limit]
            for source, section, body in [hit.columns]
        ]

    def recommend_libraries(self, query: str, context: dict[str, Any], limit: int = 5) -> list[Library]:
        """Installed distributions whose metadata matches the question (and its context words).

        Ranked by how much of the question a package's own metadata answers
        (the summed rarity of the terms it matches there), then by bm25. Words
        that describe any library ("api", "build", "tool"...) decide nothing, and
        a package answering less than a third of what the best one answers is
        left out: a short list of strong matches rather than a long tail of
        packages that share one generic word with the question.
        """
        words = query_terms(" ".join([query, *_context_words(context)]))
        terms = [t for t in words if t not in _GENERIC]
        if not terms or limit <= 0:
            return []
        self._ready()
        with contextlib.closing(self._connect()) as con:
            found = self._ranked(con, "packages", _PACKAGE_RANK, terms, 500, scope=_METADATA)
        found.sort(key=lambda h: (-h.weight, -h.score))
        hits = [h for h in found if h.weight * 3 >= found[0].weight] if found else []
        return [
            Library(
                name=name,
                version=version,
                summary=summary,
                reason=f"installed {version}; its package metadata mentions " + ", ".join(hit.terms),
            )
            for hit in hits[:limit]
            for name, version, summary in [hit.columns]
        ]


def _context_words(context: dict[str, Any]) -> list[str]:
    words: list[str] = []
    for value in context.values():
        if isinstance(value, str):
            words.append(value)
        elif isinstance(value, list | tuple):
            words.extend(str(v) for v in value if isinstance(v, str | int | float))
    return words
