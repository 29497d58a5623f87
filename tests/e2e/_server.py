"""Serve an example app in a subprocess on a free loopback port and wait until it answers.

End-to-end tests drive the apps over real HTTP, exactly as a user would run
them (``python -m examples.<app>``), so start-up, configuration from the
environment and shutdown are tested too::

    with serve_module("examples.starlette_app", env={"ADMIN_TOKEN": "t"}) as server:
        httpx.get(server.url + "/health")
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


@dataclass
class Server:
    """A running app: its base URL, its process and the file collecting its output."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        """Return everything the process printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """Stop the process gracefully (SIGINT, like Ctrl-C), killing it if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve_module(
    module: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_path: str = "/health",
    addr_variable: str = "APP_ADDR",
) -> Iterator[Server]:
    """Run ``python -m module`` listening on a free port; yield once it answers HTTP.

    Any HTTP answer on ``ready_path`` counts as ready (a 503 health check is
    still a running server). The process is stopped on exit; its output is
    included in the error if it dies or never answers.
    """
    server = start_module(
        module, env=env, cwd=cwd, ready_path=ready_path, addr_variable=addr_variable
    )
    try:
        yield server
    finally:
        server.stop()
        server.log_path.unlink(missing_ok=True)


def start_module(
    module: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_path: str = "/health",
    addr_variable: str = "APP_ADDR",
) -> Server:
    """Start ``python -m module`` on a free port; return once it answers (the caller stops it)."""
    port = free_port()
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env[addr_variable] = f"127.0.0.1:{port}"
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), full_env.get("PYTHONPATH", "")]
    )
    fd, log_name = tempfile.mkstemp(prefix=f"{module}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=str(cwd or ROOT),
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log_path=Path(log_name))
    try:
        _wait_ready(server, ready_path)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server, ready_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"the app exited with {server.process.returncode}:\n{server.output()}"
                )
            try:
                client.get(server.url + ready_path)
                return
            except httpx.TransportError:
                time.sleep(0.05)
    raise RuntimeError(
        f"the app did not answer within {START_TIMEOUT_SECONDS}s:\n{server.output()}"
    )
