"""The job spec: required keys, descriptions everywhere, unknown keys rejected, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline.spec import JobSpec, SpecError, load_spec, parse_spec, suggest_key

REQUIRED_KEYS = [
    "input.manifest",
    "input.id_column",
    "input.uri_column",
    "task.kind",
    "task.prompt",
    "task.max_new_tokens",
    "preprocess.max_tiles",
    "preprocess.use_thumbnail",
    "model.name",
    "model.batch_size",
    "model.replicas",
    "model.tensor_parallel",
    "model.dtype",
    "output.path",
    "output.mode",
    "output.include_prompt",
]


def all_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from all_fields(annotation, f"{prefix}{name}.")
        yield f"{prefix}{name}", field


def test_required_keys_exist():
    keys = {key for key, _ in all_fields(JobSpec)}
    assert set(REQUIRED_KEYS) <= keys


def test_every_field_has_a_description():
    missing = [key for key, field in all_fields(JobSpec) if not (field.description or "").strip()]
    assert missing == []


def minimal() -> dict:
    return {"input": {"manifest": "m.parquet"}, "output": {"path": "out"}}


def test_unknown_key_is_rejected_with_its_path():
    data = minimal()
    data["model"] = {"batchsize": 4}
    with pytest.raises(SpecError, match=r"model\.batchsize: unknown key"):
        parse_spec(data)


@pytest.mark.parametrize(
    ("loc", "meant"),
    [
        (("model", "batch_sise"), "model.batch_size"),  # a typo within the section
        (("inptu",), "input"),  # a misspelt section
        (("model", "num_frames"), "preprocess.num_frames"),  # the right key in the wrong section
        (("model", "num_frame"), "preprocess.num_frames"),  # both at once beats a weak match at home
        (("ray", "runtime_env", "pipp"), "ray.runtime_env.pip"),  # nested sections
        (("model", "xyz"), None),  # nothing close: no guess
    ],
)
def test_unknown_keys_suggest_the_closest_valid_key(loc: tuple[str, ...], meant: str | None):
    assert suggest_key(loc) == meant


def test_missing_required_key_is_named():
    with pytest.raises(SpecError, match=r"output: required"):
        parse_spec({"input": {"manifest": "m.parquet"}})


def test_overrides_apply_before_validation(tmp_path: Path):
    path = tmp_path / "job.yaml"
    path.write_text("input:\n  manifest: m.parquet\noutput:\n  path: out\n")
    spec = load_spec(path, ["model.batch_size=16", "output.mode=overwrite", "task.prompt=Say {title}."])
    assert spec.model.batch_size == 16
    assert spec.output.mode == "overwrite"
    assert spec.task.prompt == "Say {title}."
    with pytest.raises(SpecError, match=r"output\.mode"):
        load_spec(path, ["output.mode=sometimes"])
    with pytest.raises(SpecError, match="KEY=VALUE"):
        load_spec(path, ["model.batch_size"])


def test_defaults():
    spec = parse_spec(minimal())
    assert spec.output.mode == "resume"
    assert spec.model.name == "tiny-random"
    assert spec.model.trust_remote_code is False
    assert spec.output.include_prompt is False


def test_invalid_yaml_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
