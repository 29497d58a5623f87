"""Where tenantkit's per-request time goes: each pipeline stage timed alone, in process.

    python -m benchmarks.bench_breakdown [--number 5000]

CPU µs of this process per call (best of 5 runs), for a header-identity and an
API-key kit on the memory backend, with the same request as the other benchmarks.
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from benchmarks._harness import BODY, PATH, make_kit, table


def stages(identity: str) -> dict[str, Callable[[], Any]]:
    from tenantkit._quota_limits import limit_set_for
    from tenantkit._request import parse_json_object, request_id_from
    from tenantkit.asgi import _header_map, _request_info
    from tenantkit.policy import estimate_tokens
    from tenantkit.types import RequestInfo

    built = make_kit(identity)
    kit = built.kit
    headers = {k.lower(): v for k, v in built.headers.items()}
    headers |= {"content-type": "application/json", "content-length": str(len(BODY))}
    info = RequestInfo(
        method="POST", path=PATH, headers=headers, client="10.1.2.3", request_id="r-1"
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": PATH,
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("10.1.2.3", 1),
        "query_string": b"",
        "scheme": "http",
    }
    document = parse_json_object(BODY)
    who = kit.identity.resolve(info)
    tenant = kit.tenants.get("acme")
    limits = limit_set_for(tenant, who)
    grant = kit.quotas.acquire(limits, tokens=100)
    estimate = kit.settings.quota.default_token_estimate

    def admit_and_settle() -> None:
        admission = kit.admit(info, BODY)
        admission.context.meter.used = 42
        kit.finish(admission)

    def acquire_and_settle() -> None:
        kit.quotas.settle(kit.quotas.acquire(limits, tokens=100), 42)

    return {
        "asgi: header map + RequestInfo": lambda: _request_info(
            scope, _header_map(scope["headers"]), "r"
        ),
        "asgi: request id (generated)": lambda: request_id_from(None),
        "identity.resolve": lambda: kit.identity.resolve(info),
        "tenants.get (cache hit)": lambda: kit.tenants.get("acme"),
        "parse JSON body": lambda: parse_json_object(BODY),
        "policy.check": lambda: kit.policy.check(tenant, document),
        "estimate_tokens": lambda: estimate_tokens(document, estimate),
        "limit_set_for": lambda: limit_set_for(tenant, who),
        "quotas.acquire (3 limits)": lambda: kit.quotas.acquire(limits, tokens=100),
        "quotas.acquire + settle": acquire_and_settle,
        "grant.headers": grant.headers,
        "kit.admit (every stage)": lambda: kit.admit(info, BODY),
        "kit.admit + finish": admit_and_settle,
    }


def measure(call: Callable[[], Any], number: int) -> float:
    timer = timeit.Timer(call, timer=time.process_time)
    return min(timer.repeat(number=number, repeat=5)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5000)
    args = parser.parse_args(argv)
    header, api_key = stages("header"), stages("api_key")
    rows = [
        [name, f"{measure(header[name], args.number):.2f}", f"{measure(call, args.number):.2f}"]
        for name, call in api_key.items()
    ]
    print(
        table(
            "Per stage, CPU µs per call (memory backend)",
            ["stage", "header identity", "API key"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
