"""Figures → the printed tables and ``docs/benchmarks.md`` (machine and versions included)."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = ["Figures", "load_average", "machine", "markdown", "table"]

Row = tuple[str, ...]


@dataclass
class Figures:
    """What one system measured over all rounds."""

    name: str
    title: str
    latencies: list[float] = field(default_factory=list)  # sequential, seconds
    throughput: list[float] = field(default_factory=list)  # workflows/s, one per round
    throughput_50ms: list[float] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds of all its processes over the measured phases
    workflows: int = 0
    rss: list[tuple[str, int]] = field(default_factory=list)  # (process, KiB) after the load
    error: str = ""

    def p(self, q: float) -> float:
        xs = sorted(self.latencies)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]

    @property
    def rate(self) -> float:
        return statistics.median(self.throughput) if self.throughput else float("nan")

    @property
    def rate_50ms(self) -> float:
        return statistics.median(self.throughput_50ms) if self.throughput_50ms else float("nan")

    @property
    def cpu_ms(self) -> float:
        return 1e3 * self.cpu / self.workflows if self.workflows else float("nan")

    @property
    def rss_mib(self) -> float:
        return sum(kib for _, kib in self.rss) / 1024


def _f(x: float, fmt: str = ".1f") -> str:
    return "n/a" if x != x else format(x, fmt)  # NaN: not measured


def _spread(xs: list[float], fmt: str = ".1f") -> str:
    """Median over the rounds and the range, so a noisy machine shows as such."""
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return _f(xs[0], fmt)
    return f"{_f(statistics.median(xs), fmt)} ({_f(min(xs), fmt)}-{_f(max(xs), fmt)})"


def main_rows(systems: list[Figures], concurrency: int) -> list[Row]:
    """The side-by-side table: one column per system."""
    rows: list[Row] = [("", *(s.title for s in systems))]
    rows.append(
        (
            "7-step latency, median / p90 (ms)",
            *(f"{_f(s.p(0.5) * 1e3)} / {_f(s.p(0.9) * 1e3)}" for s in systems),
        )
    )
    rows.append(("7-step latency, fastest (ms)", *(_f(s.p(0.0) * 1e3) for s in systems)))
    rows.append(
        (
            f"{concurrency} concurrent, workflows/s, median (min-max)",
            *(_spread(s.throughput) for s in systems),
        )
    )
    rows.append(("CPU per workflow, all processes (ms)", *(_f(s.cpu_ms) for s in systems)))
    rows.append(("RSS, all processes (MiB)", *(_f(s.rss_mib) for s in systems)))
    rows.append(
        (
            f"{concurrency} concurrent, 50 ms steps, workflows/s",
            *(_spread(s.throughput_50ms, ".2f") for s in systems),
        )
    )
    for s in systems:
        if s.error:
            rows.append((f"NOT MEASURED: {s.title}", s.error, *([""] * (len(systems) - 1))))
    return rows


def ratio_rows(by: dict[str, Figures]) -> list[Row]:
    """The goals of issue 15 and the comparisons, each read from the figures (never asserted)."""
    floor, one, two, cel = by.get("floor"), by.get("cadre1x"), by.get("cadre2x"), by.get("celery")
    rows: list[Row] = [("ratio", "value", "goal", "met")]

    def add(name: str, value: float, goal: str = "", ok: bool | None = None) -> None:
        # goals are judged on the value as shown (2 decimals), so the table never contradicts itself
        value = round(value, 2)
        met = "" if ok is None or value != value else ("yes" if ok else "NO")
        rows.append((name, _f(value, ".2f") + "x", goal, met))

    if floor and one:
        lat = round(one.p(0.5) / floor.p(0.5), 2)
        add("Cadre 1x latency p50 / floor", lat, "<= 1.5x", lat <= 1.5)
        thr = round(one.rate / floor.rate, 2)
        add("Cadre 1x throughput / floor", thr, ">= 0.5x", thr >= 0.5)
        add("Cadre 1x CPU per workflow / floor", one.cpu_ms / floor.cpu_ms)
    if one and two:
        scale = round(two.rate_50ms / one.rate_50ms, 2)
        add("Cadre 2x / 1x throughput, 50 ms steps", scale, ">= 1.7x", scale >= 1.7)
        add("Cadre 2x / 1x throughput, no-op steps", two.rate / one.rate)
    if one and cel:
        add("Cadre 1x latency p50 / Celery", one.p(0.5) / cel.p(0.5))
        add("Cadre 1x throughput / Celery", one.rate / cel.rate)
        add("Cadre 1x CPU per workflow / Celery", one.cpu_ms / cel.cpu_ms)
    return rows


def rss_rows(systems: list[Figures]) -> list[Row]:
    rows: list[Row] = [("system", "process", "RSS (MiB)")]
    for s in systems:
        for name, kib in s.rss:
            rows.append((s.title, name, f"{kib / 1024:.1f}"))
    return rows


def table(rows: list[Row]) -> str:
    """Aligned plain text (first row is the header)."""
    widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(max(map(len, rows)))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows)


def md_table(rows: list[Row]) -> str:
    head, *body = rows
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(out)


def load_average() -> str:
    """The machine's load: figures taken under other load than the benchmark's are noisier."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _version(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        return "not installed"
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine(nats_server: str, load_at_start: str, load_at_end: str) -> list[Row]:
    """Where and with what the figures were taken."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    commit = _version(["git", "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ".", ":!docs/benchmarks.md"], capture_output=True, text=True
    ).stdout.strip()
    if dirty:
        commit += " (with uncommitted changes)"
    rows: list[Row] = [("what", "value")]
    rows += [
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("git commit", commit),
        ("CPU", f"{cpu}, {os.cpu_count()} logical cores"),
        ("load average (1, 5, 15 min) at start", load_at_start),
        ("load average at end", load_at_end),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("nats-server", _version([nats_server, "--version"])),
        ("nats-py / msgspec", f"{dist('nats-py')} / {dist('msgspec')}"),
        ("Celery / redis-py", f"{dist('celery')} / {dist('redis')}"),
        ("redis-server", _version(["redis-server", "--version"])),
    ]
    return rows


_INTRO = """# Benchmarks

Written by `make bench` (`python -m tests.bench`); every figure below is from the run
described under *Machine*. Nothing here is asserted by a test: the goals are read
from the figures. See *How it is measured* at the end.
"""

_HOW = """## How it is measured

- **Workload**: the spec's 7-step feature task ("Build user authentication API":
  analyze, design, implement, tests, security review, performance, final review) with
  no-op steps. Cadre runs it with `tests.brains:ScriptedBrain` (review score 95, so
  no fix loop); the orchestrator does *design* itself, the agents the other six.
- **floor**: the same chain on bare nats-py (`tests/bench/floor.py`): separate
  processes (one orchestrator, one agent per role), the same stream kinds as Cadre
  (work-queue streams for tasks, work and step results; a limits stream for the
  result) and one KV put per transition, and nothing else: no plan, events,
  heartbeats, health checks, metrics or review loop. Its orchestrator handles a
  fetched batch concurrently (different tasks), its agents one item at a time, as
  Cadre's do.
- **Cadre 1x**: one orchestrator and one agent per role; **Cadre 2x**: two
  orchestrators and two agents per role; real service processes (`shared/embedded/launcher.py`).
- **Celery**: Celery prefork worker (`-c 3`), Redis as broker and result backend,
  `chain` of 7 no-op tasks (`tests/bench/celery_app.py`); redis-server from Debian's
  packages (`deploy/scripts/system-packages.sh bench`, which `make bench` runs), started on 127.0.0.1 and stopped after.
- Each system has its own server(s) on 127.0.0.1, started by the benchmark and
  stopped after. Every system is started and warmed up first; then the rounds are
  interleaved (the order rotates each round): per system, `CADRE_BENCH_N`
  sequential workflows (latency: submit → final result seen by a subscriber),
  then `CADRE_BENCH_CONCURRENCY` submitted at once (throughput: median over rounds).
- **CPU per workflow**: user+system CPU of every process of the system (servers,
  services, prefork children; not the benchmark's client) over its measured
  phases, divided by the workflows run. **RSS**: every process after the load.
- **50 ms steps**: Cadre 1x vs 2x with scripted brains that await 50 ms per step,
  the concurrent batch each round (issue 15's scaling goal).
- Knobs: `CADRE_BENCH_ROUNDS` (default 5), `CADRE_BENCH_N` (sequential workflows per
  system per round, default 10), `CADRE_BENCH_CONCURRENCY` (default 20),
  `CADRE_BENCH_PROFILE=1` (py-spy profile of the orchestrator and the developer
  agent under load), `CADRE_BENCH_OUT` (where this page goes; `-` for nowhere).
- **Profile** (`CADRE_BENCH_PROFILE=1`, after the rounds, so it never slows the
  measured figures): py-spy records Cadre 1x's orchestrator and developer at
  400 Hz over 5 concurrent batches, twice: *wall* (every non-idle thread: syscalls
  such as socket writes count, and on a busy machine so does waiting for a CPU
  right after one) and *GIL* (only the thread holding the GIL: where Python spends CPU). Self time
  lists every frame; inclusive time lists Cadre's and nats-py's frames. The raw
  stacks stay in `.cadre/bench-profile/` (open them with e.g. speedscope or
  flamegraph.pl).
- The machine is shared (see the load average): compare columns of one run, not
  figures of different runs.

## Where a step's time goes

- **Wiretap**: `python -m tests.bench.wiretap cadre|floor [N]` starts one system
  as above, runs `N` workflows one after another while a separate connection
  subscribes to `>`, and prints the last workflow's messages in order with the
  milliseconds since its submit, then the messages per workflow by kind (publishes,
  their acks, pull requests, KV reads and writes, consumer acks). Counts do not
  depend on the machine's load; gaps do. Issue 15's hot-path pass, counted with it
  (3 workflows each): the floor 90 messages per workflow; Cadre 275 before, 203 after
  (agents' pulls 24 -> 6, the orchestrator's results pulls and their "no more" answers
  24 -> under 1, its metrics' acks 10 -> 0).
- **Round trips per step**: the floor's worker pays one pull (held by the server
  until the work arrives) and one publish (the result's ack), then acks one-way.
  A Cadre agent pays the same two on the step's path: one pull of the priority
  that rang (answered when the item is stored), the result's publish; `StepStarted`
  is sent while the brain runs (its ack is in by the time the result goes out), the
  work item's ack and the metric are one-way. Before the pass an agent also swept
  all three priorities with empty pulls after every step (4 pulls per step; now 1),
  and a ring of a normal or low item cost one or two empty pulls first.
- **The orchestrator's pulls**: one request per free handler slots (up to 32), held
  by the server for a second, each message handed to a handler the moment it
  arrives (`Puller.consume`): a steady flow costs one request per 32 messages, not a
  request and a "no more" status per message.
- **Per publish and per read** (client CPU, measured with 1000 x 5 pipelined
  publishes on one connection): nats.py's `publish_async` about 35 µs a publish,
  `Bus.publish_async` (one ack inbox, acks decoded by msgspec) about 23 µs; the
  workflow bucket answers reads with direct gets (the raw value) instead of a JSON
  reply carrying the value in base64 (`json.loads` of a 16 KB reply cost about
  170 µs, more than decoding the state itself).
- **The 2x latency tail** (a p90 of ~770 ms under load was seen with two of every
  service): a mechanism that produces exactly such holds, found in nats.py's
  `fetch(n)`, which the orchestrator's consumers used. When the first answer to its
  probe is a status (e.g. the late 408 of the previous fetch: its server expiry is
  only 100 µs shorter than its client timeout, so on a loaded machine the 408 can
  arrive after the client gave up), it sends a plain pull request for `n` and holds
  the first message it gets until `n` arrived or its 1 s timeout passed; that
  request also stays on the server and takes the next message into a queue nobody
  reads until the next fetch. Injecting one late 408 reproduces it (a message handed
  over after ~790 ms; `python -m tests.bench.pulltail`). How often it struck in a
  bench run was not counted. The orchestrator no longer uses `fetch`: its
  `Puller.consume` hands each message over as it arrives and, as `pull_batch` does,
  gives every request its own reply subject, so a status addressed to an earlier
  request is ignored; with the same injection both hand the message over in 1-5 ms.
"""


def markdown(sections: list[tuple[str, str]]) -> str:
    """The page: intro, each (title, body) section, then how it is measured."""
    parts = [_INTRO]
    for title, body in sections:
        parts.append(f"## {title}\n\n{body}\n")
    parts.append(_HOW)
    return "\n".join(parts)
