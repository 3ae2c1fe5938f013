"""A real S3 endpoint for tests: moto in server mode on 127.0.0.1, on a free port.

:func:`start_s3_server` starts moto's HTTP server as a child process (``python -m moto.server``; the tests'
processes reach it over TCP like any S3 endpoint, and it does not compete with them for this process's
GIL), waits until it answers, and returns an :class:`S3Server`; ``stop()`` ends it. Nothing outside the
machine is contacted: s3fs is pointed at the server by ``endpoint_url``. ``auth_after=N`` turns on moto's
IAM authentication after N requests (``INITIAL_NO_AUTH_ACTION_COUNT``): wrong credentials are then refused.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

ACCESS_KEY, SECRET_KEY = "kdcache-test-key", "kdcache-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    _server: Any

    def storage_options(self, **over: str) -> dict[str, str]:
        """s3fs options for this server (``--storage-option KEY=VALUE`` pairs, as strings)."""
        return {"endpoint_url": self.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY, **over}

    def cli_options(self, **over: str) -> list[str]:
        return [a for k, v in self.storage_options(**over).items() for a in ("--storage-option", f"{k}={v}")]

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options(), skip_instance_cache=True)

    def new_bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        return name

    def stop(self) -> None:
        self._server.terminate()
        try:
            self._server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()


def start_s3_server(*, auth_after: int | None = None, timeout: float = 30.0) -> S3Server:
    port = free_port()
    env = dict(os.environ)
    if auth_after is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on {endpoint}") from None
            time.sleep(0.1)
    return S3Server(endpoint=endpoint, _server=proc)
