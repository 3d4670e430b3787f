"""The benchmark's floor: the 7-step chain on bare nats-py runs in separate processes on a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import nats
from nats.js.errors import NotFoundError

from shared.contract.protocol import encode
from tests.bench import floor
from tests.helpers import feature_task, wait_for_value

ROOT = Path(__file__).resolve().parents[2]


async def test_the_floor_chain_takes_a_task_through_seven_steps_in_separate_processes(
    nats_url: str, prefix: str
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await floor.provision(js, prefix)
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.bench.floor", role, nats_url, prefix], cwd=ROOT)
        for role in ("orchestrator", *floor.ROLES)
    ]
    try:
        task = feature_task({"scores": [95]})
        await js.publish(floor.submit_subject(prefix), encode(task))

        async def result() -> bytes | None:
            try:
                msg = await js.get_last_msg(
                    f"{prefix.upper()}_EVENTS", floor.result_subject(prefix, task.task_id)
                )
            except NotFoundError:
                return None
            return msg.data

        assert await wait_for_value(result, 60, what="the floor's result") == b'{"status":"completed"}'
        kv = await js.key_value(f"{prefix.upper()}_state")
        state = msgspec.json.decode((await kv.get(task.task_id)).value)
        assert state == {"step": len(floor.STEPS)}  # one state write per transition, the last past step 7
        # every work item and step result was consumed (work-queue streams end empty)
        for stream in ("WORK", "STEP_RESULTS", "TASKS"):
            info = await js.stream_info(f"{prefix.upper()}_{stream}")
            assert info.state.messages == 0, stream
    finally:
        for p in procs:
            p.terminate()
        codes = [p.wait(15) for p in procs]
        await nc.close()
    assert codes == [0, 0, 0, 0], "SIGTERM ends every floor process cleanly"
