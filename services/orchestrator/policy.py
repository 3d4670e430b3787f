"""Conflict resolution: an explicit, ordered policy decides disagreements between agents.

The default order is security > correctness > performance > style (configurable
with ``CADRE_CONFLICT_POLICY``). The side whose concern ranks higher wins; on a
tie the reviewer's finding stands, since a finding is only waived on a
stronger concern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.contract.protocol import Concern, Conflict, Dispute, Issue

__all__ = ["ConflictPolicy"]


@dataclass(frozen=True)
class ConflictPolicy:
    order: tuple[Concern, ...] = ("security", "correctness", "performance", "style")

    def __post_init__(self) -> None:
        missing = {"security", "correctness", "performance", "style"} - set(self.order)
        if missing or len(set(self.order)) != len(self.order):
            raise ValueError(f"conflict policy must order each concern once; got {list(self.order)}")

    @property
    def text(self) -> str:
        return " > ".join(self.order)

    def rank(self, concern: Concern) -> int:
        return self.order.index(concern)

    def decide(self, step_id: str, issue: Issue, dispute: Dispute) -> Conflict:
        """Decide one dispute of a finding."""
        reviewer, developer = issue.concern, dispute.concern
        where = f"{issue.file}:{issue.line}" if issue.file else "the workspace"
        winner: Literal["developer", "reviewer"]
        if self.rank(developer) < self.rank(reviewer):
            winner, rule = "developer", f"{developer} > {reviewer}"
            decision = (
                f"{developer.capitalize()} wins: finding {issue.rule} at {where} is waived; "
                f"the reviewer's {reviewer} concern ranks lower under policy {self.text}."
            )
        else:
            winner = "reviewer"
            rule = (
                f"{reviewer} > {developer}"
                if reviewer != developer
                else f"tie on {reviewer}: the finding stands"
            )
            decision = (
                f"{reviewer.capitalize()} wins: the developer must fix {issue.rule} at {where} "
                f"in a way that keeps the {developer} concern in mind (policy {self.text})."
            )
        return Conflict(
            step_id=step_id,
            issue_id=issue.id,
            developer_position=dispute.argument,
            developer_concern=developer,
            reviewer_position=issue.message,
            reviewer_concern=reviewer,
            winner=winner,
            rule=rule,
            decision=decision,
        )
