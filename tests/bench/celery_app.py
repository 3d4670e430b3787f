"""The Celery side of the comparison: a chain of 7 no-op tasks, Redis as broker and result backend.

The worker runs ``celery -A tests.bench.celery_app worker --pool=prefork -c 3``;
the broker URL comes from ``CADRE_BENCH_REDIS_URL`` (the benchmark starts its
own redis-server on 127.0.0.1 and sets it).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, chain

__all__ = ["app", "feature_chain", "step"]

_URL = os.environ.get("CADRE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("cadre_bench", broker=_URL, backend=_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)

# the same 7 steps and roles as Cadre's feature plan (the orchestrator's "design" is a task here)
STEPS = ("analyze", "design", "implement", "tests", "security_review", "performance", "final_review")


@app.task(name="bench.step")
def step(previous: dict[str, Any], name: str) -> dict[str, Any]:
    """A no-op step: records that it ran and hands the task on."""
    return {"task": previous.get("task"), "done": [*previous.get("done", []), name]}


def feature_chain(task: dict[str, Any]) -> Any:
    """The 7-step chain for one task (each step gets the previous one's output)."""
    first, *rest = STEPS
    return chain(step.s({"task": task}, first), *(step.s(name) for name in rest))
