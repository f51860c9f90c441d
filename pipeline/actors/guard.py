"""Rows that kill their worker, and exceptions nobody expected: neither may stop the job.

Ray Data restarts a dead actor and retries its batch (actor pools run with
max_restarts=-1 and max_task_retries=-1). That survives a preempted node or a one-off
crash, but a row that crashes the process every time (a decoder segfault, a video that
makes the out-of-memory killer fire, a GPU fault on one input) would be retried forever
and the job would never finish. So each stage call goes through a `StageGuard`:

- It counts attempts per batch in a `CrashLedger`, a tiny actor owned by the driver (a
  process that died cannot remember that it tried). A batch seen for the first time runs
  whole. A batch seen again means the worker died on it: it is rerun one row at a time,
  each row counted, and a row whose worker died more than `max_retries` times is written
  with error_kind `worker_died` instead of being tried again.
- An exception escaping the stage's code is not a crash but a bug or an input nobody
  foresaw: the batch is rerun row by row, and the rows that still raise get error_kind
  `internal_error` with the exception's type and message (and a traceback in the worker's
  log), so one odd row costs one row, not the job.

The ledger holds keys only while their batch or row is in flight (plus the few poisoned
rows), so its memory does not grow with the manifest. If it cannot be reached the guard
falls back to plain behaviour (each batch treated as a first attempt).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from pipeline.readers.manifest import ID
from pipeline.writers.parquet import ids_digest

logger = logging.getLogger(__name__)

# Test hook (not a mock): "stage:id" makes the worker of that stage kill itself with
# SIGKILL whenever it is about to process the row with that id - a real process death,
# as a decoder segfault or the out-of-memory killer would cause.
FAULT_CRASH_ENV = "PIPELINE_FAULT_CRASH_ON_ID"
LEDGER_TIMEOUT_S = 60.0

ProcessFn = Callable[[pa.Table], pa.Table]
FailFn = Callable[[pa.Table, str, str], pa.Table]


class CrashLedger:
    """Attempts per key (a batch or a row), remembered across worker deaths, with a note of
    why the last attempt died when the dying process could say (a row that took too long)."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.notes: dict[str, str] = {}

    def note(self, key: str, text: str) -> None:
        """Record why the attempt on `key` is about to die."""
        self.notes[key] = text

    def notes_for(self, keys: list[str]) -> list[str | None]:
        """The notes of some keys (None where there is none)."""
        return [self.notes.get(key) for key in keys]

    def begin(self, keys: list[str]) -> list[int]:
        """Count one more attempt for each key; return the counts (1 = first attempt)."""
        counts = []
        for key in keys:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            counts.append(self.attempts[key])
        return counts

    def end(self, keys: list[str]) -> None:
        """Forget keys whose outcome is decided."""
        for key in keys:
            self.attempts.pop(key, None)
            self.notes.pop(key, None)

    def size(self) -> int:
        """Keys held (in-flight batches and rows)."""
        return len(self.attempts)


def start_ledger() -> Any:
    """A ledger actor for one run (lives as long as the driver)."""
    import ray

    remote = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(CrashLedger)
    return remote.remote()


class StageGuard:
    """Runs a stage's batch function under the crash ledger and the row-isolation rules."""

    def __init__(self, stage: str, process: ProcessFn, fail: FailFn, ledger: Any | None, max_retries: int) -> None:
        self.stage = stage
        self.process = process
        self.fail = fail
        self.ledger = ledger
        self.max_retries = max_retries
        crash = os.environ.get(FAULT_CRASH_ENV, "")
        self.crash_id = crash.split(":", 1)[1] if crash.startswith(f"{stage}:") else None

    def _ledger(self, method: str, *args: Any, wait: bool = True) -> Any:
        """Call the ledger; `wait=False` sends without waiting (calls from one caller stay in order)."""
        if self.ledger is None:
            return None
        call = getattr(self.ledger, method)
        if not hasattr(call, "remote"):
            return call(*args)  # a local ledger (tests, use without Ray)
        import ray

        try:
            reference = call.remote(*args)
            return ray.get(reference, timeout=LEDGER_TIMEOUT_S) if wait else None
        except (ray.exceptions.RayError, TimeoutError) as error:
            logger.warning("%s: crash ledger unreachable (%s); continuing without it", self.stage, error)
            return None

    def row_key(self, row_id: str) -> str:
        """The ledger key of one row of this stage."""
        return f"{self.stage}/row/{ids_digest([row_id])}"

    def note_row(self, row_id: str, text: str) -> None:
        """Tell the ledger why this row's worker is about to die (read when the row gives up)."""
        self._ledger("note", self.row_key(row_id), text)

    def _maybe_crash(self, ids: list[str]) -> None:
        if self.crash_id is not None and self.crash_id in ids:
            logger.warning("%s: test hook %s: killing this worker", self.stage, FAULT_CRASH_ENV)
            os.kill(os.getpid(), signal.SIGKILL)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = [str(value) for value in batch.column(ID).to_pylist()]
        key = f"{self.stage}/batch/{ids_digest(ids)}"
        counts = self._ledger("begin", [key])
        attempt = counts[0] if counts else 1
        if attempt == 1:
            out = self._whole(batch, ids)
        else:
            logger.warning(
                "%s: a worker died on this batch of %d rows (attempt %d); retrying it row by row",
                self.stage,
                batch.num_rows,
                attempt,
            )
            out = self._isolated(batch, ids)
        self._ledger("end", [key], wait=False)  # a batch that returned is never retried: no need to wait
        return out

    def _whole(self, batch: pa.Table, ids: list[str]) -> pa.Table:
        self._maybe_crash(ids)
        try:
            return self.process(batch)
        except Exception:  # an unforeseen failure: find the rows it belongs to
            logger.exception("%s: unexpected error on a batch of %d rows; retrying row by row", self.stage, len(ids))
        return _concat([self._one(batch.slice(index, 1)) for index in range(batch.num_rows)])

    def _one(self, row: pa.Table) -> pa.Table:
        try:
            return self.process(row)
        except Exception as error:  # the row's own problem: keep its cause in the row
            logger.exception("%s: unexpected error on row %r", self.stage, row.column(ID)[0].as_py())
            message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            return self.fail(row, "internal_error", f"in the {self.stage} stage: {message}")

    def _isolated(self, batch: pa.Table, ids: list[str]) -> pa.Table:
        outputs = []
        for index, row_id in enumerate(ids):
            row = batch.slice(index, 1)
            key = self.row_key(row_id)
            counts = self._ledger("begin", [key])
            # counts[0] - 1 deaths while this row ran alone, plus the death of its first batch
            if counts and counts[0] > self.max_retries:
                notes = self._ledger("notes_for", [key]) or [None]
                cause = notes[0] or "a crash in a decoder or the model, or the out-of-memory killer"
                outputs.append(
                    self.fail(
                        row,
                        "worker_died",
                        f"the {self.stage} worker process died {counts[0]} time(s) while working on this row "
                        f"({cause}); retries allowed: {self.max_retries}",
                    )
                )
            else:
                self._maybe_crash([row_id])
                outputs.append(self._one(row))
            self._ledger("end", [key])  # confirmed before the next row: a death there must not count here
        return _concat(outputs)


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


class Watchdog:
    """Turns a row that hangs into a worker death, which the guard knows how to survive.

    A decoder stuck in C code (a crafted file, a device that never ends) cannot be
    interrupted from Python, and one stuck row would keep the job from ever finishing. The
    stage arms the watchdog before each row; if the row is still running after
    `limit_s`, a daemon thread notes the cause in the ledger and kills the process with
    SIGKILL. Ray restarts the actor, the guard retries the batch row by row, and the row
    ends as `worker_died` with the cause in its message.
    """

    def __init__(self, limit_s: float, on_expire: Callable[[str], None], tick_s: float = 1.0) -> None:
        import threading

        self.limit_s = limit_s
        self.on_expire = on_expire
        self.tick_s = tick_s
        self._deadline: float | None = None
        self._label = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="pipeline-watchdog", daemon=True).start()

    def arm(self, label: str) -> None:
        import time

        with self._lock:
            self._deadline, self._label = time.monotonic() + self.limit_s, label

    def disarm(self) -> None:
        with self._lock:
            self._deadline = None

    def _watch(self) -> None:
        import time

        while True:
            time.sleep(self.tick_s)
            with self._lock:
                expired = self._deadline is not None and time.monotonic() > self._deadline
                label = self._label
                if expired:
                    self._deadline = None
            if expired:
                self.on_expire(label)


def kill_this_worker(guard: StageGuard, limit_s: float, setting: str) -> Callable[[str], None]:
    """The watchdog's action in a stage: note the cause for the row, then die."""

    def expire(row_id: str) -> None:
        text = f"it took longer than {setting}={limit_s:g} s, so its worker was stopped"
        logger.error("%s: row %r %s", guard.stage, row_id, text)
        guard.note_row(row_id, text)
        os.kill(os.getpid(), signal.SIGKILL)

    return expire
