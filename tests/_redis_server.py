"""Throwaway redis-server processes: for tests that stop or misconfigure their Redis, and
for the benchmarks (``benchmarks/_harness.py``), whose command counts must see no other client.

The benchmarks import this module from the repository root (``python -m benchmarks.x``)
without the test extra: pytest is imported only where a test is skipped.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import redis


def free_port() -> int:
    """Return a loopback TCP port free at the time of the call."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(*options: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run a private redis-server with ``options``; yield its URL and process, then kill it.

    Without a redis-server on PATH the calling test is skipped.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        import pytest

        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    probe = redis.Redis.from_url(url)
    try:
        for _ in range(200):  # up to 4 s: a loaded machine starts it slowly
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        probe.close()
        yield url, proc
    finally:
        proc.kill()
        proc.wait()
