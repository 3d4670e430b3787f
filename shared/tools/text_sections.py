"""Plain-text structure of Markdown / reST documents: sections, passages, sentences.

``split_sections`` cuts a document at its headings, ``pack_passages`` gathers a
section's paragraphs into passages of about 1,500 characters for the research
index, ``package_text`` strips badges and HTML from a package's long
description, and ``sentences`` yields the prose sentences an extractive summary
is built from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = [
    "RELEASE_NOTES",
    "clean_inline",
    "pack_passages",
    "package_text",
    "sentences",
    "sentence_units",
    "split_sections",
]


_TARGET, _HARD = 1500, 2000  # passage size aimed at / never exceeded
_ATX = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_ADORN = re.compile(r"^([=\-~^*+#\"'`:.])\1{2,}\s*$")
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[`*])")
RELEASE_NOTES = re.compile(r"(?i)change ?log|release notes|history|what's (new|changed)|^v?\d+\.\d+")
_NOT_PROSE = (
    ">>>",
    "$ ",
    "import ",
    "from ",
    "def ",
    "class ",
    "@",
    "pip install",
    "{",
    "}",
    "Keywords:",
    "Topics:",
    "http",
)


def clean_inline(text: str) -> str:
    """Markdown / reST inline markup down to plain words (links keep their text)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`_+", r"\1", text)
    text = re.sub(r":[a-z:]+:`([^`]+)`", r"\1", text)
    text = text.replace("**", "").replace("__", "").replace("``", "`").replace("`", "")
    return re.sub(r"\s+", " ", text).strip()


def split_sections(text: str, style: str = "md") -> list[tuple[tuple[str, ...], str]]:
    """Split a document at its headings into ``(heading path, body)`` pairs.

    ``style="md"``: ATX (``## Title``) and setext (``===`` / ``---``) headings, fenced
    code ignored. ``style="rst"``: underlined (optionally overlined) titles, levels
    in order of first appearance, as docutils assigns them.
    """
    lines = text.splitlines()
    out: list[tuple[tuple[str, ...], str]] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    rst_levels: dict[str, int] = {}
    fence = False

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            out.append((tuple(title for _, title in path), content))
        body.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if style == "md" and _FENCE.match(line):
            fence = not fence
        heading: tuple[int, str, int] | None = None
        atx = _ATX.match(line) if style == "md" and not fence else None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if atx:
            heading = (len(atx.group(1)), atx.group(2), 1)
        elif (
            not fence
            and line.strip()
            and not line[0].isspace()
            and len(line.strip()) <= 120
            and not _ADORN.match(line)
            and _ADORN.match(nxt)
        ):
            ch = nxt[0]
            if style == "md" and ch in "=-":
                heading = (1 if ch == "=" else 2, line, 2)
            elif style == "rst" and len(nxt.rstrip()) >= len(line.rstrip()):
                over = bool(body) and body[-1].strip() == nxt.strip()
                if over:
                    body.pop()
                heading = (rst_levels.setdefault(ch + "/" + str(over), len(rst_levels) + 1), line, 2)
        if heading is None:
            body.append(line)
            i += 1
            continue
        level, title, consumed = heading
        flush()
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, clean_inline(title.strip())))
        i += consumed
    flush()
    return out


def pack_passages(body: str) -> Iterator[str]:
    """Paragraphs gathered into passages of about ``_TARGET`` characters (never above ``_HARD``)."""
    buf: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", body):
        para = para.strip("\n")
        while len(para) > _HARD:
            cut = para.rfind(" ", 0, _TARGET)
            cut = cut if cut > 0 else _TARGET
            if buf:
                yield "\n\n".join(buf)
                buf, size = [], 0
            yield para[:cut].strip()
            para = para[cut:].strip()
        if not para.strip():
            continue
        if buf and size + len(para) > _TARGET:
            yield "\n\n".join(buf)
            buf, size = [], 0
        buf.append(para)
        size += len(para) + 2
    if buf:
        yield "\n\n".join(buf)


def package_text(description: str) -> str:
    """A package's long description without badges, images and raw HTML."""
    text = re.sub(r"<!--.*?-->", "", description, flags=re.S)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[\s*\]\([^)]*\)", "", text)  # links left empty by a removed badge
    text = re.sub(r"</?[a-zA-Z][^>\n]*>", "", text)
    keep = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith((".. image::", ".. |", ":target:", ":alt:")) or re.fullmatch(
            r"(\|\w[^|]*\|\s*)+", stripped
        ):
            continue
        keep.append(line)
    return "\n".join(keep)


def sentences(text: str) -> Iterator[str]:
    """Prose sentences of a passage: code, headings and tables skipped, list items kept apart."""
    for sentence, _ in sentence_units(text):
        yield sentence


def sentence_units(text: str) -> Iterator[tuple[str, bool]]:
    """``sentences`` with a flag: True for the first sentence of a list item."""
    units: list[tuple[str, bool]] = []
    cur: list[str] = []
    item = False

    def flush() -> None:
        if cur:
            units.append((" ".join(cur), item))
            cur.clear()

    fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fence = not fence
            flush()
            continue
        stripped = line.strip().lstrip("> ").strip()
        if fence or not stripped or stripped.startswith(("#", "|", "..")) or _ADORN.match(stripped):
            flush()
            item = False
            continue
        if _LIST.match(line):
            flush()
            item = True
            stripped = _LIST.sub("", stripped)
        elif not cur:
            item = False
        cur.append(stripped)
    flush()
    for unit, is_item in units:
        if unit.startswith(_NOT_PROSE) or len(unit.split()) < 4:
            continue
        for n, sentence in enumerate(_SENT.split(clean_inline(unit))):
            if 25 <= len(sentence) <= 400:
                yield sentence, is_item and n == 0
