"""How much of the exact refund the quota engine gives back when settles come in any order.

    python -m benchmarks.bench_refunds [--requests 3000] [--seeds 3]

Simulated LLM traffic on the memory backend and a fake clock: requests arrive at
random (Poisson), each reserves a fixed estimate, uses a random share of it and
settles after a random (log-normal) time, so settles come in no particular order.
Every refund is compared with the exact one, from a model that keeps the bucket's
charges as a queue (``tests/_queue_model.py``): what of the settling request's
charge is still ahead of now. The engine never gives more (that would break the
admission bound; the run checks it at every settle); it may give less only once
a bucket has more refunds to keep than its log holds (``MAX_LOGGED``), as in the
last mix, with hundreds of one tenant's requests in flight.
"""

from __future__ import annotations

import argparse
import heapq
import random
from fractions import Fraction

from benchmarks._harness import table
from tests._queue_model import QueueModel, engine_tat

SCENARIOS = [
    # label, tokens per minute, tokens reserved, requests per second, median seconds
    ("100k/min, 4k reserved, 0.5 req/s, ~4.5 s", 100_000, 4_000, 0.5, 1.0),
    ("100k/min, 4k reserved, 5 req/s, ~4.5 s", 100_000, 4_000, 5.0, 1.0),
    ("100k/min, 4k reserved, 20 req/s, ~13 s", 100_000, 4_000, 20.0, 3.0),
    ("10k/min, 1k reserved, 2 req/s, ~4.5 s", 10_000, 1_000, 2.0, 1.0),
    ("1M/min, 1k reserved, 100 req/s, ~4.5 s", 1_000_000, 1_000, 100.0, 1.0),
]


def simulate(
    seed: int, per_minute: int, reserve: int, rate: float, scale: float, requests: int
) -> tuple[Fraction, Fraction, int, int]:
    """Return (given back, exact), admitted and denied for one seeded run."""
    from tenantkit.errors import QuotaExceeded
    from tenantkit.quotas import Limit, QuotaEngine
    from tenantkit.settings import QuotaSettings

    rng = random.Random(seed)
    clock_ms = [5_000_000]
    engine = QuotaEngine(QuotaSettings(), clock=lambda: clock_ms[0] / 1000)
    limit = Limit("tenant-tokens", "{t}:tokens", "tokens", per_minute)
    model = QueueModel(per_minute)
    events: list[tuple[int, int, int]] = []  # (ms, sequence, used or -1 for an arrival)
    grants = {}
    at = clock_ms[0]
    for i in range(requests):
        at += int(rng.expovariate(rate) * 1000)
        heapq.heappush(events, (at, i, -1))
    given = exact = Fraction(0)
    admitted = denied = 0
    while events:
        clock_ms[0], i, used = heapq.heappop(events)
        now = Fraction(clock_ms[0], 1000)
        if used < 0:
            try:
                grants[i] = engine.acquire([limit], tokens=reserve)
            except QuotaExceeded:
                denied += 1
                continue
            admitted += 1
            model.charge(now, grants[i], reserve)
            lasts = int(rng.lognormvariate(1.5, 0.8) * 1000 * scale)
            heapq.heappush(events, (clock_ms[0] + lasts, i, rng.randint(reserve // 20, reserve)))
            continue
        grant = grants.pop(i)
        before = engine_tat(engine, limit, now)
        engine.settle(grant, used)
        given += before - engine_tat(engine, limit, now)
        exact += model.refund(now, grant, reserve - used)
        if engine_tat(engine, limit, now) < model.tat(now):
            raise AssertionError("a refund gave back time the refill had already returned")
    return given, exact, admitted, denied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    rows: list[list[str]] = []
    for label, per_minute, reserve, rate, scale in SCENARIOS:
        runs = [
            simulate(seed, per_minute, reserve, rate, scale, args.requests)
            for seed in range(args.seeds)
        ]
        shares = [given / exact for given, exact, _, _ in runs if exact]
        admitted = sum(run[2] for run in runs)
        denied = sum(run[3] for run in runs)
        rows.append(
            [
                label,
                f"{admitted / (admitted + denied):.0%}",
                f"{float(min(shares)):.3f}",
                f"{float(max(shares)):.3f}",
            ]
        )
    print(
        table(
            "Refunds given back, as a share of the exact refund (settles in any order)",
            ["traffic", "admitted", "lowest", "highest"],
            rows,
        )
    )
    print("never above 1: a refund never credits time the refill already returned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
