"""The bad-input corpus (tests/data/corpus.py): every kind of odd row through one real job,
and every job-level mistake stopped before any work starts with one message.

The README's "Reliability" table documents the same cases and outcomes; a test keeps them
in step.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from data.corpus import (
    ANSWER,
    CORPUS_MAX_FILE_BYTES,
    JOB_CASES,
    JOB_ERROR,
    ROW_CASES,
    JobCase,
    build_row_corpus,
)
from reliability import assert_exactly_once

from pipeline.errors import ERROR_KINDS


def test_the_corpus_has_at_least_25_kinds_each_with_a_documented_outcome():
    names = [case.name for case in ROW_CASES] + [case.name for case in JOB_CASES]
    assert len(names) == len(set(names))
    assert len(ROW_CASES) >= 25 and len(JOB_CASES) >= 10
    for case in ROW_CASES:
        assert case.outcome == ANSWER or case.outcome in ERROR_KINDS, case


def readme_table() -> dict[str, str]:
    """Case name -> outcome, from the README's bad-input table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and (match := re.fullmatch(r"`([a-z0-9_]+)`", cells[0])):
            outcome = cells[2]
            if outcome.startswith("row error"):
                outcome = outcome.split("`")[1]
            elif outcome.startswith("job error"):
                outcome = JOB_ERROR
            rows[match.group(1)] = outcome
    return rows


def test_readme_documents_every_case_with_its_outcome():
    documented = readme_table()
    expected = {case.name: case.outcome for case in ROW_CASES} | {case.name: JOB_ERROR for case in JOB_CASES}
    assert documented == expected


@pytest.mark.slow
def test_every_bad_row_through_one_job(tmp_path: Path):
    corpus = build_row_corpus(tmp_path)
    output = tmp_path / "out"
    job = tmp_path / "corpus.json"
    job.write_text(
        json.dumps(
            {
                "name": "corpus",
                "input": {"manifest": str(corpus.manifest)},
                "task": {"max_new_tokens": 4},
                "preprocess": {
                    "workers": 1,
                    "max_tiles": 2,
                    "num_frames": 2,
                    "max_file_bytes": CORPUS_MAX_FILE_BYTES,
                    "fetch_retries": 1,
                },
                "model": {"name": "tiny-random", "batch_size": 4, "replicas": 1},
                "output": {"path": str(output)},
                "ray": {"address": "local"},
            }
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(job)],
        cwd=REPO,  # not the manifest folder: relative uris must resolve against the manifest, not the cwd
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    table = assert_exactly_once(output, list(corpus.expected))
    wrong = {}
    for row in table.to_pylist():
        expected = corpus.expected[row["id"]]
        if expected == ANSWER:
            ok = row["error"] is None and row["error_kind"] is None and row["text"] is not None
        else:
            ok = row["error_kind"] == expected and row["error"].startswith(f"{expected}: ") and row["text"] is None
        if not ok:
            wrong[corpus.case_of[row["id"]]] = (expected, row["error_kind"], row["error"])
    assert not wrong, wrong
    summary = json.loads((output / "_summary.json").read_text())
    errors = collections.Counter(kind for kind in corpus.expected.values() if kind != ANSWER)
    assert summary["errors_by_kind"] == dict(errors)
    assert summary["rows_ok"] == sum(1 for kind in corpus.expected.values() if kind == ANSWER)
    assert summary["rows_done"] == len(corpus.expected) and summary["rows_skipped_by_resume"] == 0
    assert summary["complete"] is True
    assert all(summary["stage_seconds"][stage] > 0 for stage in ("preprocess", "generate", "write"))
    assert summary["images_per_s"] > 0 and summary["rows_by_media_type"]["video"] >= 2
    assert "errors" in result.stdout and "skipped (resume)" in result.stdout  # the printed summary


def _job_case_spec(case: JobCase, folder: Path):
    from pipeline.spec import parse_spec

    manifest, overrides = case.build(folder)
    data: dict = {"input": {"manifest": manifest}, "output": {"path": str(folder / "out")}}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return parse_spec(data)


@pytest.mark.parametrize("case", JOB_CASES, ids=lambda case: case.name)
def test_job_level_mistakes_stop_before_any_work(case: JobCase, tmp_path: Path):
    from pipeline.errors import JobError
    from pipeline.runner import run
    from pipeline.spec import SpecError

    with pytest.raises((JobError, SpecError)) as failure:
        run(_job_case_spec(case, tmp_path))
    assert case.message in str(failure.value)
    assert not (tmp_path / "out").exists()  # nothing was written: the run never started


@pytest.mark.parametrize("name", ["manifest_not_parquet", "model_weights_truncated", "spec_unknown_key"])
def test_cli_prints_job_errors_as_one_message_and_exits_2(name: str, tmp_path: Path):
    case = next(case for case in JOB_CASES if case.name == name)
    manifest, overrides = case.build(tmp_path)
    sets = [f"{section}.{key}={value}" for section, values in overrides.items() for key, value in values.items()]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            str(REPO / "jobs" / "quickstart.yaml"),
            "--set",
            f"input.manifest={manifest}",
            "--set",
            f"output.path={tmp_path / 'out'}",
            "--set",
            "ray.address=local",
            *[arg for item in sets for arg in ("--set", item)],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and case.message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_readme_documents_every_error_kind():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert [kind for kind in ERROR_KINDS if f"| `{kind}` |" not in text] == []
