"""Where a machine's CPU time goes while a contender runs: CPU seconds by role, read from /proc.

`bench pipeline` reports rates; this says why they are what they are. While a run goes,
a thread reads every process's CPU time (utime + stime in /proc/PID/stat) once per
`interval_s` and the machine's idle time (/proc/stat), and adds each process's CPU time
to a role found from its command line: the model stage's actors, the CPU stage's, the
driver, Ray's own processes (raylet, GCS, agents, Ray Data's helper actors, idle
workers), the per-core processes, or anything else on the machine (the benchmark's own
process and this sampler included). A Ray worker's title changes once it becomes a stage
actor, so a process's role is read again until it is a stage's. Its CPU time is counted
from its first sighting (or from the start, for the processes that were already running)
to its last: what a process did between its last sample and its exit is not seen (up to
`interval_s` of it; a stage actor lives for the whole run, a short read task may lose
part of its time).

Linux only: elsewhere `available()` is False and the bench leaves the accounting out.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

MODEL_STAGE, CPU_STAGE, DRIVER, RAY, PER_CORE, OTHER, IDLE = (
    "model stage",
    "CPU stage",
    "driver",
    "Ray",
    "per-core processes",
    "other",
    "idle",
)
#: The roles in the order tables show them.
ROLES = (MODEL_STAGE, CPU_STAGE, PER_CORE, DRIVER, RAY, OTHER, IDLE)
#: Roles that can still change (a Ray worker becomes a stage actor when it is handed one).
PROVISIONAL = (RAY, OTHER)


def role_of(command: str) -> str:
    """The role of a process from its command line (as /proc/PID/cmdline shows it, NULs as spaces)."""
    if "GenerateStage" in command or "RankWorker" in command:  # a tensor-parallel gang's ranks too
        return MODEL_STAGE
    if "PreprocessStage" in command:
        return CPU_STAGE
    if "-m pipeline run" in command:
        return DRIVER
    if "benchmarks.per_core" in command:
        return PER_CORE
    if command.startswith("ray::") or "/ray/" in command or "raylet" in command or "gcs_server" in command:
        return RAY
    return OTHER


def available() -> bool:
    """Whether this machine has the /proc files the sampler reads."""
    return os.path.exists("/proc/stat") and os.path.exists(f"/proc/{os.getpid()}/stat")


def _process_cpu_s(pid: str, ticks: float) -> float | None:
    """utime + stime of a process in seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / ticks


def _command(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _idle_s(ticks: float) -> float:
    """The machine's idle + iowait time over all its CPUs, in seconds."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = handle.readline().split()
    return (int(fields[4]) + int(fields[5])) / ticks


@dataclass
class _Seen:
    role: str
    first_s: float
    last_s: float


@dataclass
class CpuShares:
    """CPU seconds by role (and the machine's idle seconds) over a run; use as a context manager."""

    interval_s: float = 0.5
    classify: Callable[[str], str] = role_of
    seconds: dict[str, float] = field(default_factory=dict, init=False)  # filled on exit
    wall_s: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._seen: dict[str, _Seen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-shares", daemon=True)

    def __enter__(self) -> CpuShares:
        for pid in self._pids():  # what was running before: counted from now on
            cpu = _process_cpu_s(pid, self._ticks)
            if cpu is not None:
                self._seen[pid] = _Seen(self.classify(_command(pid)), cpu, cpu)
        self._idle_start = _idle_s(self._ticks)
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall_s = time.perf_counter() - self._started
        totals: dict[str, float] = {}
        for seen in self._seen.values():
            totals[seen.role] = totals.get(seen.role, 0.0) + seen.last_s - seen.first_s
        totals[IDLE] = _idle_s(self._ticks) - self._idle_start
        self.seconds = {role: round(value, 2) for role, value in totals.items()}

    @staticmethod
    def _pids() -> list[str]:
        return [name for name in os.listdir("/proc") if name.isdigit()]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        for pid in self._pids():
            cpu = _process_cpu_s(pid, self._ticks)
            if cpu is None:
                continue
            seen = self._seen.get(pid)
            if seen is None:  # new since the start: all its time is inside the run
                self._seen[pid] = _Seen(self.classify(_command(pid)), 0.0, cpu)
                continue
            seen.last_s = cpu
            if seen.role in PROVISIONAL:
                command = _command(pid)
                if command:  # a process on its way out has none
                    seen.role = self.classify(command)


def per_row_ms(short: dict[str, float], long: dict[str, float], extra_rows: int) -> dict[str, float]:
    """CPU milliseconds per row of each role over the rows a long run has beyond a short one
    (start-up and tails cancel, as in the benchmark's steady rate)."""
    if extra_rows <= 0:
        return {}
    roles = sorted(set(short) | set(long))
    return {role: round(1000 * (long.get(role, 0.0) - short.get(role, 0.0)) / extra_rows, 1) for role in roles}
