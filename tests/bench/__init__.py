"""``make bench``: Cadre measured side by side with the bus floor and Celery, in one run.

``python -m tests.bench`` starts every system on 127.0.0.1 (the floor: a bare
nats-py chain; Cadre 1x and 2x; Celery with Redis), interleaves rounds of the
spec's 7-step task, prints the tables and writes ``docs/benchmarks.md``. The
component rows (codec, research scaling, RSS, research index) follow.
"""
