"""One run per output at a time: a lease file with a heartbeat.

Two runs writing the same output would cut the same rows into different files and write
them twice (and an `overwrite` would delete the other run's work). So a run takes a lease,
`{output}/_lease.json` (its host, pid, process start time and a heartbeat refreshed every
`HEARTBEAT_S` by a driver thread), before it touches the output, and gives it back at the
end. A second run finding a live lease stops at once, naming the holder.

A lease is live while its holder can be shown alive: on the same host, by its pid and
process start time (so a run whose driver was killed with SIGKILL is taken over at once);
on another host, by a heartbeat younger than `STALE_S`. A lease is advisory (object stores
have no atomic create-if-absent in the APIs used here): it reliably stops the common
mistakes - a second `run` or `submit` while one is going, a re-run after a crash while
zombie workers of the old run still write - and the shard seal (see `pipeline.resume`)
repairs the rare race it cannot stop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import JobError
from pipeline.spec import StorageSpec
from pipeline.storage import filesystem_for, join_uri

logger = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
HEARTBEAT_S = float(os.environ.get("PIPELINE_LEASE_HEARTBEAT_S", "30"))
STALE_S = float(os.environ.get("PIPELINE_LEASE_STALE_S", "180"))


@dataclass
class LeaseRecord:
    """Who holds an output."""

    run_id: str
    host: str
    pid: int
    pid_started: float  # the process's start time, to tell a reused pid from the holder
    started_at: float
    heartbeat_at: float


def _process_start_time(pid: int) -> float | None:
    """When a local process started (None if there is no such process)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def holder_alive(record: LeaseRecord, now: float | None = None) -> bool:
    """Whether the run holding `record` may still be writing."""
    if record.host == socket.gethostname():
        started = _process_start_time(record.pid)
        return started is not None and abs(started - record.pid_started) < 1.0
    return (now or time.time()) - record.heartbeat_at < STALE_S


def describe(record: LeaseRecord) -> str:
    age = time.time() - record.heartbeat_at
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at))
    return f"run {record.run_id} on host {record.host}, pid {record.pid}, started {started}, heartbeat {age:.0f} s ago"


class Lease:
    """The lease of one run on one output; `acquire` it before touching the output."""

    def __init__(self, output: str, storage: StorageSpec | None) -> None:
        self.output = output
        self.storage = storage
        self.uri = join_uri(output, LEASE_FILE)
        pid = os.getpid()
        now = time.time()
        self.record = LeaseRecord(
            run_id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=pid,
            pid_started=_process_start_time(pid) or now,
            started_at=now,
            heartbeat_at=now,
        )
        self.lost: str | None = None  # set by the heartbeat thread if another run took the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> LeaseRecord | None:
        fs, path = filesystem_for(self.uri, self.storage)
        try:
            with fs.open(path, "rb") as handle:
                data: dict[str, Any] = json.loads(handle.read().decode("utf-8"))
            return LeaseRecord(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as error:  # a torn or foreign file: treat as no lease
            logger.warning("ignoring unreadable lease %s (%s)", self.uri, error)
            return None

    def _write(self) -> None:
        from pipeline.writers.parquet import ParquetWriter

        self.record.heartbeat_at = time.time()
        ParquetWriter(self.storage).write_bytes(json.dumps(asdict(self.record)).encode("utf-8"), self.uri)

    def acquire(self) -> None:
        """Take the lease or raise a JobError naming the live holder."""
        try:
            current = self.read()
            if current is not None and current.run_id != self.record.run_id and holder_alive(current):
                raise JobError(
                    f"output.path {self.output} is being written by another run ({describe(current)}). Two runs on "
                    "one output would write rows twice: wait for it to finish or stop it. If it is dead, delete "
                    f"{self.uri} or wait {STALE_S:.0f} s after its last heartbeat."
                )
            if current is not None and current.run_id != self.record.run_id:
                logger.warning("taking over the lease of a run that is gone (%s)", describe(current))
            self._write()
        except OSError as error:
            raise JobError(f"output.path: cannot write to {self.output}: {error}") from None
        self._thread = threading.Thread(target=self._heartbeat, name="pipeline-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                current = self.read()
                if current is not None and current.run_id != self.record.run_id:
                    self.lost = describe(current)
                    return
                self._write()
            except OSError as error:  # keep trying: a storage hiccup must not stop the run
                logger.warning("could not refresh the lease %s: %s", self.uri, error)

    def check(self) -> None:
        """Raise if another run took the lease (this run must stop writing)."""
        if self.lost:
            raise JobError(
                f"another run took over output.path {self.output} ({self.lost}); this run stops so that no row is "
                "written twice"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self.read()
            if current is not None and current.run_id == self.record.run_id:
                fs, path = filesystem_for(self.uri, self.storage)
                fs.rm(path)
        except OSError as error:
            logger.warning("could not remove the lease %s: %s", self.uri, error)
