"""A real local Ray head for tests (`RAY_AUTH_MODE=token ray start --head`), started and
stopped by the test without touching any other Ray instance on the machine.

`ray stop` would stop every Ray process of the user; instead the head runs with its own
temp dir and ports, and teardown kills exactly its process group and the processes that
mention that dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from reliability import kill_all

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A port nothing listens on now (bound, then released), for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Seconds a stopping head gets to exit on SIGTERM before what is left of it is killed.
STOP_GRACE_S = 2.0


@dataclass
class LocalHead:
    """A running head: its GCS address, its dashboard (job API) url, its temp dir."""

    gcs_address: str
    dashboard_url: str
    temp_dir: str
    process: subprocess.Popen
    env: dict[str, str]

    def stop(self) -> None:
        """SIGTERM to the head's process group, then SIGKILL to what is left of it after a short
        grace. On SIGTERM the dashboard and its agents exit at once, but the raylet takes ~13 s
        and the GCS and `ray start` ~33 s (measured on the 2-core machine, 2026-12-03): waiting
        for them would only add to every test that owns a head."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for _ in range(3):  # processes that left the group but still name the head's temp dir
            found = subprocess.run(["pgrep", "-f", self.temp_dir], capture_output=True, text=True).stdout.split()
            pids = [int(p) for p in found if int(p) != os.getpid()]
            if not pids:
                break
            kill_all(pids)
            time.sleep(0.5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


START_ATTEMPTS = 3


class HeadExited(RuntimeError):
    """`ray start` exited before its head could take jobs; the message carries its output."""


def start_head(num_cpus: int = 4, extra_env: dict[str, str] | None = None) -> LocalHead:
    """Start a token-authenticated head on free ports and wait until its job API answers.

    The ports are free when chosen, but another process (another test's Ray, on the other
    xdist worker) may bind one before `ray start` does, and `ray start` then exits at once
    (its port check). Such a start is retried on fresh ports, up to `START_ATTEMPTS` times;
    a head that starts but never takes jobs is not retried."""
    # A head in token mode refuses to start without a token; make one if this user has none yet.
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=60)
    for _ in range(START_ATTEMPTS - 1):
        with contextlib.suppress(HeadExited):
            return _start_head_once(num_cpus, extra_env)
    return _start_head_once(num_cpus, extra_env)  # the last attempt's error is the test's


def _start_head_once(num_cpus: int, extra_env: dict[str, str] | None) -> LocalHead:
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    # Every component on its own free port: several heads (other tests, other users) may run at once,
    # and a clash on a default port (e.g. the dashboard agent's 52365) leaves the head unable to take jobs.
    ports = {
        name: free_port()
        for name in (
            "port",
            "dashboard-port",
            "ray-client-server-port",
            "node-manager-port",
            "object-manager-port",
            "runtime-env-agent-port",
            "dashboard-agent-grpc-port",
            "dashboard-agent-listen-port",
            "metrics-export-port",
        )
    }
    env = {**os.environ, "RAY_AUTH_MODE": "token", **(extra_env or {})}
    # Jobs run `python ...` from the head's PATH: make it this interpreter's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    output = Path(temp_dir) / "ray-start.out"  # `ray start`'s own words, for the error if it exits
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                "--dashboard-host=127.0.0.1",
                *(f"--{name}={port}" for name, port in ports.items()),
                f"--num-cpus={num_cpus}",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = LocalHead(
        f"127.0.0.1:{ports['port']}", f"http://127.0.0.1:{ports['dashboard-port']}", temp_dir, process, env
    )
    try:
        _wait_for_job_agent(head, process, output)
    except BaseException:
        head.stop()
        raise
    return head


def _wait_for_job_agent(head: LocalHead, process: subprocess.Popen, output: Path, timeout_s: float = 180) -> None:
    """The dashboard answers before the head's job agent is ready ("No available agent to submit
    job"); a trivial job that runs to the end proves the head can take real submissions."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.time() + timeout_s
    last = "nothing tried"
    while time.time() < deadline:
        if process.poll() is not None:
            said = output.read_text(errors="replace")[-2000:]
            raise HeadExited(f"ray start exited with {process.returncode}:\n{said}")
        try:
            client = JobSubmissionClient(head.dashboard_url, headers=headers)
            job = client.submit_job(entrypoint="python -c pass")
            while time.time() < deadline:
                status = client.get_job_status(job)
                if status == JobStatus.SUCCEEDED:
                    return
                if status in (JobStatus.FAILED, JobStatus.STOPPED):
                    last = f"probe job {status}: {client.get_job_logs(job)[-500:]}"
                    break
                time.sleep(0.5)
        except (OSError, RuntimeError, ConnectionError) as error:
            if getattr(error, "code", None) not in (None, 401, 403, 500, 502, 503):
                raise
            last = f"{type(error).__name__}: {error}"
        time.sleep(1)
    raise RuntimeError(f"the Ray head did not accept jobs within {timeout_s:.0f} s (last: {last})")
