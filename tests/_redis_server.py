"""Throwaway redis-server processes: for tests that stop or misconfigure their Redis, for
the tests against a real Redis Cluster and Sentinel, and for the benchmarks
(``benchmarks/_harness.py``), whose command counts must see no other client.

A missing redis-server skips the calling test unless ``TENANTKIT_TEST_REDIS_URL`` is
set (CI sets it): there, as for the shared Redis, a test must fail rather than pass by
skipping. A redis-server that does not come up always fails the test.

The benchmarks import this module from the repository root (``python -m benchmarks.x``)
without the test extra: pytest is imported only where a test is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_ENV = "TENANTKIT_TEST_REDIS_URL"
START_SECONDS = 10.0
"""How long a server (or a cluster, or a sentinel) may take to be ready: the test
machines are small and shared."""
SENTINEL_SERVICE = "mymaster"


def free_port() -> int:
    """Return a loopback TCP port free at the time of the call."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback TCP ports free at the time of the call."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _binary(name: str) -> str:
    """The path of ``name``; skip without it, unless CI (the Redis URL set) expects it."""
    found = shutil.which(name)
    if found is not None:
        return found
    if os.environ.get(REDIS_ENV):
        raise RuntimeError(f"{name} is not installed but {REDIS_ENV} is set")
    import pytest

    pytest.skip(f"{name} is not installed")


def _wait_until(ready: Callable[[], bool], what: str, servers: _Processes) -> None:
    """Poll ``ready`` until it holds; raise if a process died or time ran out."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        for i, proc in enumerate(servers.procs):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{what}: {proc.args!r} exited with {proc.returncode}:\n{servers.log(i)}"
                )
        try:
            if ready():
                return
        except (redis.RedisError, OSError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {START_SECONDS} s")
        time.sleep(0.05)


def _probe(port: int) -> redis.Redis:
    """A client that fails at once: redis-py would otherwise retry with backoff."""
    return redis.Redis(port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))


def _ping(port: int) -> bool:
    with _probe(port) as probe:
        return bool(probe.ping())


class _Processes:
    """redis-server processes started in one temporary directory, all killed at the end."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tk-redis-")))
        self.procs: list[subprocess.Popen[bytes]] = []
        self._binary = _binary("redis-server")
        stack.callback(self._kill)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.dir / f"redis-{len(self.procs)}.log", "wb") as log:  # the child has a copy
            proc = subprocess.Popen(
                [self._binary, *args], cwd=self.dir, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def log(self, index: int) -> str:
        """The end of the output of the ``index``-th process started."""
        return (self.dir / f"redis-{index}.log").read_text(errors="replace")[-2_000:]

    def server(self, *options: str, port: int | None = None) -> int:
        """Start a redis-server with ``options`` on ``port`` (or a free one); return the port."""
        port = port or free_port()
        self.start(
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *options
        )
        return port

    def _kill(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


@contextlib.contextmanager
def redis_server(*options: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run a private redis-server with ``options``; yield its URL and process, then kill it."""
    with contextlib.ExitStack() as stack:
        servers = _Processes(stack)
        port = servers.server(*options)
        _wait_until(lambda: _ping(port), f"redis-server on port {port}", servers)
        yield f"redis://127.0.0.1:{port}/0", servers.procs[0]


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[int]]:
    """Run a Redis Cluster of ``masters`` masters and no replicas; yield their ports.

    Every node must report ``cluster_state:ok`` (all 16384 slots served) before the
    ports are yielded.
    """
    with contextlib.ExitStack() as stack:
        servers = _Processes(stack)
        cli = _binary("redis-cli")
        # The cluster bus would be port + 10000, past 65535 for a high free port: name it.
        free = free_ports(2 * masters)
        ports, buses = free[:masters], free[masters:]
        for i, (port, bus) in enumerate(zip(ports, buses, strict=True)):
            servers.server(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{i}.conf",
                "--cluster-port",
                str(bus),
                port=port,
            )
        _wait_until(lambda: all(_ping(port) for port in ports), "cluster nodes", servers)
        nodes = [f"127.0.0.1:{port}" for port in ports]
        created = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            output = (created.stdout + created.stderr).decode(errors="replace")
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output[-2_000:]}")

        def state_ok() -> bool:
            for port in ports:
                with _probe(port) as node:
                    if node.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                        return False
            return True

        _wait_until(state_ok, "redis cluster", servers)
        yield ports


@contextlib.contextmanager
def redis_sentinel(service: str = SENTINEL_SERVICE) -> Iterator[tuple[int, int]]:
    """Run a master redis-server and one sentinel monitoring it as ``service``.

    Yield the master's and the sentinel's ports once the sentinel reports the master.
    """
    with contextlib.ExitStack() as stack:
        servers = _Processes(stack)
        master = servers.server()
        _wait_until(lambda: _ping(master), f"redis-server on port {master}", servers)
        sentinel = free_port()
        conf = servers.dir / "sentinel.conf"  # the sentinel rewrites it: it must be its own
        conf.write_text(
            f"port {sentinel}\nbind 127.0.0.1\ndir {servers.dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {master} 1\n"
        )
        servers.start(str(conf), "--sentinel")

        def reports_master() -> bool:
            with _probe(sentinel) as probe:
                state = [v.decode() for v in probe.execute_command("SENTINEL", "MASTER", service)]
            fields = dict(zip(state[::2], state[1::2], strict=True))
            return bool(fields["port"] == str(master) and fields["flags"] == "master")

        _wait_until(reports_master, f"sentinel on port {sentinel}", servers)
        yield master, sentinel
