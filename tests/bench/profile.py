"""``CADRE_BENCH_PROFILE=1``: sample the orchestrator and an agent with py-spy under load.

py-spy (PyPI) attaches to the running processes (root, or ptrace allowed),
records raw collapsed stacks while batches of workflows run, and the hottest
frames are read from them: *self* (the frame on top of the stack) and
*inclusive* (anywhere in the stack), as shares of the samples.

Two recordings: *wall* samples every non-idle thread (a syscall such as a
socket write counts, and so does time spent runnable but waiting for a CPU on
a busy machine); *GIL* samples only the thread holding the GIL, i.e. where
Python itself spends CPU.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Profile", "Recorder", "py_spy"]

# frames of our code and of the NATS client (the rest is the event loop and the runtime)
_OURS = re.compile(r"\((shared|services|tests|nats)/")


def py_spy() -> str | None:
    """The py-spy binary next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    """The samples of one process, folded into self and inclusive counts per frame."""

    label: str
    samples: int = 0
    self_counts: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, label: str, raw: str) -> Profile:
        prof = cls(label)
        for line in raw.splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")  # root first, the running frame last
            prof.samples += n
            prof.self_counts[frames[-1]] += n
            for frame in set(frames):
                prof.inclusive[frame] += n
        return prof

    def top(self, k: int = 12) -> list[str]:
        """Lines: the hottest frames by self share, then by inclusive share (our code and libraries)."""
        if not self.samples:
            return [f"{self.label}: no samples (py-spy saw no running Python frames)"]
        out = [f"{self.label}: {self.samples} samples; top frames by self time"]
        for frame, n in self.self_counts.most_common(k):
            out.append(f"  {100 * n / self.samples:5.1f}%  {frame}")
        out.append(f"{self.label}: top frames of Cadre and nats-py by inclusive time")
        ours = Counter({f: n for f, n in self.inclusive.items() if _OURS.search(f)})
        for frame, n in ours.most_common(k):
            out.append(f"  {100 * n / self.samples:5.1f}%  {frame}")
        return out


class Recorder:
    """``py-spy record`` on some processes while a block of work runs."""

    def __init__(self, targets: dict[str, int], out_dir: Path, *, gil: bool = False, rate: int = 200) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install -e '.[bench]' (or pip install py-spy)")
        self.exe = exe
        self.targets = targets
        self.out_dir = out_dir
        self.rate = rate
        self.gil = gil
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def __enter__(self) -> Recorder:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for label, pid in self.targets.items():
            out = self.out_dir / f"{label}.txt"
            out.unlink(missing_ok=True)  # never read an earlier run's stacks as this one's
            cmd = [self.exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw"]
            cmd += ["--output", str(out), "--nonblocking"] + (["--gil"] if self.gil else [])
            log = open(self.out_dir / f"{label}.py-spy.log", "wb")  # noqa: SIM115
            self._procs[label] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out)
            log.close()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc, _ in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for proc, _ in self._procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def profiles(self) -> list[Profile]:
        out = []
        for label, (_, path) in self._procs.items():
            if not path.exists():
                log = (self.out_dir / f"{label}.py-spy.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"py-spy wrote no profile of {label}: {log}")
            out.append(Profile.parse(label, path.read_text()))
        return out
