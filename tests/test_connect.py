"""Which Ray a run joins: a recorded cluster only if it answers; a dead address fails at once."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cluster import free_port
from conftest import run_cli

from pipeline.runner import answers, cluster_started_here


def test_answers_only_where_something_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert answers(f"127.0.0.1:{server.getsockname()[1]}")
    assert not answers(f"127.0.0.1:{free_port()}")


def test_ipv6_literals_are_probed_without_brackets() -> None:
    try:
        server = socket.socket(socket.AF_INET6)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        server.listen()
        assert answers(f"[::1]:{server.getsockname()[1]}")


def test_other_address_forms_are_left_to_ray() -> None:
    assert answers("ray://head.example:10001")
    assert answers("http://head.example:8265")
    assert answers("auto")


def test_a_stale_record_of_a_killed_head_counts_as_no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray._private.services as services

    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: dead)
    assert cluster_started_here() is None
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    assert cluster_started_here() is None


def test_an_address_where_nothing_listens_fails_at_once_naming_the_field(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run_cli(
        "run", "jobs/quickstart.yaml", "--set", f"output.path={tmp_path / 'out'}", "--set", f"ray.address={address}"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: ray.address: nothing answers at {address} (waited 3 s).")
    assert "ray.address: local" in result.stderr
