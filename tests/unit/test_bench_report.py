"""The benchmark's arithmetic: profiles folded from py-spy stacks, percentiles, goals read from figures."""

from __future__ import annotations

from tests.bench.profile import Profile
from tests.bench.report import Figures, main_rows, ratio_rows, table

RAW = """\
main (services/orchestrator/__main__.py:44);_loop (services/orchestrator/service.py:236);write (asyncio/selector_events.py:1057) 6
main (services/orchestrator/__main__.py:44);_flush (services/orchestrator/service.py:214) 3
main (services/orchestrator/__main__.py:44);select (selectors.py:468) 1
"""


def test_py_spy_stacks_fold_into_self_and_inclusive_shares() -> None:
    prof = Profile.parse("orchestrator", RAW)
    assert prof.samples == 10
    assert prof.self_counts["write (asyncio/selector_events.py:1057)"] == 6
    assert prof.inclusive["main (services/orchestrator/__main__.py:44)"] == 10
    lines = prof.top(2)
    assert lines[1].strip() == "60.0%  write (asyncio/selector_events.py:1057)"
    # the inclusive list names only Cadre's and nats-py's frames, hottest first
    inclusive = lines[lines.index("orchestrator: top frames of Cadre and nats-py by inclusive time") + 1 :]
    assert inclusive[0].strip() == "100.0%  main (services/orchestrator/__main__.py:44)"
    assert not any("selectors.py" in line for line in inclusive)


def test_an_empty_profile_says_it_has_no_samples() -> None:
    assert "no samples" in Profile.parse("developer", "").top()[0]


def _fig(key: str, latencies_ms: list[float], rate: float, rate_50ms: float = float("nan")) -> Figures:
    fig = Figures(key, key, latencies=[x / 1e3 for x in latencies_ms], throughput=[rate])
    if rate_50ms == rate_50ms:
        fig.throughput_50ms = [rate_50ms]
    fig.cpu, fig.workflows = 0.5, 50
    return fig


def test_goals_are_read_from_the_figures_as_met_or_not() -> None:
    figs = {
        "floor": _fig("floor", [10, 20, 30], 100.0),
        "cadre1x": _fig("cadre1x", [14, 25, 90], 40.0, 5.0),
        "cadre2x": _fig("cadre2x", [15, 26, 99], 45.0, 9.0),
    }
    assert figs["cadre1x"].p(0.5) == 0.025 and figs["cadre1x"].p(0.9) == 0.09
    rows = {r[0]: r[1:] for r in ratio_rows(figs)}
    assert rows["Cadre 1x latency p50 / floor"] == ("1.25x", "<= 1.5x", "yes")
    assert rows["Cadre 1x throughput / floor"] == ("0.40x", ">= 0.5x", "NO")
    assert rows["Cadre 2x / 1x throughput, 50 ms steps"] == ("1.80x", ">= 1.7x", "yes")
    assert "Cadre 1x latency p50 / Celery" not in rows  # no Celery figures: no Celery ratios


def test_a_system_that_could_not_run_is_named_in_the_table_with_its_reason() -> None:
    missing = Figures("celery", "Celery c3", error="BenchError: redis-server is not installed")
    rows = main_rows([_fig("floor", [10], 100.0), missing], 20)
    assert ("NOT MEASURED: Celery c3", "BenchError: redis-server is not installed", "") in rows
    assert rows[3] == ("20 concurrent, workflows/s, median (min-max)", "100.0", "n/a")
    assert "NOT MEASURED: Celery c3" in table(rows)


def test_a_goal_is_judged_on_the_ratio_as_shown() -> None:
    figs = {"cadre1x": _fig("cadre1x", [10], 10.0, 5.0), "cadre2x": _fig("cadre2x", [10], 10.0, 8.498)}
    rows = {r[0]: r[1:] for r in ratio_rows(figs)}
    assert rows["Cadre 2x / 1x throughput, 50 ms steps"] == ("1.70x", ">= 1.7x", "yes")


def test_throughput_shows_the_median_over_rounds_and_their_range() -> None:
    fig = Figures("floor", "floor", latencies=[0.01], throughput=[30.0, 10.0, 20.0])
    rows = main_rows([fig], 20)
    assert rows[3] == ("20 concurrent, workflows/s, median (min-max)", "20.0 (10.0-30.0)")
