"""The review's score out of 100, which open findings block approval, and the verdict.

Score (``score``), out of 100, floor 0; each concern has its own budget so
that quality findings cannot sink a security score::

    100 - security:    4 per HIGH + 2 per MEDIUM + 1 per LOW (the LOW part capped at 10)
        - correctness: 4 per HIGH + 2 per MEDIUM + 1 per LOW, capped at 10
        - style (style and performance): same weights, capped at 5
        - 20 if the developer's tests failed or errored
        - 5 if their coverage (percent) is below 80
        (neither when the tests could not run for an environment reason)

Verdict (``verdict``): ``approved`` iff score >= threshold and no finding
``blocks`` (any HIGH, or a security finding of MEDIUM or higher).

Pure functions of the issues and the developer's test report: the builtin and
LLM reviewers score with them, and the orchestrator's review loop decides
approval with ``blocks``.
"""

from __future__ import annotations

from typing import Literal

from shared.contract.protocol import Issue, TestReport

__all__ = [
    "WEIGHTS",
    "LOW_CAP",
    "CORRECTNESS_CAP",
    "STYLE_CAP",
    "TESTS_FAILED_PENALTY",
    "COVERAGE_PENALTY",
    "COVERAGE_TARGET",
    "blocking",
    "blocks",
    "score",
    "verdict",
]

WEIGHTS: dict[str, int] = {"HIGH": 4, "MEDIUM": 2, "LOW": 1}
LOW_CAP = 10  # security LOW findings together
CORRECTNESS_CAP = 10  # all correctness findings (ruff F/B, syntax errors) together
STYLE_CAP = 5  # all style and performance findings (ruff E/W/PERF, complexity) together
TESTS_FAILED_PENALTY = 20
COVERAGE_PENALTY = 5
COVERAGE_TARGET = 80.0


def _weight(issues: list[Issue]) -> int:
    return sum(WEIGHTS[i.severity] for i in issues)


def score(issues: list[Issue], tests: TestReport | None) -> tuple[int, dict[str, int]]:
    """The score out of 100 and each deduction (see the module docstring for the formula)."""
    security = [i for i in issues if i.concern == "security"]
    correctness = [i for i in issues if i.concern == "correctness"]
    style = [i for i in issues if i.concern not in ("security", "correctness")]
    low = [i for i in security if i.severity == "LOW"]
    breakdown = {
        "base": 100,
        "security": -(_weight([i for i in security if i.severity != "LOW"]) + min(LOW_CAP, _weight(low))),
        "correctness": -min(CORRECTNESS_CAP, _weight(correctness)),
        "style": -min(STYLE_CAP, _weight(style)),
        "tests": 0,
        "coverage": 0,
    }
    # a run that could not happen for a reason of our environment (TestReport.environment_error,
    # set by the sandboxed runner) says nothing about the project: no test deductions
    if tests is not None and getattr(tests, "environment_error", None) is None:
        if not tests.ok:
            breakdown["tests"] = -TESTS_FAILED_PENALTY
        if tests.coverage is not None and tests.coverage < COVERAGE_TARGET:
            breakdown["coverage"] = -COVERAGE_PENALTY
    return max(0, sum(breakdown.values())), breakdown


def blocks(issue: Issue) -> bool:
    """Whether an open finding blocks approval whatever the score: any HIGH (a syntax error
    included), or a security finding of MEDIUM or higher (SQL injection, a hard-coded
    signing key, unsafe deserialisation)."""
    return issue.severity == "HIGH" or (issue.concern == "security" and issue.severity == "MEDIUM")


def blocking(issues: list[Issue]) -> list[str]:
    """The ids of the findings that block approval, in the issues' order."""
    return [i.id for i in issues if blocks(i)]


def verdict(score: int, issues: list[Issue], threshold: int) -> Literal["approved", "changes_requested"]:
    """``approved`` iff the score reaches ``threshold`` and no open finding ``blocks``."""
    if score >= threshold and not any(blocks(i) for i in issues):
        return "approved"
    return "changes_requested"
