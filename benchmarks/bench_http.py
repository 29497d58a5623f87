"""Requests per second over HTTP, one uvicorn worker, bare Starlette against tenantkit.

    python -m benchmarks.bench_http [--seconds 5] [--rounds 3] [--connections 16] [--depth 8]

Each contender runs in its own server process (uvicorn, uvloop and httptools when
installed); a pipelining keep-alive client in this process sends the same
``POST /api/chat/completions`` as the in-process benchmark. Rounds alternate
between the contenders so machine noise hits them alike; the ratio is against
bare Starlette in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time

from benchmarks._harness import BODY, PATH, table
from tests._redis_server import free_port

TARGET_RATIO = 0.85
CONTENDERS = ["bare", "floor", "tenantkit-header", "tenantkit-api-key", "slowapi"]
LABELS = {
    "bare": "bare Starlette",
    "floor": "hand-inlined full stack (the floor)",
    "tenantkit-header": "tenantkit full stack, header identity",
    "tenantkit-api-key": "tenantkit full stack, API key",
    "slowapi": "slowapi SlowAPIASGIMiddleware (1 limit)",
}
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


def request_bytes(headers: dict[str, str]) -> bytes:
    lines = [f"POST {PATH} HTTP/1.1", "Host: bench", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(BODY)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


async def connection(
    port: int, payload: bytes, depth: int, until: float, counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buffer = b""
    try:
        while time.perf_counter() < until:
            writer.write(payload * depth)
            pending = depth
            while pending:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buffer += chunk
                while True:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    match = CONTENT_LENGTH.search(buffer, 0, end + 2)
                    size = int(match.group(1)) if match else 0
                    if len(buffer) < end + 4 + size:
                        break
                    if not buffer.startswith(b"HTTP/1.1 200"):
                        raise AssertionError(buffer[:200].decode("latin-1"))
                    buffer = buffer[end + 4 + size :]
                    pending -= 1
                    counts[0] += 1
    finally:
        writer.close()


async def load(port: int, payload: bytes, seconds: float, connections: int, depth: int) -> float:
    counts = [0]
    warm = time.perf_counter() + min(1.0, seconds / 3)
    await asyncio.gather(*(connection(port, payload, depth, warm, [0]) for _ in range(connections)))
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(
        *(connection(port, payload, depth, until, counts) for _ in range(connections))
    )
    return counts[0] / (time.perf_counter() - start)


def serve(kind: str) -> tuple[subprocess.Popen[str], int, dict[str, str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._http_server", kind, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    headers = json.loads(proc.stdout.readline())
    for _ in range(500):
        try:
            asyncio.run(_probe(port))
            return proc, port, headers
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


async def _probe(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--depth", type=int, default=8, help="pipelined requests per write")
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {kind: [] for kind in CONTENDERS}
    servers = {kind: serve(kind) for kind in CONTENDERS}
    try:
        for _ in range(args.rounds):
            for kind, (_, port, headers) in servers.items():
                payload = request_bytes(headers)
                rps = asyncio.run(load(port, payload, args.seconds, args.connections, args.depth))
                results[kind].append(rps)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=10)
    base = max(results["bare"])
    rows = []
    for kind in CONTENDERS:
        best = max(results[kind])
        rows.append(
            [
                LABELS[kind],
                f"{best:,.0f}",
                f"{statistics.median(results[kind]):,.0f}",
                f"{best / base:.0%}",
            ]
        )
    print(
        table(
            f"HTTP, one uvicorn worker, {args.connections} connections x {args.depth} "
            f"pipelined, {args.rounds} rounds of {args.seconds:g} s",
            ["app", "best req/s", "median req/s", "of bare"],
            rows,
        )
    )
    worst = min(max(results[k]) for k in CONTENDERS if k.startswith("tenantkit")) / base
    verdict = "met" if worst >= TARGET_RATIO else "NOT met"
    floor = max(results["floor"]) / base
    print(
        f"target: tenantkit keeps at least {TARGET_RATIO:.0%} of bare: {verdict} ({worst:.0%}; "
        f"the hand-inlined floor of the same work keeps {floor:.0%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
