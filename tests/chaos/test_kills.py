"""Issue 12's proof: random SIGKILLs of agents and orchestrators, and a broker SIGKILL and restart, under load.

``CADRE_CHAOS_N`` tasks (default 40) run through two orchestrators and two
instances of each agent role, all real processes on a real nats-server.
While they run, ``CADRE_CHAOS_KILLS`` services (default N/2) are SIGKILLed
one at a time, each replaced by a fresh instance, paced by the work the
agents announce (never by the clock), and ``CADRE_CHAOS_BROKER_RESTARTS``
times (default one per 70 tasks, at least one) the broker itself is
SIGKILLed and restarted on the same store and port. The history checker
then prints submitted / completed / lost / two-results / re-runs and the
test fails on any lost task, any second result, any hidden re-run, or a
role that no longer takes work. ``CADRE_CHAOS_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from shared.bus.core import Bus
from tests.chaos.cluster import ChaosCluster, Observer, chaos_settings, submit_until_stored
from tests.chaos.history import check
from tests.helpers import await_result, feature_task, wait_for_value

pytestmark = pytest.mark.chaos

STEPS_PER_TASK = 6  # the feature template's agent steps (design runs inside the orchestrator)
IN_FLIGHT = 8  # tasks submitted ahead of their results


def _knobs() -> tuple[int, int, int, int]:
    n = int(os.environ.get("CADRE_CHAOS_N", "40"))
    kills = int(os.environ.get("CADRE_CHAOS_KILLS", str(max(2, n // 2))))
    # one broker restart per ~70 tasks (issue 12's record: 3 over 208 tasks), at least one
    restarts = int(os.environ.get("CADRE_CHAOS_BROKER_RESTARTS", str(max(1, n // 70))))
    seed = int(os.environ.get("CADRE_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))
    return n, kills, restarts, seed


async def _submit_all(bus: Bus, observer: Observer, task_ids: list[str], n: int) -> None:
    """Closed-loop load: keep about ``IN_FLIGHT`` tasks open, submitting as results come in."""
    for _ in range(n):
        while len(task_ids) - len(observer.history.published) >= IN_FLIGHT:
            await observer.wait_progress(2.0)  # a missed result (broker down) cannot stall the load
        task = feature_task({"scores": [95], "delay": 0.05})
        task_ids.append(task.task_id)
        observer.history.submitted.append(task.task_id)
        await submit_until_stored(bus, task)


async def _restart_broker(cluster: ChaosCluster, observer: Observer) -> float:
    """SIGKILL the broker, start it on the same store and port; seconds until every service heartbeats again.

    Every live service heartbeats first, so the kill hits running services (a service *starting*
    while the broker is away is another case: see docs/reliability.md).
    """
    before = time.monotonic()
    await wait_for_value(
        lambda: _all_beat(cluster, observer, before),
        60,
        what="every service heartbeating before the broker kill",
    )
    cluster.kill_broker()
    cluster.start_broker()
    restarted = time.monotonic()
    await wait_for_value(
        lambda: _all_beat(cluster, observer, restarted),
        60,
        what="every service heartbeating after the restart",
    )
    return time.monotonic() - restarted


async def _all_beat(cluster: ChaosCluster, observer: Observer, since: float) -> bool:
    """Every live service has heartbeaten since ``since``, and none says its consumer stopped pulling."""
    for p in cluster.live():
        hb = observer.fresh_heartbeat(p.env["CADRE_INSTANCE_ID"], since)
        if hb is None or getattr(hb, "pulling", None) is False:
            return False
    return True


async def _all_stored(bus: Bus, task_ids: list[str], observer: Observer, timeout: float) -> set[str]:
    """Wait until every task's final result is stored (or ``timeout``); the ids that have one."""
    done: set[str] = set()

    async def probe() -> bool:
        for task in task_ids:
            if task in done:
                continue
            try:
                await bus.js.get_last_msg(bus.subjects.stream_events, bus.subjects.result("client", task))
                done.add(task)
            except NotFoundError:
                pass
        return len(done) == len(task_ids)

    try:
        await wait_for_value(probe, timeout, interval=0.5, what="a stored final result for every task")
    except AssertionError:
        pass  # the checker reports the missing ones as lost
    return done


async def run_chaos(
    tmp_path: Path,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
    n: int,
    kills: int,
    restarts: int,
    seed: int,
) -> None:
    """One chaos run: load, kills, broker restarts, then the checker's verdict (asserted)."""
    restart_at = {kills * (i + 1) // (restarts + 1) for i in range(restarts)} if kills else set()
    rng = random.Random(seed)
    cluster = ChaosCluster(tmp_path, prefix)
    settings = chaos_settings(cluster.start_broker(), prefix, tmp_path)
    bus = await Bus.open(settings, "chaos-observer")
    observer = Observer(bus)
    await observer.start()
    cluster.services(settings)
    t0 = time.monotonic()
    reconnects: list[float] = []
    try:
        task_ids: list[str] = []
        submitter = asyncio.create_task(_submit_all(bus, observer, task_ids, n))
        pace = max(2, n * STEPS_PER_TASK // max(1, kills * 2))
        last = observer.started
        for k in range(kills):
            while observer.started < last + pace and not submitter.done():
                await observer.wait_progress(2.0)
            last = observer.started
            busy = {i for i, (_t, hb) in observer.heartbeats.items() if hb.status == "busy"}
            cluster.kill_and_replace(rng, busy)
            if k in restart_at:
                reconnects.append(await _restart_broker(cluster, observer))
        await submitter
        await _all_stored(bus, task_ids, observer, timeout=240)
        chaos_s = time.monotonic() - t0

        # every role still takes work: a fresh task needs all three, and every live service heartbeats
        probe = feature_task({"scores": [95]})
        await submit_until_stored(bus, probe, "probe")
        probe_result = await await_result(bus, probe.task_id, timeout=120)
        since = time.monotonic()
        await wait_for_value(
            lambda: _all_beat(cluster, observer, since),
            30,
            what="every live service heartbeating and pulling",
        )

        await observer.collect()
        verdict = check(observer.history)
        stats = (
            f"chaos run: seed={seed} tasks={n} kills={len(cluster.kills)} "
            f"broker_restarts={cluster.broker_restarts} "
            f"reconnect_after_broker_restart={'/'.join(f'{r:.1f}s' for r in reconnects) or '-'} "
            f"duration={chaos_s:.0f}s"
        )
        with capsys.disabled():
            print(f"\n{stats}\n{verdict.table()}\nkilled: {' '.join(cluster.kills)}")
        assert not observer.undecodable, observer.undecodable
        assert not cluster.died_alone(), f"services that died on their own: {cluster.died_alone()}"
        assert verdict.ok, f"{stats}\n{verdict.table()}"
        assert probe_result.status == "completed", f"a role stopped pulling: {probe_result.reason}"
        assert len(cluster.kills) >= kills and cluster.broker_restarts == len(restart_at)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        await bus.close()
        cluster.stop()


@pytest.mark.timeout(900)
async def test_sigkills_and_a_broker_restart_lose_no_task_and_never_give_two_results(
    tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    n, kills, restarts, seed = _knobs()
    await run_chaos(tmp_path, prefix, capsys, n, kills, restarts, seed)


@pytest.mark.timeout(300)
async def test_two_orchestrators_without_any_fault_give_every_task_one_result_and_a_contiguous_trace(
    tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same load and checker with no kill: a failure here is not about faults at all."""
    await run_chaos(tmp_path, prefix, capsys, n=20, kills=0, restarts=0, seed=0)
