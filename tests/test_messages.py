"""Golden tests of the messages people see for the most common mistakes.

Each case makes the mistake for real (a YAML file, a Parquet manifest, an output written
by an earlier job) and compares the whole message, word for word: a message that names
the field, file or rows at fault and the fix is a feature, and a change to it should be
deliberate. One case also goes through the CLI: one line on stderr, exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from pipeline.errors import JobError
from pipeline.runner import check_job
from pipeline.spec import SpecError, load_spec


def write_job(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def message(job: Path) -> str:
    with pytest.raises((SpecError, JobError)) as caught:
        check_job(load_spec(job))
    return str(caught.value)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "uri": ["a.jpg", "b.jpg"]}), path)
    return path


def test_unknown_spec_key(tmp_path: Path, manifest: Path):
    job = write_job(
        tmp_path, "typo.yaml", f"input:\n  manifest: {manifest}\nmodel:\n  batchsize: 8\noutput:\n  path: out\n"
    )
    assert message(job) == (
        f"{job}: the job spec is invalid:\n"
        "  model.batchsize: unknown key; did you mean `model.batch_size`? (`python -m pipeline spec` lists every key)"
    )


def test_unknown_spec_keys_misplaced_or_unlike_any(tmp_path: Path, manifest: Path):
    job = write_job(
        tmp_path,
        "misplaced.yaml",
        f"input:\n  manifest: {manifest}\nmodel:\n  num_frames: 16\n  xyz: 1\noutput:\n  path: out\n",
    )
    assert message(job) == (
        f"{job}: the job spec is invalid:\n"
        "  model.num_frames: unknown key; did you mean `preprocess.num_frames`? (`python -m pipeline spec` lists "
        "every key)\n"
        "  model.xyz: unknown key (check the spelling; `python -m pipeline spec` lists every key)"
    )


def test_missing_manifest_column(tmp_path: Path):
    manifest = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"id": ["a"], "path": ["a.jpg"]}), manifest)
    job = write_job(tmp_path, "job.yaml", f"input:\n  manifest: {manifest}\noutput:\n  path: out\n")
    assert message(job) == (
        f"{manifest}: the manifest has no column 'uri' (input.uri_column); its columns are: id, path. "
        "Set input.uri_column to the right column name."
    )


def test_duplicate_ids(tmp_path: Path):
    manifest = tmp_path / "dups.parquet"
    pq.write_table(
        pa.table({"id": ["a", "b", "a", "c", "b"], "uri": ["1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"]}), manifest
    )
    job = write_job(tmp_path, "job.yaml", f"input:\n  manifest: {manifest}\noutput:\n  path: out\n")
    assert message(job) == (
        "input.manifest: column 'id' (input.id_column) has 2 duplicated id value(s), e.g. 'a', 'b'. "
        "Every id must be unique (the output has one row per id): deduplicate the manifest, or set input.id_column "
        "to a column whose values are unique."
    )


def test_null_ids(tmp_path: Path):
    manifest = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"id": ["a", None, ""], "uri": ["1.jpg", "2.jpg", "3.jpg"]}), manifest)
    job = write_job(tmp_path, "job.yaml", f"input:\n  manifest: {manifest}\noutput:\n  path: out\n")
    assert message(job) == (
        "input.manifest: column 'id' (input.id_column) has 2 null or empty id(s): "
        f"row 1 of row group 0 in {manifest}; row 2 of row group 0 in {manifest}. Every row needs a unique, "
        "non-empty id: fill in those ids or drop those rows in the manifest, or set input.id_column to a column "
        "without gaps."
    )


def test_custom_template_names_a_missing_column(tmp_path: Path, manifest: Path):
    job = write_job(
        tmp_path,
        "custom.yaml",
        f"input:\n  manifest: {manifest}\ntask:\n  kind: custom\n  prompt: 'Describe {{subject}} as {{style}}'\n"
        "output:\n  path: out\n",
    )
    assert message(job) == (
        f"task.prompt names column(s) {{subject}}, {{style}} that the manifest {manifest} does not have; "
        "its columns are: id, uri. Add the column(s) to the manifest or fix the names in task.prompt (write a literal "
        "brace as {{ or }})"
    )


def test_resume_with_a_changed_model(tmp_path: Path, manifest: Path):
    from pipeline.resume import prepare_output

    out = tmp_path / "out"
    first = write_job(tmp_path, "first.yaml", f"input:\n  manifest: {manifest}\noutput:\n  path: {out}\n")
    checked = check_job(load_spec(first))
    prepare_output(checked.spec, checked.plan)  # what the first run leaves behind: _job.json ...
    (out / checked.plan.shards[0].key).mkdir()  # ... and some results
    with pytest.raises(JobError) as caught:
        check_job(load_spec(first, ["model.name=none"]))
    assert str(caught.value) == (
        f"output.path {out} holds results of a different job (model.name: 'tiny-random' -> 'none'). "
        "Resuming would mix answers of two configurations. Use a new output.path, or set output.mode: overwrite "
        "to start over."
    )


class ActorStartFailed(RuntimeError):
    """Stands in for Ray's error when an actor's constructor raised (no cluster needed)."""

    actor_init_failed = True


def test_actors_that_cannot_start_say_what_to_do():
    from pipeline.runner import explain_failure

    cause = RuntimeError("size mismatch for <torch.nn.Linear object at 0x7f00aa> weight")
    wrapped = ActorStartFailed("MapBatches(GenerateStage) died")
    wrapped.__cause__ = cause
    assert str(explain_failure(wrapped, 0)) == (
        "the pipeline's actors (GenerateStage) could not start: RuntimeError: size mismatch for weight. Nothing "
        "was written; fix the cause (the actor's log under the Ray session's logs folder has the full traceback) "
        "and re-run"
    )
    ours = ActorStartFailed("MapBatches(GenerateStage) died")
    ours.__cause__ = JobError("model.dtype: float16 is not supported on CPU; use float32 or bfloat16")
    assert str(explain_failure(ours, 0)) == (
        "the pipeline's actors (GenerateStage) could not start: model.dtype: float16 is not supported on CPU; use "
        "float32 or bfloat16"
    )


def test_cli_prints_one_line_and_exits_2(tmp_path: Path):
    manifest = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"id": ["a"], "path": ["a.jpg"]}), manifest)
    job = write_job(tmp_path, "job.yaml", f"input:\n  manifest: {manifest}\noutput:\n  path: out\n")
    result = run_cli("validate", str(job), timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: {manifest}: the manifest has no column 'uri' (input.uri_column); its columns are: id, path. "
        "Set input.uri_column to the right column name.\n"
    )


def test_unreachable_object_store_is_one_line_not_a_traceback(tmp_path: Path):
    from cluster import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    job = write_job(
        tmp_path,
        "s3.yaml",
        f"input:\n  manifest: s3://bucket/manifest.parquet\nstorage:\n  endpoint_url: {endpoint}\n"
        "output:\n  path: out\n",
    )
    result = run_cli(
        "validate", str(job), env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: input.manifest: cannot read s3://bucket/manifest.parquet: cannot reach the object store at "
        f"{endpoint} (EndpointConnectionError: Could not connect "
    )
    assert result.stderr.endswith("Check storage.endpoint_url (or AWS_ENDPOINT_URL) and the network\n")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
