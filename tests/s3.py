"""A real S3 API on loopback for tests, and a proxy in front of it that injects faults.

`start_s3()` runs moto in server mode (`ThreadedMotoServer`) on 127.0.0.1 and a free port:
the pipeline talks to it over HTTP through s3fs exactly as it would to AWS or MinIO.
`FaultProxy` forwards to it but can answer chosen requests with throttling (503 SlowDown)
or drop the connection, so retries are tested against real transport failures.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cluster import free_port

# What every test process uses: fixed fake credentials (moto accepts any), a region, and
# no shared config files, so that a developer's real ~/.aws never leaks into a test.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-access-key",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    """A running moto S3 server."""

    endpoint: str
    server: Any

    def client(self, **credentials: str) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **credentials)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> str:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    def upload_dir(self, folder: Path, bucket: str, prefix: str) -> str:
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")
        return f"s3://{bucket}/{prefix.rstrip('/')}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def buckets(self) -> list[str]:
        return [b["Name"] for b in self.client().list_buckets()["Buckets"]]

    def enforce_iam(self, after_requests: float) -> None:
        """Turn on moto's IAM checks (after N more requests); float('inf') turns them off."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=str(after_requests).encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            json.loads(response.read())

    def stop(self) -> None:
        self.server.stop()


def start_s3() -> S3Server:
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(endpoint=f"http://127.0.0.1:{port}", server=server)


# A rule sees (method, bucket/key) and returns None to forward, an int status to answer
# with that error, or "drop" to close the connection without an answer.
Rule = Callable[[str, str], "int | str | None"]


@dataclass
class FaultProxy:
    """An HTTP proxy on loopback in front of an S3 endpoint, failing the requests a rule picks."""

    target: str
    rule: Rule
    requests: Counter = field(default_factory=Counter)
    body_bytes: Counter = field(default_factory=Counter)  # bytes of response bodies served, per path
    endpoint: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> FaultProxy:
        proxy = self
        target = urlsplit(self.target)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = unquote(urlsplit(self.path).path).lstrip("/")
                proxy.requests[(self.command, path)] += 1
                action = proxy.rule(self.command, path)
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, int):
                    code = "SlowDown" if action == 503 else "InternalError"
                    payload = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                    self.send_response(action)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD response has no body but tells the object's size: pass that on.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                    proxy.body_bytes[path] += len(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def count(self, method: str, path: str) -> int:
        return self.requests[(method, path)]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
