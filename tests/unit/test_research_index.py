"""The research index: a real SQLite FTS5 file over temp doc folders and the installed packages."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.contract.protocol import Passage
from shared.tools.code_facts import relevant_facts, scan_workspace
from shared.tools.research_index import ResearchIndex, fts_query, query_terms, split_sections
from shared.tools.summary import summarize

AUTH_MD = """\
# Auth guide

Intro about logging users in to a web service.

## Refresh tokens

Rotate refresh tokens on every use. Reuse of an old refresh token revokes the family.

## Access tokens

Access tokens expire after fifteen minutes.

```python
# Not a heading: a comment inside fenced code
token = make_token()
```
"""

HASHING_RST = """\
Hashing
=======

Use argon2id for password storage. Salts are generated per password.

Comparison
----------

Compare digests with hmac.compare_digest to avoid timing attacks.
"""

NOTES_TXT = (
    "Deployment notes\n================\n\nThe staging cluster runs three replicas behind a balancer.\n"
)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "auth.md").write_text(AUTH_MD)
    (root / "sub" / "hashing.rst").write_text(HASHING_RST)
    (root / "notes.txt").write_text(NOTES_TXT)
    (root / "image.png").write_bytes(b"\x89PNG not a doc")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.md").write_text("# Hidden\n\nrefresh tokens hidden copy\n")
    return root


@pytest.fixture
def index(tmp_path: Path, corpus: Path) -> ResearchIndex:
    return ResearchIndex(tmp_path / "idx" / "index.sqlite", [corpus], include_installed=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> ResearchIndex:
    ix = ResearchIndex(tmp_path_factory.mktemp("inst") / "index.sqlite", [], include_installed=True)
    ix.ensure()
    return ix


def test_building_indexes_every_doc_file_by_heading_and_skips_hidden_and_binary_files(
    index: ResearchIndex, corpus: Path
) -> None:
    assert index.ensure() is True
    assert index.index_path.exists()
    with sqlite3.connect(index.index_path) as con:
        rows = con.execute("SELECT source, section FROM passages").fetchall()
    sources = {s for s, _ in rows}
    assert sources == {
        "corpus/auth.md",
        "corpus/sub/hashing.rst",
        "corpus/notes.txt",
    }
    sections = {sec for _, sec in rows}
    assert {"Auth guide", "Auth guide > Refresh tokens", "Auth guide > Access tokens"} <= sections
    assert {"Hashing", "Hashing > Comparison", "Deployment notes"} <= sections
    assert index.stats()["passages"] == len(rows)


def test_search_ranks_the_section_about_the_question_first_with_source_and_section(
    index: ResearchIndex, corpus: Path
) -> None:
    index.ensure()
    hits = index.search("How should refresh token reuse be handled?")
    assert hits, "the refresh-token section matches"
    top = hits[0]
    assert top.source == "corpus/auth.md"
    assert top.section == "Auth guide > Refresh tokens"
    assert "Reuse of an old refresh token" in top.text
    assert all(h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    hashing = index.search("timing attacks digest comparison")
    assert hashing[0].section == "Hashing > Comparison"
    assert hashing[0].source.endswith("hashing.rst")


def test_an_unchanged_corpus_is_not_rebuilt_even_by_a_new_index_object(
    index: ResearchIndex, tmp_path: Path, corpus: Path
) -> None:
    assert index.ensure() is True
    mtime = index.index_path.stat().st_mtime_ns
    assert index.ensure() is False
    again = ResearchIndex(index.index_path, [corpus], include_installed=False)
    assert again.ensure() is False
    assert index.index_path.stat().st_mtime_ns == mtime


def test_a_changed_added_or_removed_doc_triggers_a_rebuild(index: ResearchIndex, corpus: Path) -> None:
    index.ensure()
    assert index.search("balancer replicas")
    notes = corpus / "notes.txt"
    notes.write_text("Deployment notes\n================\n\nProduction uses blue green switching.\n")
    os.utime(notes, ns=(time.time_ns(), notes.stat().st_mtime_ns + 1_000_000_000))
    assert index.ensure() is True
    assert index.search("balancer replicas") == []
    assert index.search("blue green switching")[0].source == f"{notes.parent.name}/{notes.name}"

    (corpus / "extra.md").write_text("# Extra\n\nQuokka habitats are small islands.\n")
    assert index.ensure() is True
    assert index.search("quokka")[0].section == "Extra"

    (corpus / "extra.md").unlink()
    assert index.ensure() is True
    assert index.search("quokka") == []


def test_a_damaged_index_file_is_rebuilt(index: ResearchIndex) -> None:
    index.index_path.parent.mkdir(parents=True, exist_ok=True)
    index.index_path.write_bytes(b"this is not a sqlite database" * 100)
    assert index.ensure() is True
    assert index.search("argon2id")[0].section == "Hashing"


@pytest.mark.parametrize(
    "question",
    [
        'refresh "tokens',
        "refresh AND NOT tokens OR (",
        "NEAR(refresh tokens, 2) title:refresh",
        "refresh* ^tokens -- '; DROP TABLE passages; --",
        '"refresh" + {body}: tokens',
    ],
)
def test_questions_with_quotes_and_fts_operators_are_searched_as_plain_words(
    index: ResearchIndex, question: str
) -> None:
    index.ensure()
    hits = index.search(question)
    assert hits and hits[0].section == "Auth guide > Refresh tokens"


def test_questions_with_no_searchable_words_return_nothing(index: ResearchIndex) -> None:
    index.ensure()
    assert index.search('AND OR NOT "" * ( ) ^ 2024') == []
    assert index.search("zeppelin aerodynamics") == []


def test_query_terms_drop_stop_words_and_numbers_and_fts_query_quotes_each_term() -> None:
    assert query_terms('Research best practices for JWT "auth" AND tokens in 2024!') == [
        "jwt",
        "auth",
        "tokens",
    ]
    assert fts_query(["jwt", 'we"ird']) == '"jwt" OR "we""ird"'


def test_installed_packages_are_indexed_with_their_real_versions(installed: ResearchIndex) -> None:
    nats_version = md.version("nats-py")
    hits = installed.search("nats jetstream client asyncio")
    assert any(h.source == f"package:nats-py {nats_version}" for h in hits), [h.source for h in hits]
    settings_hits = installed.search("settings management with pydantic")
    assert settings_hits[0].source == f"package:pydantic-settings {md.version('pydantic-settings')}"


def test_recommend_libraries_names_installed_matches_with_version_and_matched_terms(
    installed: ResearchIndex,
) -> None:
    libs = installed.recommend_libraries("fast msgpack serialization", {"language": "Python"})
    by_name = {lib.name: lib for lib in libs}
    assert "msgspec" in by_name, list(by_name)
    assert libs[0].name == "msgspec"
    assert by_name["msgspec"].version == md.version("msgspec")
    assert "msgpack" in by_name["msgspec"].reason and md.version("msgspec") in by_name["msgspec"].reason
    for lib in libs:
        assert md.version(lib.name) == lib.version
    # "python" is in most packages' metadata: bm25 gives it no weight, so it decides nothing
    assert all("python" not in lib.reason.split("mentions")[1] for lib in libs)
    assert installed.recommend_libraries("zeppelin aerodynamics", {}) == []


def test_recommendations_rank_by_how_much_of_the_question_a_package_answers(installed: ResearchIndex) -> None:
    # "http" is in nearly every long description (links) but in few summaries: it still decides
    libs = installed.recommend_libraries("HTTP client", {})
    assert libs and {"http", "client"} <= set(libs[0].reason.split("mentions ")[1].split(", ")), libs[0]
    # words that describe any library decide nothing
    assert installed.recommend_libraries("build a python api tool", {}) == []
    # a strong match leaves out packages sharing one generic word with the question (openai: "API")
    names = [lib.name for lib in installed.recommend_libraries("Build user authentication API with JWT", {})]
    assert names[0] == "PyJWT" and "openai" not in names, names


def test_excluded_packages_are_left_out_of_the_index(tmp_path: Path) -> None:
    ix = ResearchIndex(tmp_path / "ix.sqlite", [], exclude_packages=["msgspec"])
    ix.ensure()
    assert all(lib.name != "msgspec" for lib in ix.recommend_libraries("msgpack serialization", {}))
    assert not any(h.source.startswith("package:msgspec ") for h in ix.search("msgspec msgpack"))


def test_the_index_of_all_installed_packages_is_built_once_then_reused(tmp_path: Path) -> None:
    # how long a build takes is a `make bench` figure, not an assertion here
    ix = ResearchIndex(tmp_path / "ix.sqlite", [], include_installed=True)
    assert ix.ensure() is True
    stats = ix.stats()
    assert stats["packages"] >= 10 and stats["passages"] > stats["packages"]
    assert ix.ensure() is False  # same corpus: the cached file is used as is
    assert ix.stats() == stats


def test_summarize_keeps_citations_pointing_at_the_passage_each_sentence_came_from(
    index: ResearchIndex,
) -> None:
    index.ensure()
    question = "refresh token reuse and timing attacks"
    passages = index.search(question) + index.search("timing attacks")
    summary = summarize(question, passages, max_sentences=3)
    lines = summary.splitlines()
    assert 1 <= len(lines) <= 3
    for line in lines:
        match = re.fullmatch(r"(.+) \[(\d+)\]", line)
        assert match, line
        sentence, n = match.group(1), int(match.group(2))
        assert sentence in passages[n - 1].text
    assert any("refresh token" in line.lower() for line in lines)
    assert any("timing attacks" in line for line in lines)


def test_summarize_says_nothing_when_no_sentence_shares_a_term() -> None:
    passage = Passage(
        source="x", section="y", text="Completely unrelated sentence about gardening.", score=1.0
    )
    assert summarize("jwt rotation", [passage]) == ""
    assert summarize("jwt rotation", []) == ""


def test_split_sections_follows_markdown_and_rest_heading_levels() -> None:
    md_sections = split_sections(AUTH_MD, "md")
    assert [path for path, _ in md_sections] == [
        ("Auth guide",),
        ("Auth guide", "Refresh tokens"),
        ("Auth guide", "Access tokens"),
    ]
    assert "# Not a heading" in md_sections[-1][1]
    rst = "=====\nTitle\n=====\n\nIntro text.\n\nPart\n----\n\nBody.\n\nSub\n~~~\n\nDeep.\n\nOther\n-----\n\nMore.\n"
    assert [path for path, _ in split_sections(rst, "rst")] == [
        ("Title",),
        ("Title", "Part"),
        ("Title", "Part", "Sub"),
        ("Title", "Other"),
    ]


def test_concurrent_searches_from_threads_share_one_index(index: ResearchIndex) -> None:
    def probe(_: int) -> str:
        index.ensure()
        return index.search("argon2id password storage")[0].section

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(probe, range(16))) == {"Hashing"}


LISTED = """\
Never keep passwords with a fast digest such as MD5.
Use a password hashing function that is deliberately slow and salted:

- Argon2id is the first choice for new systems.
- scrypt is memory-hard and in the standard library as hashlib.scrypt.

An unrelated closing remark about the weather in spring.
"""


def test_a_quoted_sentence_that_introduces_a_list_brings_the_list_items_with_it() -> None:
    passage = Passage(source="n.md", section="Password hashing", text=LISTED, score=1.0)
    summary = summarize("password hashing function slow", [passage], max_sentences=1, cite=[7])
    assert summary.splitlines() == [
        "Use a password hashing function that is deliberately slow and salted: [7]",
        "Argon2id is the first choice for new systems. [7]",
        "scrypt is memory-hard and in the standard library as hashlib.scrypt. [7]",
    ]


CODE = """\
import hashlib
import random
from hashlib import sha1

SECRET_KEY = "dev-secret"

def hash_password(password):
    return hashlib.md5(password.encode()).hexdigest()

def etag(body):
    return sha1(body).hexdigest()

def make_reset_token():
    return "".join(random.choice("abc") for _ in range(8))

def check(user, given):
    return user.token_hash == given

USERS = [{"name": "admin", "password": "admin123"}]
"""


def test_the_workspace_scan_finds_what_the_code_does_with_secrets_and_skips_tests(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(CODE)
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_app.py").write_text('PASSWORD = "made-up"\n')
    facts, files = scan_workspace(tmp_path)
    assert files == 2  # app.py and the unparsable file; tests are not read
    found = {(f.line, f.finding) for f in facts}
    assert (
        8,
        "Passwords are hashed with hashlib.md5 in hash_password(), a fast general-purpose digest.",
    ) in found
    assert not any(line == 11 for line, _ in found)  # sha1 for an ETag is no secret matter
    assert any(line == 5 and "SECRET_KEY" in text and "session cookies" in text for line, text in found)
    assert any(line == 14 and "random.choice in make_reset_token()" in text for line, text in found)
    assert any(line == 17 and "not constant-time" in text for line, text in found)
    assert any(line == 19 and "password is written in the code in plain text" in text for line, text in found)
    assert all(f.file == "app.py" for f in facts)

    about_passwords = relevant_facts(facts, "How should we store passwords?")
    assert {f.line for f in about_passwords} == {8, 17, 19}
    assert relevant_facts(facts, "Which message broker fits?") == []
