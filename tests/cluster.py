"""A real local Ray head for tests (`RAY_AUTH_MODE=token ray start --head`), started and
stopped by the test without touching any other Ray instance on the machine.

`ray stop` would stop every Ray process of the user; instead the head runs with its own
temp dir and ports, and teardown kills exactly the processes that mention that dir.
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
import urllib.request
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalHead:
    """A running head: its GCS address, its dashboard (job API) url, its temp dir."""

    gcs_address: str
    dashboard_url: str
    temp_dir: str
    process: subprocess.Popen
    env: dict[str, str]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.time() + 15
        while time.time() < deadline and self.process.poll() is None:
            time.sleep(0.2)
        for _ in range(3):
            pids = [
                int(p)
                for p in subprocess.run(["pgrep", "-f", self.temp_dir], capture_output=True, text=True).stdout.split()
            ]
            pids = [p for p in pids if p != os.getpid()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)


def start_head(num_cpus: int = 4, extra_env: dict[str, str] | None = None) -> LocalHead:
    """Start a token-authenticated head on free ports and wait until its job API answers."""
    # A head in token mode refuses to start without a token; make one if this user has none yet.
    subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=60)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    gcs_port = free_port()
    worker_low = 30000 + (gcs_port % 20) * 1000
    while worker_low <= gcs_port <= worker_low + 999:
        gcs_port = free_port()
        worker_low = 30000 + (gcs_port % 20) * 1000

    def port() -> int:
        """A free port outside this head's worker port range (Ray refuses overlaps)."""
        while True:
            candidate = free_port()
            if not worker_low <= candidate <= worker_low + 999:
                return candidate

    dashboard_port, client_port = port(), port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", **(extra_env or {})}
    # As in an activated virtualenv: a job's entrypoint `python -m pipeline ...` must find this
    # interpreter (with Ray and the project's dependencies), not whatever `python` PATH has first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    with open(os.path.join(temp_dir, "ray-start.log"), "wb") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                f"--port={gcs_port}",
                f"--dashboard-port={dashboard_port}",
                "--dashboard-host=127.0.0.1",
                f"--ray-client-server-port={client_port}",
                # The job agent's HTTP port defaults to 52365 for every head: with another head on this
                # machine it cannot bind, and job submissions get "No available agent" forever.
                f"--dashboard-agent-listen-port={port()}",
                f"--dashboard-agent-grpc-port={port()}",
                f"--runtime-env-agent-port={port()}",
                f"--metrics-export-port={port()}",
                f"--min-worker-port={worker_low}",
                f"--max-worker-port={worker_low + 999}",
                f"--num-cpus={num_cpus}",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = LocalHead(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", temp_dir, process, env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            with open(os.path.join(temp_dir, "ray-start.log"), errors="replace") as log:
                tail = log.read()[-2000:]
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=2):
                return head
        except OSError as error:
            if getattr(error, "code", None) in (401, 403):  # up, and asking for the token
                return head
            time.sleep(1)
    head.stop()
    raise RuntimeError("the Ray head did not come up within 120 s")
