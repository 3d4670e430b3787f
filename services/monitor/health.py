"""Liveness of instances and roles from heartbeats: alive / suspect / dead.

An instance is *alive* while its last heartbeat is at most ``suspect_after``
seconds old, *suspect* up to ``dead_after``, *dead* past that. A role is
*up* with at least one alive instance, *degraded* with only suspect ones and
*down* with none (a role never seen is *unknown* for a grace period of
``dead_after`` after the board starts, then *down*). Time comes from a
``Clock`` so tests drive it without sleeping; receipt time is used, never the
sender's clock, so skew between machines cannot kill an instance. The views it
returns (``InstanceView``, ``RoleHealth``) and the ``Alert`` each transition becomes
are wire types in ``shared.contract.monitoring``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from shared.contract.monitoring import AlertKind, InstanceState, InstanceView, RoleHealth, RoleState
from shared.contract.protocol import Heartbeat

__all__ = ["Clock", "SystemClock", "Transition", "HealthBoard"]


class Clock(Protocol):
    """Monotonic seconds; the seam that lets unit tests move time by hand."""

    def now(self) -> float: ...


class SystemClock:
    """The real monotonic clock."""

    def now(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class Transition:
    """A change the board noticed; the service turns each into an Alert."""

    kind: AlertKind
    role: str
    instance_id: str | None
    last_seen_s: float | None
    live_instances: int
    pending: int = 0


@dataclass
class _Instance:
    beat: Heartbeat
    last_seen: float
    state: InstanceState = "alive"


@dataclass
class HealthBoard:
    """The heartbeat table and its state machine (pure: no I/O)."""

    suspect_after: float
    dead_after: float
    clock: Clock = field(default_factory=SystemClock)
    roles: tuple[str, ...] = ("orchestrator", "researcher", "developer", "reviewer")
    forget_after: float = 3600.0
    _instances: dict[str, _Instance] = field(default_factory=dict, init=False)
    _role_state: dict[str, RoleState] = field(default_factory=dict, init=False)
    _stalled: set[str] = field(default_factory=set, init=False)
    _started: float = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.suspect_after < self.dead_after:
            raise ValueError(
                f"need 0 < suspect_after < dead_after, got {self.suspect_after} and {self.dead_after}"
            )
        self._started = self.clock.now()

    @staticmethod
    def _key(role: str, instance_id: str) -> str:
        return f"{role}/{instance_id}"

    def beat(self, hb: Heartbeat) -> list[Transition]:
        """Record a heartbeat; a dead instance that beats again has recovered."""
        t = self.clock.now()
        key = self._key(hb.role, hb.instance_id)
        inst = self._instances.get(key)
        silent_for = None if inst is None or inst.state != "dead" else t - inst.last_seen
        self._instances[key] = _Instance(beat=hb, last_seen=t)
        out: list[Transition] = []
        if silent_for is not None:
            out.append(
                Transition("instance_recovered", hb.role, hb.instance_id, silent_for, self.live(hb.role))
            )
        return out + self._roles()

    def check(self) -> list[Transition]:
        """Re-evaluate every instance and role against the clock."""
        t = self.clock.now()
        died: list[_Instance] = []
        for key, inst in list(self._instances.items()):
            age = t - inst.last_seen
            if age > self.dead_after + self.forget_after:
                del self._instances[key]
                continue
            state: InstanceState = (
                "alive" if age <= self.suspect_after else "suspect" if age <= self.dead_after else "dead"
            )
            if state == "dead" and inst.state != "dead":
                died.append(inst)
            inst.state = state
        out = [
            Transition(
                "instance_dead", i.beat.role, i.beat.instance_id, t - i.last_seen, self.live(i.beat.role)
            )
            for i in died
        ]
        return out + self._roles()

    def _counts(self, role: str) -> tuple[int, int, int]:
        states = [i.state for i in self._instances.values() if i.beat.role == role]
        return states.count("alive"), states.count("suspect"), states.count("dead")

    def live(self, role: str) -> int:
        """Instances of ``role`` that are alive or suspect (not yet declared dead)."""
        alive, suspect, _ = self._counts(role)
        return alive + suspect

    def _roles(self) -> list[Transition]:
        out: list[Transition] = []
        seen = {i.beat.role for i in self._instances.values()}
        grace_over = self.clock.now() - self._started > self.dead_after
        for role in (*self.roles, *sorted(seen - set(self.roles))):
            alive, suspect, _ = self._counts(role)
            old = self._role_state.get(role, "unknown")
            new: RoleState
            if alive:
                new = "up"
            elif suspect:
                new = "degraded"
            elif role in seen or grace_over or old != "unknown":
                new = "down"
            else:
                new = "unknown"
            if new == "down" and old != "down":
                out.append(Transition("role_down", role, None, None, 0))
            elif old == "down" and new in ("up", "degraded"):
                out.append(Transition("role_recovered", role, None, None, alive + suspect))
            self._role_state[role] = new
        return out

    def pulling(self, role: str) -> int:
        """Live instances of ``role`` whose last heartbeat says they take work.

        A heartbeat without the field (an older agent) counts as pulling.
        """
        return sum(
            1
            for i in self._instances.values()
            if i.beat.role == role and i.state != "dead" and i.beat.pulling is not False
        )

    def stall(self, role: str, pending: int) -> list[Transition]:
        """``role_stalled`` when work waits and nobody pulls; ``role_unstalled`` when that ends."""
        pullers = self.pulling(role)
        stalled = pending > 0 and pullers == 0
        if stalled and role not in self._stalled:
            self._stalled.add(role)
            return [Transition("role_stalled", role, None, None, self.live(role), pending)]
        if not stalled and role in self._stalled:
            self._stalled.discard(role)
            return [Transition("role_unstalled", role, None, None, pullers, pending)]
        return []

    def role_health(self) -> dict[str, RoleHealth]:
        """Every expected or seen role with its state and counts."""
        out: dict[str, RoleHealth] = {}
        seen = {i.beat.role for i in self._instances.values()}
        for role in (*self.roles, *sorted(seen - set(self.roles))):
            alive, suspect, dead = self._counts(role)
            state = self._role_state.get(role, "unknown")
            out[role] = RoleHealth(state=state, alive=alive, suspect=suspect, dead=dead)
        return out

    def instance_state(self, role: str, instance_id: str) -> InstanceState | None:
        inst = self._instances.get(self._key(role, instance_id))
        return inst.state if inst else None

    def instances(self) -> list[InstanceView]:
        """Every known instance, by role then id (states as of the last ``check``)."""
        t = self.clock.now()
        views = []
        for inst in sorted(self._instances.values(), key=lambda i: (i.beat.role, i.beat.instance_id)):
            hb = inst.beat
            views.append(
                InstanceView(
                    role=hb.role,
                    instance_id=hb.instance_id,
                    state=inst.state,
                    status=hb.status,
                    in_flight=hb.in_flight,
                    current=list(hb.current),
                    last_seen_s=round(t - inst.last_seen, 3),
                    # both stamps come from the sender's clock, so no skew enters
                    uptime_s=round(max(0.0, hb.at - hb.started_at) + (t - inst.last_seen), 3),
                    heartbeat_interval=hb.interval,
                )
            )
        return views
