"""Exactly-once bookkeeping without a cluster: atomic writes, verified shard seals, crash
leftovers, fingerprints, foreign folders, the lease, the crash guard, and the same on a real
S3 API (moto server on loopback)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media import write_manifest

from pipeline.errors import JobError
from pipeline.lease import LEASE_FILE, Lease, LeaseRecord
from pipeline.readers.manifest import plan_manifest
from pipeline.resume import (
    check_resumable,
    done_shards,
    pending_shards,
    prepare_output,
    seal_shard,
    shard_ids,
    written_ids,
)
from pipeline.spec import parse_spec
from pipeline.writers.parquet import ParquetWriter, part_name, write_local_atomically


def rows_table(ids: list[str], text: str = "t") -> pa.Table:
    return pa.table({"id": ids, "text": [f"{text}-{i}" for i in ids]})


def write_part(folder: Path, ids: list[str], text: str = "t") -> Path:
    path = folder / part_name(ids)
    ParquetWriter().write_table(rows_table(ids, text), str(path))
    return path


def spec_for(tmp_path: Path, rows: int = 30, **sections):
    manifest = tmp_path / "manifest.parquet"
    if not manifest.exists():
        write_manifest(manifest, [{"id": f"r{i:03d}", "uri": f"/x/{i}.jpg"} for i in range(rows)])
    data: dict = {"input": {"manifest": str(manifest)}, "output": {"path": str(tmp_path / "out")}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    from pipeline.prompts.tasks import resolve_spec

    return resolve_spec(parse_spec(data))


# --- file names and atomic writes ---------------------------------------------------------


def test_part_names_follow_the_set_of_ids_and_never_collide():
    assert part_name(["b", "a"]) == part_name(["a", "b"])
    assert part_name(["a\nb"]) != part_name(["a", "b"])  # ids may hold any character
    assert part_name(["a", "b\x00"]) != part_name(["a\x00", "b"])
    assert part_name(["x" * 5000]).startswith("part-") and len(part_name(["x" * 5000])) < 64


def test_local_write_is_atomic_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "shard" / "part-a.parquet"
    ParquetWriter().write_table(rows_table(["1", "2"]), str(target))
    ParquetWriter().write_table(rows_table(["1", "2"], "again"), str(target))  # a retried write replaces
    assert pq.read_table(target).column("text").to_pylist() == ["again-1", "again-2"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["part-a.parquet"]
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):  # cannot replace a directory: the write fails and cleans up
        write_local_atomically(str(tmp_path / "taken"), b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard", "taken"]


def test_crash_leftovers_are_never_counted_and_are_cleaned_up(tmp_path: Path):
    spec = spec_for(tmp_path, rows=6)
    plan = plan_manifest(spec.input)
    shard = plan.shards[0]
    folder = tmp_path / "out" / shard.key
    folder.mkdir(parents=True)
    write_part(folder, ["r000", "r001", "r002"])
    stale = folder / ".tmp-0123-part-x.parquet"  # a write cut off by a crash long ago
    stale.write_bytes(b"PAR1 half a file")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = folder / ".tmp-4567-part-y.parquet"  # a write that may still be going
    fresh.write_bytes(b"PAR1")
    (folder / part_name(["r003"])).write_bytes(b"not parquet: a disk that lost data")
    assert sorted(written_ids(str(tmp_path / "out"), shard.key, None).to_pylist()) == ["r000", "r001", "r002"]
    assert [p.name.startswith(".corrupt-") for p in folder.iterdir()].count(True) == 1  # moved aside
    assert pq.read_table(tmp_path / "out").num_rows == 3  # readers see whole files only
    write_part(folder, ["r003", "r004", "r005"])
    result = seal_shard(str(tmp_path / "out"), shard, shard_ids(shard, "id", None), None)
    assert result.sealed and result.temps_removed == 1
    assert not stale.exists() and fresh.exists()


def test_seal_removes_rows_written_twice_and_verifies_every_id(tmp_path: Path):
    spec = spec_for(tmp_path, rows=15)
    shard = plan_manifest(spec.input).shards[0]
    folder = tmp_path / "out" / shard.key
    folder.mkdir(parents=True)
    ids = [f"r{i:03d}" for i in range(15)]
    for group in (ids[0:10], ids[5:15], ids[0:5]):  # e.g. two runs that overlapped
        write_part(folder, group)
    result = seal_shard(str(tmp_path / "out"), shard, pa.array(ids), None)
    assert result.sealed and result.duplicates_removed == 10
    table = pq.read_table(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == ids
    assert (folder / "_SUCCESS-15").exists()
    assert done_shards(str(tmp_path / "out"), None) == {shard.key: 15}


def test_seal_refuses_a_shard_with_missing_rows(tmp_path: Path):
    spec = spec_for(tmp_path, rows=4)
    shard = plan_manifest(spec.input).shards[0]
    folder = tmp_path / "out" / shard.key
    folder.mkdir(parents=True)
    write_part(folder, ["r000", "r001"])
    result = seal_shard(str(tmp_path / "out"), shard, shard_ids(shard, "id", None), None)
    assert not result.sealed and result.missing == 2
    assert done_shards(str(tmp_path / "out"), None) == {}


def test_a_marker_covers_its_row_count_so_a_grown_limit_is_finished(tmp_path: Path):
    trial = plan_manifest(spec_for(tmp_path, rows=30, input={"limit": 10}).input)
    shard = trial.shards[0]
    folder = tmp_path / "out" / shard.key
    folder.mkdir(parents=True)
    write_part(folder, [f"r{i:03d}" for i in range(10)])
    assert seal_shard(str(tmp_path / "out"), shard, shard_ids(shard, "id", None), None).sealed
    done = done_shards(str(tmp_path / "out"), None)
    assert pending_shards(trial, done) == []
    full = plan_manifest(spec_for(tmp_path, rows=30).input)
    assert [s.key for s in pending_shards(full, done)] == [shard.key]  # same shard, more rows now


# --- fingerprint and output ownership ------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"name": "dummy:InternVL3-1B"}}, "model.name"),
        ({"task": {"prompt": "Count the cats."}}, "task.prompt"),
        ({"input": {"rows_per_shard": 7}}, "input.rows_per_shard"),
    ],
)
def test_resume_with_other_answers_is_refused_naming_the_field(tmp_path: Path, change: dict, field: str):
    spec = spec_for(tmp_path)
    plan = plan_manifest(spec.input)
    prepare_output(spec, plan)
    (tmp_path / "out" / plan.shards[0].key).mkdir()  # the output holds results
    changed = spec_for(tmp_path, **change)
    with pytest.raises(JobError, match=f"holds results of a different job \\({field}: "):
        check_resumable(changed, plan_manifest(changed.input))
    with pytest.raises(JobError, match=field):
        prepare_output(changed, plan_manifest(changed.input))
    overwrite = spec_for(tmp_path, **change, output={"mode": "overwrite"})
    prepare_output(overwrite, plan_manifest(overwrite.input))  # overwrite starts clean instead
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_job.json"]
    assert json.loads((tmp_path / "out" / "_job.json").read_text())["fingerprint"][field] is not None


def test_a_dummy_model_of_another_depth_is_another_model(tmp_path: Path):
    spec = spec_for(tmp_path, model={"name": "dummy:InternVL3-1B", "dummy_layers": 1})
    plan = plan_manifest(spec.input)
    prepare_output(spec, plan)
    (tmp_path / "out" / plan.shards[0].key).mkdir()  # the output holds results
    deeper = spec_for(tmp_path, model={"name": "dummy:InternVL3-1B", "dummy_layers": 2})
    with pytest.raises(JobError, match=r"different job \(model\.dummy_layers: 1 -> 2\)"):
        check_resumable(deeper, plan_manifest(deeper.input))
    check_resumable(spec, plan)  # the same depth resumes


def test_sampling_with_another_seed_is_another_job_but_greedy_ignores_the_seed(tmp_path: Path):
    sampled = spec_for(tmp_path, task={"temperature": 0.7, "seed": 1})
    plan = plan_manifest(sampled.input)
    prepare_output(sampled, plan)
    (tmp_path / "out" / plan.shards[0].key).mkdir()  # the output holds results
    reseeded = spec_for(tmp_path, task={"temperature": 0.7, "seed": 2})
    with pytest.raises(JobError, match=r"different job \(task\.seed: 1 -> 2\)"):
        check_resumable(reseeded, plan_manifest(reseeded.input))

    (tmp_path / "greedy").mkdir()
    greedy = spec_for(tmp_path / "greedy", task={"seed": 1})
    plan = plan_manifest(greedy.input)
    prepare_output(greedy, plan)
    (tmp_path / "greedy" / "out" / plan.shards[0].key).mkdir()
    check_resumable(spec_for(tmp_path / "greedy", task={"seed": 2}), plan)  # greedy answers ignore the seed


def test_an_old_fingerprint_without_dummy_layers_still_resumes(tmp_path: Path):
    spec = spec_for(tmp_path)
    plan = plan_manifest(spec.input)
    prepare_output(spec, plan)
    (tmp_path / "out" / plan.shards[0].key).mkdir()
    job = tmp_path / "out" / "_job.json"
    written = json.loads(job.read_text())
    del written["fingerprint"]["model.dummy_layers"]  # as written before the key existed
    job.write_text(json.dumps(written))
    check_resumable(spec, plan)


def test_a_job_that_wrote_nothing_may_change_its_settings(tmp_path: Path):
    spec = spec_for(tmp_path)
    prepare_output(spec, plan_manifest(spec.input))
    changed = spec_for(tmp_path, task={"prompt": "Count the cats."})
    check_resumable(changed, plan_manifest(changed.input))  # e.g. the model failed to load: fix and go on


@pytest.mark.parametrize("mode", ["resume", "overwrite"])
def test_a_folder_this_pipeline_did_not_write_is_never_touched(tmp_path: Path, mode: str):
    precious = tmp_path / "out" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    spec = spec_for(tmp_path, output={"mode": mode})
    with pytest.raises(JobError, match=r"not empty .* and was not written by this pipeline"):
        prepare_output(spec, plan_manifest(spec.input))
    assert precious.read_text() == "years of work"


def test_overwrite_empties_the_output_but_keeps_the_lease(tmp_path: Path):
    spec = spec_for(tmp_path)
    plan = plan_manifest(spec.input)
    prepare_output(spec, plan)
    write_part(tmp_path / "out" / plan.shards[0].key, ["r000"])
    (tmp_path / "out" / "_SUCCESS").write_text("")
    (tmp_path / "out" / LEASE_FILE).write_text("{}")
    overwrite = spec_for(tmp_path, output={"mode": "overwrite"})
    prepare_output(overwrite, plan, keep=(LEASE_FILE,))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_job.json", LEASE_FILE]


# --- the lease --------------------------------------------------------------------------------


def write_lease(output: Path, **fields) -> None:
    import psutil

    record = {
        "run_id": "other",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": psutil.Process().create_time(),
        "started_at": time.time(),
        "heartbeat_at": time.time(),
        **fields,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / LEASE_FILE).write_text(json.dumps(record))


def test_a_second_run_on_a_live_output_is_refused(tmp_path: Path):
    write_lease(tmp_path / "out")  # held by this very process: alive
    with pytest.raises(JobError, match=r"being written by another run \(run other on host .*, pid \d+"):
        Lease(str(tmp_path / "out"), None).acquire()


@pytest.mark.parametrize(
    "fields",
    [
        {"pid": 2**22 + 12345},  # same host, no such process: a driver killed with SIGKILL
        {"pid_started": 1.0},  # same host, the pid was reused by another process
        {"host": "elsewhere", "heartbeat_at": time.time() - 3600},  # another host, silent for an hour
    ],
    ids=["dead-pid", "reused-pid", "stale-heartbeat"],
)
def test_the_lease_of_a_gone_run_is_taken_over(tmp_path: Path, fields: dict):
    write_lease(tmp_path / "out", **fields)
    lease = Lease(str(tmp_path / "out"), None)
    lease.acquire()
    try:
        assert lease.read() == lease.record
        lease.check()
    finally:
        lease.release()
    assert not (tmp_path / "out" / LEASE_FILE).exists()


def test_a_fresh_heartbeat_from_another_host_is_respected(tmp_path: Path):
    write_lease(tmp_path / "out", host="elsewhere", pid=1)
    with pytest.raises(JobError, match="host elsewhere"):
        Lease(str(tmp_path / "out"), None).acquire()


def test_a_run_whose_lease_was_taken_stops(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("pipeline.lease.HEARTBEAT_S", 0.05)
    lease = Lease(str(tmp_path / "out"), None)
    lease.acquire()
    try:
        write_lease(tmp_path / "out", run_id="usurper")
        deadline = time.time() + 10
        while lease.lost is None and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(JobError, match="another run took over"):
            lease.check()
    finally:
        lease.release()
    assert LeaseRecord(**json.loads((tmp_path / "out" / LEASE_FILE).read_text())).run_id == "usurper"


# --- progress counting and the crash guard -----------------------------------------------------


def test_a_file_reported_twice_is_counted_once():
    from pipeline.actors.write import STATS_SCHEMA
    from pipeline.progress import RunTracker

    def stats(file: str, rows: int) -> pa.Table:
        row = {name: 0 for name in STATS_SCHEMA.names} | {
            "shard": "s",
            "file": file,
            "shard_todo": 20,
            "rows": rows,
            "error_kinds": "{}",
            "media_types": "{}",
            "preprocess_s": 0.0,
            "generate_s": 0.0,
            "write_s": 0.0,
            "written_at": time.time(),
            "gpu_peak_bytes": "{}",
        }
        return pa.Table.from_pylist([row], schema=STATS_SCHEMA)

    tracker = RunTracker(total_rows=20, pending_rows=20)
    assert tracker.update(stats("part-a", 10)) == []
    assert tracker.update(stats("part-a", 10)) == []  # a retried write task: not a second file
    assert tracker.update(stats("part-b", 10)) == ["s"]
    assert tracker.rows == 20 and tracker.files == 2 and tracker.repeated_reports == 1


def guarded(process, max_retries: int = 1):
    from pipeline.actors.guard import CrashLedger, StageGuard

    def fail(rows: pa.Table, kind: str, message: str) -> pa.Table:
        return pa.table({"id": rows.column("id"), "out": [f"{kind}: {message}"] * rows.num_rows})

    ledger = CrashLedger()
    return StageGuard("test", process, fail, ledger, max_retries), ledger


def batch_of(*ids: str) -> pa.Table:
    return pa.table({"id": list(ids)})


def test_an_unexpected_exception_costs_only_its_row():
    def process(batch: pa.Table) -> pa.Table:
        if "bad" in batch.column("id").to_pylist():
            raise KeyError("a case nobody foresaw")
        return pa.table({"id": batch.column("id"), "out": ["ok"] * batch.num_rows})

    guard, ledger = guarded(process)
    out = guard(batch_of("a", "bad", "c")).to_pylist()
    assert [row["out"] for row in out] == [
        "ok",
        "internal_error: in the test stage: KeyError: 'a case nobody foresaw'",
        "ok",
    ]
    assert ledger.size() == 0  # nothing stays in the ledger once decided


def test_a_batch_whose_worker_died_is_redone_row_by_row_and_a_poison_row_gives_up():
    from pipeline.actors.guard import StageGuard  # noqa: F401  (the guard under test)
    from pipeline.writers.parquet import ids_digest

    calls: list[list[str]] = []

    def process(batch: pa.Table) -> pa.Table:
        calls.append(batch.column("id").to_pylist())
        return pa.table({"id": batch.column("id"), "out": ["ok"] * batch.num_rows})

    guard, ledger = guarded(process, max_retries=1)
    # What the ledger holds after the worker died twice on this batch, the second time on row "p"
    # (a process that dies cannot record anything; these are the counts its attempts left).
    ledger.attempts[f"test/batch/{ids_digest(['a', 'p', 'c'])}"] = 2
    ledger.attempts[f"test/row/{ids_digest(['p'])}"] = 1
    out = guard(batch_of("a", "p", "c")).to_pylist()
    assert calls == [["a"], ["c"]]  # row by row; "p" is not tried a third time
    assert out[0]["out"] == "ok" and out[2]["out"] == "ok"
    assert out[1]["out"].startswith("worker_died: the test worker process died 2 time(s)")
    assert ledger.size() == 0


# --- the same on a real S3 API -----------------------------------------------------------------


@pytest.fixture
def s3_bucket(s3, monkeypatch):
    """A bucket of the session's S3 API on loopback, reached through AWS_ENDPOINT_URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    from pipeline.storage import _s3_filesystem

    _s3_filesystem.cache_clear()
    yield f"s3://{s3.bucket('resume-results')}"
    _s3_filesystem.cache_clear()


def test_the_same_bookkeeping_on_s3(tmp_path: Path, s3_bucket: str):
    import s3fs

    spec = spec_for(tmp_path, rows=6, output={"path": f"{s3_bucket}/job"})
    plan = plan_manifest(spec.input)
    shard = plan.shards[0]
    lease = Lease(spec.output.path, None)
    lease.acquire()
    prepare_output(spec, plan, keep=(LEASE_FILE,))
    writer = ParquetWriter()
    for group in (["r000", "r001", "r002"], ["r002", "r003", "r004", "r005"]):
        writer.write_table(rows_table(group), f"{spec.output.path}/{shard.key}/{part_name(group)}")
    assert sorted(written_ids(spec.output.path, shard.key, None).to_pylist()) == [
        "r000",
        "r001",
        "r002",
        "r002",
        "r003",
        "r004",
        "r005",
    ]
    result = seal_shard(spec.output.path, shard, shard_ids(shard, "id", None), None)
    assert result.sealed and result.duplicates_removed == 1
    assert done_shards(spec.output.path, None) == {shard.key: 6}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    folder = spec.output.path.removeprefix("s3://")
    files = [p for p in fs.find(folder) if p.rsplit("/", 1)[-1].startswith("part-")]
    ids = sorted(i for f in files for i in pq.read_table(fs.open(f, "rb")).column("id").to_pylist())
    assert ids == [f"r{i:03d}" for i in range(6)]
    with pytest.raises(JobError, match="being written by another run"):
        Lease(spec.output.path, None).acquire()
    lease.release()
    assert not fs.exists(f"{folder}/{LEASE_FILE}")


def test_a_hanging_row_trips_the_watchdog_and_a_finished_one_does_not():
    from pipeline.actors.guard import Watchdog

    expired: list[str] = []
    watchdog = Watchdog(0.3, expired.append, tick_s=0.05)
    watchdog.arm("quick")
    watchdog.disarm()
    time.sleep(0.5)
    assert expired == []
    watchdog.arm("stuck")
    deadline = time.time() + 10
    while not expired and time.time() < deadline:
        time.sleep(0.05)
    assert expired == ["stuck"]


def test_the_cause_noted_before_a_death_reaches_the_row_error():
    from pipeline.writers.parquet import ids_digest

    def process(batch: pa.Table) -> pa.Table:
        return pa.table({"id": batch.column("id"), "out": ["ok"] * batch.num_rows})

    guard, ledger = guarded(process, max_retries=0)
    ledger.attempts[f"test/batch/{ids_digest(['slow'])}"] = 1  # its worker was stopped once
    guard.note_row("slow", "it took longer than preprocess.row_timeout_s=300 s, so its worker was stopped")
    out = guard(batch_of("slow")).to_pylist()
    assert out[0]["out"] == (
        "worker_died: the test worker process died 1 time(s) while working on this row (it took longer than "
        "preprocess.row_timeout_s=300 s, so its worker was stopped); retries allowed: 0"
    )
