"""The storage layer against a real S3 API on loopback: reads, row errors, retries, fail-fast
checks, and credentials kept out of job files and messages."""

from __future__ import annotations

import json
import os

import pytest
from s3 import FaultProxy, free_port

from pipeline.errors import RowError
from pipeline.readers.media import fetch_bytes
from pipeline.spec import SpecError, StorageSpec, parse_spec
from pipeline.storage import StorageError, check_bucket, make_dirs, probe, redact, reset_filesystems, s3_settings

KEYS = ["plain.jpg", "nested/deeper/with space.jpg", "ünïcödé/猫 photo (1).png", "a+b=c&d.jpg"]


def storage_at(endpoint: str, **extra) -> StorageSpec:
    return StorageSpec(endpoint_url=endpoint, **extra)


@pytest.fixture
def bucket(s3, request) -> str:
    name = "st-" + request.node.name.replace("_", "-")[:40].lower().strip("-")
    s3.bucket(name)
    return name


def test_settings_come_from_the_spec_then_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    from_env = s3_settings(StorageSpec())
    assert (from_env.endpoint_url, from_env.region) == ("http://127.0.0.1:9", "eu-west-3")
    from_spec = s3_settings(StorageSpec(endpoint_url="http://minio:9000", region="us-east-2"))
    assert (from_spec.endpoint_url, from_spec.region) == ("http://minio:9000", "us-east-2")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    assert s3_settings(None).endpoint_url == "http://127.0.0.1:10"


def test_reads_keys_with_spaces_unicode_and_nested_prefixes(s3, bucket):
    storage = storage_at(s3.endpoint)
    for index, key in enumerate(KEYS):
        s3.put(bucket, key, f"bytes of {index}".encode())
    for index, key in enumerate(KEYS):
        assert fetch_bytes(f"s3://{bucket}/{key}", storage) == f"bytes of {index}".encode()


def test_endpoint_from_aws_endpoint_url_only(s3, bucket, monkeypatch):
    s3.put(bucket, "only env/x.jpg", b"from env")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    assert fetch_bytes(f"s3://{bucket}/only env/x.jpg", None) == b"from env"
    assert fetch_bytes(f"s3://{bucket}/only env/x.jpg", StorageSpec()) == b"from env"


def row_error(uri: str, storage: StorageSpec, **kwargs) -> RowError:
    with pytest.raises(RowError) as caught:
        fetch_bytes(uri, storage, **kwargs)
    return caught.value


def test_per_object_problems_become_row_errors(s3, bucket):
    storage = storage_at(s3.endpoint)
    s3.put(bucket, "folder/inside.jpg", b"x")
    s3.put(bucket, "empty.jpg", b"")
    s3.put(bucket, "big.jpg", b"y" * 100)
    assert row_error(f"s3://{bucket}/no such key.jpg", storage).kind == "missing"
    missing_bucket = row_error("s3://no-such-bucket-here/x.jpg", storage)
    assert missing_bucket.kind == "missing" and "no-such-bucket-here" in missing_bucket.message
    assert row_error(f"s3://{bucket}/folder", storage).kind == "is_directory"
    assert row_error(f"s3://{bucket}/empty.jpg", storage).kind == "empty_file"
    assert row_error(f"s3://{bucket}/big.jpg", storage, max_bytes=99).kind == "too_large"
    assert fetch_bytes(f"s3://{bucket}/big.jpg", storage, max_bytes=100) == b"y" * 100
    assert row_error("gs://bucket/x.jpg", storage).kind == "unsupported_uri"


def test_access_denied_is_a_row_error(s3, bucket, monkeypatch):
    """moto's IAM enforcement: a user allowed to read one prefix only."""
    s3.put(bucket, "public/ok.jpg", b"fine")
    s3.put(bucket, "private/secret.jpg", b"forbidden")
    import boto3

    admin = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1")
    user = f"reader-{bucket}"
    admin.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/public/*"}],
    }
    admin.put_user_policy(UserName=user, PolicyName="public-only", PolicyDocument=json.dumps(policy))
    key = admin.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    reset_filesystems()
    s3.enforce_iam(0)
    try:
        storage = storage_at(s3.endpoint)
        assert fetch_bytes(f"s3://{bucket}/public/ok.jpg", storage) == b"fine"
        denied = row_error(f"s3://{bucket}/private/secret.jpg", storage)
        assert denied.kind == "access_denied"
        assert key["SecretAccessKey"] not in str(denied)
    finally:
        s3.enforce_iam(float("inf"))
        monkeypatch.undo()
        reset_filesystems()


def test_transient_failures_are_retried_with_backoff(s3, bucket):
    s3.put(bucket, "flaky one.jpg", b"eventually")
    s3.put(bucket, "dropped.jpg", b"after a reset")
    s3.put(bucket, "always down.jpg", b"never")
    failures = {f"{bucket}/flaky one.jpg": 2, f"{bucket}/dropped.jpg": 2}

    def rule(method: str, path: str):
        if path == f"{bucket}/always down.jpg":
            return 503
        if failures.get(path, 0) > 0:
            failures[path] -= 1
            return "drop" if "dropped" in path else 503
        return None

    proxy = FaultProxy(s3.endpoint, rule).start()
    try:
        # One attempt per client request, so the pipeline's own backoff loop does all the retrying.
        storage = storage_at(proxy.endpoint, max_attempts=1)
        assert fetch_bytes(f"s3://{bucket}/flaky one.jpg", storage, retries=5, backoff_s=0.01) == b"eventually"
        assert proxy.count("GET", f"{bucket}/flaky one.jpg") == 3
        assert fetch_bytes(f"s3://{bucket}/dropped.jpg", storage, retries=3, backoff_s=0.01) == b"after a reset"
        assert proxy.count("GET", f"{bucket}/dropped.jpg") == 3
        # A persistent failure: the client's and s3fs's own retries, then ours, then a row error.
        error = row_error(f"s3://{bucket}/always down.jpg", storage, retries=1, backoff_s=0.01)
        assert error.kind == "fetch_error" and "after 2 attempts" in error.message and "SlowDown" in error.message
        assert proxy.count("GET", f"{bucket}/always down.jpg") >= 2
    finally:
        proxy.stop()


def test_unreachable_endpoint(s3, bucket):
    closed = f"http://127.0.0.1:{free_port()}"
    storage = storage_at(closed, max_attempts=1)
    error = row_error(f"s3://{bucket}/x.jpg", storage, retries=1, backoff_s=0.01)
    assert error.kind == "fetch_error" and f"cannot reach the object store at {closed}" in error.message
    with pytest.raises(StorageError, match="cannot reach the object store at"):
        check_bucket(f"s3://{bucket}/out", storage)
    with pytest.raises(StorageError, match="cannot reach the object store at"):
        probe(f"s3://{bucket}/x.jpg", storage)


def test_bucket_checks_and_no_accidental_buckets(s3, bucket):
    storage = storage_at(s3.endpoint)
    check_bucket(f"s3://{bucket}/any/prefix", storage)
    with pytest.raises(StorageError, match=r"bucket 'missing-output-bucket' .* does not exist"):
        check_bucket("s3://missing-output-bucket/out", storage)
    probe(f"s3://{bucket}/not there.jpg", storage)  # a missing object is a row's problem, not the job's
    with pytest.raises(StorageError, match="does not exist"):
        probe("s3://missing-media-bucket/x.jpg", storage)
    make_dirs("s3://typo-bucket/out", storage)
    assert "typo-bucket" not in s3.buckets()


def test_no_credentials_is_named(s3, bucket, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    reset_filesystems()
    try:
        with pytest.raises(StorageError, match="no AWS credentials found"):
            check_bucket(f"s3://{bucket}/out", storage_at(s3.endpoint))
        error = row_error(f"s3://{bucket}/x.jpg", storage_at(s3.endpoint))
        assert error.kind == "access_denied" and "no AWS credentials" in error.message
    finally:
        monkeypatch.undo()
        reset_filesystems()


def test_redact_removes_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    text = "failed with wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY at https://user:hunter22@minio:9000/b"
    assert redact(text) == "failed with *** at https://***@minio:9000/b"


@pytest.mark.parametrize(
    "section",
    [
        {"storage": {"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG"}},
        {"storage": {"secret_key": "wJalrXUtnFEMI/K7MDENG"}},
        {"ray": {"runtime_env": {"env_vars": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG"}}}},
    ],
)
def test_credentials_in_a_job_file_are_refused_without_echo(section):
    data = {"input": {"manifest": "m.parquet"}, "output": {"path": "out"}, **section}
    with pytest.raises(SpecError) as caught:
        parse_spec(data, "job.yaml")
    assert "credentials never go in a job file" in str(caught.value)
    assert "wJalrXUtnFEMI" not in str(caught.value)


def test_endpoint_settings_are_not_secrets():
    spec = parse_spec(
        {
            "input": {"manifest": "m.parquet"},
            "output": {"path": "out"},
            "storage": {"endpoint_url": "http://minio:9000", "region": "us-east-1"},
            "ray": {"runtime_env": {"env_vars": {"AWS_ENDPOINT_URL": "http://minio:9000"}}},
        }
    )
    assert spec.storage.endpoint_url == "http://minio:9000"
    assert os.environ.get("AWS_SECRET_ACCESS_KEY")  # the session's fake credentials are in place
