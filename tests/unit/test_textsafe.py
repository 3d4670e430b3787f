"""Escaping untrusted names and texts: control characters are shown, never passed to a terminal."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from services.orchestrator import trace
from services.orchestrator.report import markdown_report
from shared.client.cli.view import print_result, trace_text
from shared.contract import textsafe
from shared.contract.protocol import (
    Change,
    DevelopmentOutput,
    FinalResult,
    Issue,
    ReviewOutput,
    StepRecord,
    StepResult,
    TaskEvent,
    Timings,
)

EVIL = "evil\x1b]0;pwned\x07\x1b[2J\rname\nline2\u202etxt.py"


def test_names_show_every_control_character_and_bidi_mark() -> None:
    assert textsafe.name(EVIL) == "evil\\e]0;pwned\\x07\\e[2J\\rname\\nline2\\u202etxt.py"
    assert "\n" not in textsafe.name("a\nb") and "\t" not in textsafe.name("a\tb")


def test_texts_keep_their_lines_but_lose_escapes() -> None:
    assert textsafe.text("line1\nline2\tx\x1b[31m\r\x9b") == "line1\nline2\tx\\e[31m\\r\\x9b"
    assert textsafe.text("plain text → ok") == "plain text → ok"


def test_markdown_names_escape_markdown_syntax_too() -> None:
    # the visible "\\n" keeps its backslash too: Markdown renders "\\\\n" as "\\n"
    assert textsafe.md_name("a|b*c_`d`[e](f)<g>#\n") == "a\\|b\\*c\\_\\`d\\`\\[e\\](f)\\<g\\>\\#\\\\n"


def test_a_code_span_name_cannot_be_closed_by_a_backtick_in_it() -> None:
    assert textsafe.md_code("a.py") == "`a.py`"
    assert textsafe.md_code("a`b``c.py") == "``` a`b``c.py ```"
    assert textsafe.md_code("x\ny") == "`x\\ny`"


def _review_result(file: str) -> StepResult:
    issue = Issue(
        id="i1", severity="HIGH", rule="B105", message="hard-coded secret", tool="bandit", file=file, line=3
    )
    return StepResult(
        message_id="m",
        task_id="t",
        step_id="review",
        attempt=1,
        role="reviewer",
        instance_id="reviewer-1",
        status="completed",
        output=ReviewOutput(summary="s", score=50, verdict="changes_requested", issues=[issue]),
        timings=Timings(queued_at=0, started_at=0, finished_at=0),
    )


def test_a_file_name_with_escapes_stays_one_visible_line_in_the_trace() -> None:
    text = trace.returned(_review_result(EVIL))
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "evil\\e]0;pwned" in text
    issue_lines = [line for line in text.splitlines() if "B105" in line]
    assert len(issue_lines) == 1 and "line2" in issue_lines[0]  # the name's newline did not forge a line


def test_the_markdown_report_escapes_file_names_and_control_characters() -> None:
    change = Change(file=EVIL, kind="fix", description="d\x1b[1m", diff="- a\n+ b\x07")
    record = StepRecord(
        step_id="fix",
        role="developer",
        task_type="implementation",
        description="fix",
        status="completed",
        attempts=1,
        instance_id="developer-1",
        summary="ok",
        output=DevelopmentOutput(summary="ok", changes=[change]),
    )
    result = FinalResult(task_id="t", status="completed", approved=True, description="x", steps=[record])
    report = textsafe.text(markdown_report(result, []))
    assert "\x1b" not in report and "\x07" not in report and "\r" not in report
    line = next(line for line in report.splitlines() if "pwned" in line)
    assert line.startswith("- `evil\\e]0;pwned") and "line2" in line  # one code span, one line


def test_the_cli_prints_event_texts_and_reports_without_control_characters() -> None:
    event = TaskEvent(task_id="t", kind="step_completed", text=f"[Developer] changed {EVIL}", at=0.0)
    shown = trace_text(event).plain
    assert "\x1b" not in shown and "\r" not in shown and "\x07" not in shown and "\u202e" not in shown
    buf = StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    result = FinalResult(
        task_id="t", status="failed", approved=False, reason=f"bad {EVIL}", report_markdown=f"# r\n\n{EVIL}\n"
    )
    print_result(console, result)
    out = buf.getvalue()
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "pwned" in out
