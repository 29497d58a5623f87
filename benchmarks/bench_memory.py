"""Memory of the in-process quota backend with a million keys, and that it stays bounded.

    python -m benchmarks.bench_memory [--keys 1000000]

Fills the memory backend with one bucket per key on a fake clock, reports bytes
per key (tracemalloc), then lets a minute pass and fills as many new keys: the
refilled buckets are dropped as the new ones arrive, with no sweeper thread.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc

from benchmarks._harness import table


def main(argv: list[str] | None = None) -> int:
    from tenantkit.quotas import Limit, QuotaEngine
    from tenantkit.settings import QuotaSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    now = [1_000.0]
    engine = QuotaEngine(QuotaSettings(), clock=lambda: now[0], max_keys=args.keys + 1)
    rows: list[list[str]] = []

    def fill(tag: str) -> None:
        for i in range(args.keys):
            # The key string is made here so that the bucket's copy of it is counted too.
            engine.acquire([Limit("r", f"{{{tag}{i}}}:requests", "requests", 100)], tokens=0)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
        rows.append(
            [
                f"after {args.keys:,} new keys ({tag})",
                f"{engine.stats.stored_keys:,}",
                f"{held / engine.stats.stored_keys:.0f}",
                f"{held / 2**20:,.0f}",
            ]
        )

    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    fill("a")
    now[0] += 61
    fill("b")
    tracemalloc.stop()
    print(
        table(
            "Memory backend (one request limit per key)",
            ["step", "buckets held", "bytes per bucket", "MiB held"],
            rows,
        )
    )
    print(
        "the second fill replaces the first: buckets that refilled are dropped as new keys "
        "arrive, so memory follows the keys active in the last minute"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
