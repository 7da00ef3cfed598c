"""Helpers for service tests: a real redis-server on a free port, and `optik serve` run as a user would."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """redis-server in a temp dir; `persist=True` keeps data across `restart()` (append-only file, fsync always)."""

    def __init__(
        self, folder: Path, persist: bool = False, password: str | None = None, tls: tuple[Path, Path] | None = None
    ):
        self.folder, self.persist, self.password, self.tls = folder, persist, password, tls
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not found: `make test` installs it (apt-get install redis-server)")
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--protected-mode",
            "no",
        ]
        if self.tls:  # (certificate, key): TLS only, the certificate is its own CA
            args[1:3] = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls[0]),
                "--tls-key-file",
                str(self.tls[1]),
                "--tls-ca-cert-file",
                str(self.tls[0]),
                "--tls-auth-clients",
                "no",
            ]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # redis flushes the append-only file and exits
            self.process.wait(timeout=10)

    def restart(self, down_for: float = 1.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def client(self) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls[0])} if self.tls else {}
        return redis.Redis(port=self.port, password=self.password, socket_timeout=10, **tls)


@contextmanager
def running_redis(tmp_path: Path, **options) -> Iterator[RedisServer]:
    """A RedisServer (options as for the class) in `tmp_path/redis-data`, stopped afterwards."""
    folder = tmp_path / "redis-data"
    folder.mkdir()
    server = RedisServer(folder, **options).start()
    try:
        yield server
    finally:
        server.stop()


RUNNING: list[Service] = []  # killed after each test by the `stop_leftover_services` fixture


class Service:
    """`optik serve ...` running in the background, its log (stdout and stderr) collected by a thread."""

    def __init__(self, *args: str, env: dict | None = None):
        RUNNING.append(self)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "optik.cli", "serve", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until a log line contains `text` (AssertionError with the log if it never does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.lines)):
                return
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(
                    f"service ended (exit {self.process.returncode}) before logging {text!r}:\n{self.log}"
                )
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} in the service log within {timeout} s:\n{self.log}")

    def url(self, text: str, timeout: float = 120) -> str:
        """The `http://host:port` in the first log line that contains `text` (a service on `--port 0`)."""
        self.wait_for(text, timeout)
        line = next(line for line in list(self.lines) if text in line)
        return re.search(r"http://[\w.]+:\d+", line).group(0)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=5)


def scrape(url: str) -> dict[tuple, float]:
    """`url/metrics` parsed with prometheus-client's own parser: (sample name, sorted labels) -> value."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def metric(samples: dict[tuple, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]
