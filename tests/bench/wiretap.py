"""Where a step's time goes: every message on the wire of one workflow, with when it passed.

``python -m tests.bench.wiretap [cadre|floor] [N]`` starts the system (as ``make bench``
does), warms it up, then runs ``N`` (default 3) workflows one after the other while a
separate connection subscribes to ``>``: the server copies it every message it routes
(publishes, JetStream API requests and their replies, acks, KV writes, pull requests).
It prints the last workflow's messages in order, with the milliseconds since its
submit, and for all ``N`` the messages per workflow by kind: the round trips each
service pays per step, read against the floor's. The wiretap costs the server one
more delivery per message, so read the gaps and counts, not the absolute latency.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats

from tests.bench.systems import CadreSystem, Floor, System

__all__ = ["kind_of", "main"]


def kind_of(subject: str, reply: str) -> str:
    """A message's kind: the subject without its task ids, inbox tokens and per-message parts."""
    parts = subject.split(".")
    if subject.startswith("$JS.ACK."):
        return "$JS.ACK (consumer ack/nak/progress)"
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
        return "$JS.API.CONSUMER.MSG.NEXT." + parts[-1]
    if subject.startswith("$JS.API.DIRECT.GET."):
        return "$JS.API.DIRECT.GET (kv get)"
    if subject.startswith("$JS.API.STREAM.MSG.GET."):
        return "$JS.API.STREAM.MSG.GET (kv get)"
    if subject.startswith("$KV."):
        return "$KV put/update"
    if subject.startswith("_INBOX") or "INBOX" in parts[0]:
        return "reply to an inbox (acks, pulled messages, kv values)"
    if subject.startswith("$JS.EVENT") or subject.startswith("$SYS"):
        return "advisory"
    # <prefix>.<kind>.<...>: the tokens after the prefix, task ids folded
    rest = ["<task>" if p.startswith("task_") else p for p in parts[1:]]
    if rest[:1] == ["events"]:
        rest = rest[:1]  # events.<task>.<kind>: one line for all kinds
    return ".".join(rest) + (" (request)" if reply else "")


async def _tap(url: str, seen: list[tuple[float, str, str, int]]) -> Any:
    nc = await nats.connect(url, name="wiretap")

    async def on_msg(msg: Any) -> None:
        seen.append((time.perf_counter(), msg.subject, msg.reply, len(msg.data)))

    await nc.subscribe(">", cb=on_msg)
    await nc.flush()
    return nc


async def main(which: str = "cadre", n: int = 3) -> None:
    with tempfile.TemporaryDirectory(prefix="cadre-wiretap-") as tmp:
        system: System = CadreSystem(1, Path(tmp)) if which == "cadre" else Floor(Path(tmp))
        await system.start()
        try:
            url = system.server.url  # type: ignore[attr-defined]
            await system.run(1)
            seen: list[tuple[float, str, str, int]] = []
            tap = await _tap(url, seen)
            starts = []
            for _ in range(n):
                starts.append((time.perf_counter(), len(seen)))
                latency = (await system.run(1))[0]
                print(f"workflow latency {latency * 1e3:.1f} ms")
            await asyncio.sleep(0.2)  # the last acks and metrics pass the tap
            await tap.close()
        finally:
            await system.stop()
    t0, first = starts[-1]
    print(f"\n== the last workflow's messages ({which}); ms since its submit")
    for at, subject, reply, size in seen[first:]:
        print(f"{(at - t0) * 1e3:8.2f}  {size:6d}B  {subject}{'  reply=' + reply if reply else ''}")
    counts = Counter(kind_of(subject, reply) for _, subject, reply, _ in seen[starts[0][1] :])
    print(f"\n== messages per workflow by kind ({which}, {n} workflows)")
    for kind, count in counts.most_common():
        print(f"{count / n:7.1f}  {kind}")
    print(f"{sum(counts.values()) / n:7.1f}  in all")


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0] if args else "cadre", int(args[1]) if len(args) > 1 else 3))
