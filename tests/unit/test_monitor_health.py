"""The alive / suspect / dead state machine, driven by a hand-moved clock (no sleeping)."""

from __future__ import annotations

import pytest

from services.monitor.health import HealthBoard, Transition
from shared.contract.protocol import Heartbeat


class ManualClock:
    """A Clock whose time moves only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def hb(instance: str, role: str = "developer", **kw: object) -> Heartbeat:
    fields: dict = {"at": 1.0, "started_at": 0.0, **kw}
    return Heartbeat(role=role, instance_id=instance, **fields)


def kinds(transitions: list[Transition]) -> list[tuple[str, str, str | None]]:
    return [(t.kind, t.role, t.instance_id) for t in transitions]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def board(clock: ManualClock) -> HealthBoard:
    return HealthBoard(suspect_after=2.0, dead_after=5.0, clock=clock, roles=("developer",))


def test_an_instance_goes_alive_then_suspect_then_dead_as_heartbeats_stop(
    board: HealthBoard, clock: ManualClock
) -> None:
    board.beat(hb("d1"))
    assert board.instance_state("developer", "d1") == "alive"
    clock.advance(2.0)
    board.check()
    assert board.instance_state("developer", "d1") == "alive"
    clock.advance(0.5)
    assert board.check() == []
    assert board.instance_state("developer", "d1") == "suspect"
    assert board.role_health()["developer"].state == "degraded"
    clock.advance(2.6)
    out = board.check()
    assert kinds(out) == [("instance_dead", "developer", "d1"), ("role_down", "developer", None)]
    assert out[0].last_seen_s == pytest.approx(5.1)
    assert out[0].live_instances == 0
    assert board.instance_state("developer", "d1") == "dead"
    # a dead instance is reported once, not at every check
    clock.advance(1.0)
    assert board.check() == []


def test_a_dead_instance_that_beats_again_recovers_and_so_does_its_role(
    board: HealthBoard, clock: ManualClock
) -> None:
    board.beat(hb("d1"))
    clock.advance(6.0)
    board.check()
    clock.advance(3.0)
    out = board.beat(hb("d1", at=10.0))
    assert kinds(out) == [("instance_recovered", "developer", "d1"), ("role_recovered", "developer", None)]
    assert out[0].last_seen_s == pytest.approx(9.0)
    assert out[0].live_instances == 1 and out[1].live_instances == 1
    assert board.instance_state("developer", "d1") == "alive"
    assert board.role_health()["developer"].state == "up"


def test_a_role_stays_up_while_another_instance_lives(board: HealthBoard, clock: ManualClock) -> None:
    board.beat(hb("d1"))
    board.beat(hb("d2"))
    clock.advance(4.0)
    board.beat(hb("d2"))
    clock.advance(1.5)
    out = board.check()
    assert kinds(out) == [("instance_dead", "developer", "d1")]
    assert out[0].live_instances == 1
    health = board.role_health()["developer"]
    assert (health.state, health.alive, health.suspect, health.dead) == ("up", 1, 0, 1)


def test_an_expected_role_never_seen_is_unknown_during_the_grace_period_then_down(
    clock: ManualClock,
) -> None:
    board = HealthBoard(suspect_after=2.0, dead_after=5.0, clock=clock, roles=("developer", "reviewer"))
    out = board.beat(hb("d1"))
    assert board.role_health()["reviewer"].state == "unknown"
    clock.advance(4.0)
    out += board.beat(hb("d1")) + board.check()
    assert out == []
    clock.advance(1.5)
    out = board.beat(hb("d1")) + board.check()
    assert kinds(out) == [("role_down", "reviewer", None)]
    assert board.role_health()["reviewer"].state == "down"
    out = board.beat(hb("r1", role="reviewer"))
    assert kinds(out) == [("role_recovered", "reviewer", None)]


def test_roles_outside_the_expected_set_are_tracked_once_seen(board: HealthBoard, clock: ManualClock) -> None:
    board.beat(hb("m1", role="monitor"))
    assert board.role_health()["monitor"].state == "up"
    clock.advance(5.5)
    out = board.check()
    assert ("instance_dead", "monitor", "m1") in kinds(out)
    assert ("role_down", "monitor", None) in kinds(out)


def test_instances_show_load_current_steps_and_heartbeat_age(board: HealthBoard, clock: ManualClock) -> None:
    board.beat(hb("d1", status="busy", in_flight=1, current=["task_a/s1/1"], at=50.0, started_at=20.0))
    clock.advance(1.25)
    (view,) = board.instances()
    assert (view.status, view.in_flight, view.current) == ("busy", 1, ["task_a/s1/1"])
    assert view.last_seen_s == pytest.approx(1.25)
    assert view.uptime_s == pytest.approx(31.25)


def test_long_dead_instances_are_forgotten(clock: ManualClock) -> None:
    board = HealthBoard(suspect_after=1.0, dead_after=2.0, clock=clock, roles=(), forget_after=10.0)
    board.beat(hb("d1"))
    clock.advance(3.0)
    board.check()
    assert [v.instance_id for v in board.instances()] == ["d1"]
    clock.advance(10.0)
    board.check()
    assert board.instances() == []


def test_thresholds_must_be_ordered(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="suspect_after < dead_after"):
        HealthBoard(suspect_after=5.0, dead_after=5.0, clock=clock)


def test_a_role_with_pending_work_is_stalled_only_while_no_live_instance_pulls(
    board: HealthBoard, clock: ManualClock
) -> None:
    board.beat(hb("dev-1", pulling=False))
    assert board.stall("developer", 0) == []  # nothing waits: not stalled
    stalled = board.stall("developer", 3)
    assert kinds(stalled) == [("role_stalled", "developer", None)]
    assert stalled[0].pending == 3 and stalled[0].live_instances == 1
    assert board.stall("developer", 4) == []  # raised once, not on every check
    board.beat(hb("dev-2"))  # an older agent without the field counts as pulling
    back = board.stall("developer", 4)
    assert kinds(back) == [("role_unstalled", "developer", None)] and back[0].live_instances == 1


def test_a_dead_pulling_instance_does_not_keep_a_role_from_stalling(
    board: HealthBoard, clock: ManualClock
) -> None:
    board.beat(hb("dev-1", pulling=True))
    assert board.stall("developer", 1) == []
    clock.advance(6.0)
    board.check()
    assert kinds(board.stall("developer", 1)) == [("role_stalled", "developer", None)]
