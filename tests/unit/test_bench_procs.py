"""The benchmark's process accounting: whole trees, children labelled under their root, CPU and RSS."""

from __future__ import annotations

import subprocess
import sys

from tests.bench import procs

# a parent that starts a child; the child burns some CPU, says so, then waits for stdin to close
CHILD = "import sys; sum(i * i for i in range(3_000_000)); print('busy', flush=True); sys.stdin.read()"
PARENT = (
    "import subprocess, sys; "
    f"c = subprocess.Popen([sys.executable, '-c', {CHILD!r}], stdin=sys.stdin, stdout=sys.stdout); "
    "c.wait()"
)


def test_a_process_tree_is_sampled_whole_with_children_labelled_under_the_root() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "busy"
        samples = procs.sample({parent.pid: "worker"})
        labels = sorted(s.label for s in samples)
        assert len(labels) == 2 and labels[0] == "worker" and labels[1].startswith("worker/python"), labels
        child = next(s for s in samples if s.label != "worker")
        assert child.cpu > 0, "the child's CPU time is counted"
        assert child.rss_kib > 1024, "a Python process holds more than 1 MiB"
        assert procs.tree([parent.pid]) == [parent.pid, child.pid]
    finally:
        assert parent.stdin is not None
        parent.stdin.close()
        parent.wait(30)
    assert procs.cpu_seconds(parent.pid) == 0.0 and procs.rss_kib(parent.pid) == 0, "a gone process counts 0"
