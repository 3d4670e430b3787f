"""Escaping untrusted text (workspace file names, tool and model output) before it is shown.

Names and texts that come from a workspace or a model reach the Markdown
report, the task events and the terminal. A control character there is an
attack on whoever reads them: ESC starts a terminal escape sequence (recolour,
retitle, hide lines), CR overwrites a line, BEL rings, a newline in a file
name forges a new line of report or trace, and Unicode bidi controls reorder
what is displayed ("Trojan Source"). These helpers make every such character
visible instead (``\\e``, ``\\r``, ``\\x07``, ``\\u202e``) and never drop it, so
the reader still sees that something odd was there.
"""

from __future__ import annotations

import re

__all__ = ["text", "name", "md_name", "md_code"]

# C0 and C1 controls and DEL; Unicode bidi embedding/override/isolate marks
_BIDI = "\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL_KEEP_LINES = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
_CONTROL_ALL = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|#])")


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def text(value: str) -> str:
    """Multi-line text safe for a terminal or a report: line breaks and tabs kept, other controls shown."""
    return _CONTROL_KEEP_LINES.sub(_visible, value)


def name(value: str) -> str:
    """A one-line name (file, instance): every control character shown, line breaks included."""
    return _CONTROL_ALL.sub(_visible, value)


def md_name(value: str) -> str:
    """A one-line name inside Markdown: controls shown and Markdown syntax characters escaped."""
    return _MARKDOWN.sub(r"\\\1", name(value))


def md_code(value: str) -> str:
    """A one-line name as a Markdown code span (controls shown; a backtick in it cannot end the span)."""
    shown = name(value)
    longest = max((len(run) for run in re.findall(r"`+", shown)), default=0)
    if longest == 0:
        return f"`{shown}`"
    fence = "`" * (longest + 1)
    return f"{fence} {shown} {fence}"
