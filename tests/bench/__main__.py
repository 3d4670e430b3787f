"""Run the benchmark: systems up, interleaved rounds, optional py-spy profile, tables, the page."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path

from shared.embedded.natsserver import find_nats_server
from tests.bench import procs, report
from tests.bench.micro import micro_rows
from tests.bench.profile import Recorder
from tests.bench.report import Figures
from tests.bench.systems import CadreSystem, CelerySystem, Floor, System

_ROOT = Path(__file__).resolve().parents[2]
_PROFILE_BATCHES = 5  # concurrent batches per recording: enough samples at 400 Hz, a few seconds


def _knob(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _cpu(system: System) -> float:
    pids = procs.tree(list(system.processes()))
    return sum(procs.cpu_seconds(pid) for pid in pids)


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


async def _start(key: str, system: System, fig: Figures) -> System | None:
    t0 = time.perf_counter()
    try:
        await system.start()
    except Exception as exc:  # a system that cannot run is reported, the others still are
        fig.error = f"{type(exc).__name__}: {exc}"
        _say(f"{fig.title} NOT STARTED: {fig.error}")
        await system.stop()
        return None
    _say(f"{fig.title} up and warm in {time.perf_counter() - t0:.1f}s")
    return system


async def _round(system: System, fig: Figures, seq: int, conc: int, delay_batch: bool) -> None:
    cpu0 = _cpu(system)
    for _ in range(seq):
        fig.latencies.extend(await system.run(1))
    t0 = time.perf_counter()
    await system.run(conc)
    fig.throughput.append(conc / (time.perf_counter() - t0))
    fig.cpu += _cpu(system) - cpu0
    fig.workflows += seq + conc
    if delay_batch:  # issue 15's scaling row: steps that await 50 ms
        t0 = time.perf_counter()
        await system.run(conc, delay=0.05)
        fig.throughput_50ms.append(conc / (time.perf_counter() - t0))


async def _profile(system: CadreSystem, conc: int, out_dir: Path) -> list[str]:
    """Concurrent batches under py-spy, wall-clock then GIL; the raw stacks stay in ``out_dir``."""
    pids = {name: pid for pid, name in system.processes().items()}
    lines = [f"raw py-spy stacks: {out_dir}"]
    for mode in ("wall", "GIL"):
        targets = {f"{role} ({mode})": pids[f"{role}-1"] for role in ("orchestrator", "developer")}
        try:
            with Recorder(targets, out_dir / mode, gil=mode == "GIL", rate=400) as rec:
                for _ in range(_PROFILE_BATCHES):
                    await system.run(conc)
            profiles = rec.profiles()
        except RuntimeError as exc:
            return [f"NO PROFILE: {exc}"]
        for prof in profiles:
            lines += prof.top()
    return lines


async def main() -> None:
    rounds = _knob("CADRE_BENCH_ROUNDS", 5)
    seq = _knob("CADRE_BENCH_N", 10)
    conc = _knob("CADRE_BENCH_CONCURRENCY", 20)
    profile = os.environ.get("CADRE_BENCH_PROFILE", "") not in ("", "0")
    out = os.environ.get("CADRE_BENCH_OUT", str(_ROOT / "docs" / "benchmarks.md"))
    started = time.perf_counter()
    load_at_start = report.load_average()
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp_name:
        tmp = Path(tmp_name)
        candidates: list[tuple[str, str, System]] = [
            ("floor", "floor (nats-py)", Floor(tmp / "floor")),
            ("cadre1x", "Cadre 1x", CadreSystem(1, tmp / "cadre1x")),
            ("cadre2x", "Cadre 2x", CadreSystem(2, tmp / "cadre2x")),
            ("celery", "Celery c3", CelerySystem(tmp / "celery", concurrency=3)),
        ]
        only = [k for k in os.environ.get("CADRE_BENCH_SYSTEMS", "").split(",") if k]
        if only:  # a subset, e.g. CADRE_BENCH_SYSTEMS=cadre1x,cadre2x (before/after rounds of one change)
            candidates = [c for c in candidates if c[0] in only]
        figs = {key: Figures(key, title) for key, title, _ in candidates}
        running: dict[str, System] = {}
        profile_lines: list[str] = []
        try:
            for key, _, system in candidates:
                up = await _start(key, system, figs[key])
                if up is not None:
                    running[key] = up
            for r in range(rounds):
                order = list(running)
                order = order[r % len(order) :] + order[: r % len(order)]
                for key in order:
                    try:
                        await _round(running[key], figs[key], seq, conc, key.startswith("cadre"))
                    except Exception as exc:  # reported in the table; the other systems go on
                        figs[key].error = f"failed in round {r + 1}: {type(exc).__name__}: {exc}"
                        _say(f"{figs[key].title} {figs[key].error}")
                        await running.pop(key).stop()
                _say(f"round {r + 1}/{rounds} done ({', '.join(order)})")
            for key, system in running.items():
                pids = system.processes()
                figs[key].rss = [(s.label, s.rss_kib) for s in procs.sample(pids)]
            if profile and isinstance(running.get("cadre1x"), CadreSystem):
                _say("profiling Cadre 1x with py-spy (orchestrator, developer)")
                profile_lines = await _profile(running["cadre1x"], conc, _ROOT / ".cadre" / "bench-profile")  # type: ignore[arg-type]
        finally:
            for system in running.values():
                await system.stop()
        _say("component rows (codec, research scaling, RSS, index)")
        micro = await micro_rows(tmp)

    host = report.machine(find_nats_server(), load_at_start, report.load_average())
    fig_list = list(figs.values())
    main = report.main_rows(fig_list, conc)
    ratios = report.ratio_rows(figs)
    rss = report.rss_rows(fig_list)
    micro_table: list[tuple[str, ...]] = [("measure", "ours", "baseline", "ratio"), *micro]
    elapsed = time.perf_counter() - started
    print()
    for title, rows in (
        ("machine", host),
        ("side by side", main),
        ("ratios", ratios),
        ("RSS of every process", rss),
    ):
        print(f"== {title}\n{report.table(rows)}\n")
    print(f"== components\n{report.table(micro_table)}\n")
    if profile_lines:
        print("== py-spy profile, Cadre 1x under load\n" + "\n".join(profile_lines) + "\n")
    print(f"(rounds {rounds}, {seq} sequential + {conc} concurrent per system per round; {elapsed:.0f}s)")
    if out != "-":
        sections = [
            ("Machine", report.md_table(host)),
            (
                f"Side by side ({rounds} interleaved rounds, {seq} sequential + {conc} concurrent each)",
                report.md_table(main),
            ),
            ("Ratios and issue 15's goals", report.md_table(ratios)),
            ("RSS of every process (after the load)", report.md_table(rss)),
            ("Components", report.md_table(micro_table)),
        ]
        if profile_lines:
            sections.append(
                ("py-spy profile of Cadre 1x under load", "```\n" + "\n".join(profile_lines) + "\n```")
            )
        sections.append(("Run", f"{elapsed:.0f} s wall time for the whole `make bench`."))
        Path(out).write_text(report.markdown(sections))
        print(f"written: {out}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
