"""Manifest contract: discovery, missing columns, null and duplicate ids, shards."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media import write_manifest

from pipeline.errors import JobError
from pipeline.readers.duplicates import DuplicateFinder
from pipeline.readers.manifest import check_ids, discover_files, plan_manifest, read_shard
from pipeline.spec import InputSpec


def rows(n: int, prefix: str = "id") -> list[dict]:
    return [{"id": f"{prefix}{i}", "uri": f"/data/{i}.jpg"} for i in range(n)]


def test_file_directory_and_glob(tmp_path: Path):
    write_manifest(tmp_path / "m" / "a.parquet", rows(3, "a"))
    write_manifest(tmp_path / "m" / "sub" / "b.parquet", rows(2, "b"))
    (tmp_path / "m" / "_ignored.parquet").write_bytes(b"not parquet")
    assert len(discover_files(str(tmp_path / "m" / "a.parquet"))) == 1
    assert len(discover_files(str(tmp_path / "m"))) == 2
    assert len(discover_files(str(tmp_path / "m" / "*.parquet"))) == 1
    plan = plan_manifest(InputSpec(manifest=str(tmp_path / "m")))
    assert plan.total_rows == 5
    check_ids(plan, None)


def test_nothing_found(tmp_path: Path):
    with pytest.raises(JobError, match="does not exist"):
        discover_files(str(tmp_path / "nope.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="no Parquet files"):
        discover_files(str(tmp_path / "empty"))


def test_missing_column_names_it_and_the_available_ones(tmp_path: Path):
    path = write_manifest(tmp_path / "m.parquet", [{"key": "a", "uri": "x"}])
    with pytest.raises(JobError, match=r"no column 'id' \(input.id_column\); its columns are: key, uri"):
        plan_manifest(InputSpec(manifest=str(path)))


def test_null_ids_are_named_by_row(tmp_path: Path):
    path = write_manifest(
        tmp_path / "m.parquet", [{"id": "a", "uri": "x"}, {"id": None, "uri": "y"}, {"id": "", "uri": "z"}]
    )
    plan = plan_manifest(InputSpec(manifest=str(path)))
    with pytest.raises(JobError, match=r"2 null or empty id\(s\): row 1 .*row 2"):
        check_ids(plan, None)


def test_duplicate_ids_are_named_up_to_ten(tmp_path: Path):
    data = rows(50) + rows(15)  # ids id0..id14 twice
    path = write_manifest(tmp_path / "m.parquet", data)
    plan = plan_manifest(InputSpec(manifest=str(path), rows_per_shard=7))
    with pytest.raises(JobError) as error:
        check_ids(plan, None)
    message = str(error.value)
    assert "15 duplicated id value(s)" in message
    assert len(re.findall(r"'id\d+'", message)) == 10


def test_duplicate_finder_spills_to_disk_and_confirms(tmp_path: Path):
    finder = DuplicateFinder(buffer_ids=100, spill_dir=str(tmp_path / "spill"))
    ids = [f"x{i}" for i in range(1000)] + ["x5", "x999"]
    for start in range(0, len(ids), 64):
        finder.add(pa.array(ids[start : start + 64]))
    found, total = finder.duplicates(lambda: [pa.array(ids)], limit=10)
    assert sorted(found) == ["x5", "x999"] and total == 2
    assert not (tmp_path / "spill").exists()


def test_corrupt_parquet_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(JobError, match=r"bad\.parquet is not a readable Parquet file"):
        plan_manifest(InputSpec(manifest=str(path)))


def test_shards_split_row_groups_and_read_back(tmp_path: Path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows(25)), path, row_group_size=10)
    plan = plan_manifest(InputSpec(manifest=str(path), rows_per_shard=4))
    assert [s.num_rows for s in plan.shards] == [4, 4, 2, 4, 4, 2, 4, 1]
    assert len({s.key for s in plan.shards}) == len(plan.shards)
    again = plan_manifest(InputSpec(manifest=str(path), rows_per_shard=4))
    assert [s.key for s in again.shards] == [s.key for s in plan.shards]
    ids = []
    for shard in plan.shards:
        ids += read_shard(shard, plan.columns, [], None).column("id").to_pylist()
    assert ids == [f"id{i}" for i in range(25)]


def test_relative_uris_resolve_against_the_manifest_folder(tmp_path: Path):
    path = write_manifest(
        tmp_path / "sub" / "m.parquet", [{"id": "a", "uri": "images/a.jpg"}, {"id": "b", "uri": "/abs.jpg"}]
    )
    plan = plan_manifest(InputSpec(manifest=str(path)))
    uris = read_shard(plan.shards[0], plan.columns, [], None).column("uri").to_pylist()
    assert uris == [f"{tmp_path}/sub/images/a.jpg", "/abs.jpg"]


def test_limit(tmp_path: Path):
    path = write_manifest(tmp_path / "m.parquet", rows(30))
    assert plan_manifest(InputSpec(manifest=str(path), limit=12, rows_per_shard=5)).total_rows == 12


def test_integer_ids_are_accepted_as_strings(tmp_path: Path):
    path = write_manifest(tmp_path / "m.parquet", [{"id": 7, "uri": "x"}, {"id": 8, "uri": "y"}])
    plan = plan_manifest(InputSpec(manifest=str(path)))
    check_ids(plan, None)
    assert read_shard(plan.shards[0], plan.columns, [], None).column("id").to_pylist() == ["7", "8"]
