"""The worker's CPU per order by step, from py-spy's collapsed stacks
(`python -m bench --only ours --profile DIR`).

Each sampled stack goes to the first step below that one of its frames
belongs to, so a step counts what it calls that is not a step of its own:
the codec inside payload conversion is the codec's, and templates inside an
activity are the templates'. py-spy sees Python threads holding the GIL;
the SDK's Rust core (gRPC, history, protobuf of activations) shows only
where Python waits on it or it calls into Python (the bridge), so its share
is spread over the steps."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# (step, pattern on a frame's "function (file:line)"), first match wins.
STEPS = [
    ("codec (encrypt, decrypt, compress)", r"\(codec/|cryptography/|zlib|zstd"),
    ("payload conversion (JSON, pydantic)", r"temporalio/converter\.py|pydantic|json/"),
    ("PostgreSQL client (asyncpg)", r"asyncpg/"),
    ("provider clients (SendGrid, Twilio, HTTP)", r"sendgrid/|python_http_client/|twilio/|http/client\.py|urllib|ssl\.py|aiohttp/|yarl/|MessagingActivities\._request\b|\(providers/(sendgrid|twilio)\.py"),
    ("templates and signed links", r"\(messages/|jinja2/|markupsafe/"),
    ("the customer's workflow (our code)", r"workflows/customer_journey\.py"),
    ("the order's workflow (our code)", r"\(workflows/"),
    ("workflow tasks (SDK, Python side)", r"temporalio/worker/_workflow|temporalio/worker/workflow_sandbox|temporalio/workflow\.py|temporalio/bridge|temporalio/worker/_worker"),
    ("activity tasks (SDK, Python side)", r"temporalio/worker/_activity|temporalio/activity\.py"),
    ("activity bodies (our code, store/)", r"\((activities|store|providers)/"),
    ("logging", r"logging/"),
    ("event loop (asyncio)", r"asyncio/"),
]
OTHER = "other Python"
RATE = 200  # samples per second, as bench.stack records them


def classify(stack: str) -> str:
    for step, pattern in STEPS:
        if re.search(pattern, stack):
            return step
    return OTHER


def samples_by_step(paths: list[Path]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                counts[classify(stack)] += int(n)
    return counts


def breakdown(paths: list[Path], worker_cpu_ms_per_order: float, orders: int) -> str:
    """A table of the worker's CPU ms per order by step: each step's share of
    the samples, of the CPU the process used. (Samples are taken while a
    thread holds the GIL; one descheduled while holding it still counts, so
    on a busy machine the samples' own total overstates the CPU.)"""
    counts = samples_by_step(paths)
    total = max(sum(counts.values()), 1)
    lines = [
        f"worker CPU per order by step (py-spy: {total} samples at {RATE}/s, {1000 * total / RATE / max(orders, 1):.1f} ms per order "
        f"sampled; shares of the {worker_cpu_ms_per_order} ms the process used, over {orders} orders):"
    ]
    for step, n in counts.most_common():
        lines.append(f"  {step:48}{worker_cpu_ms_per_order * n / total:7.1f} ms {100 * n / total:5.1f} %")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    # python -m bench.profile WORKER_CPU_MS_PER_ORDER ORDERS worker-1.txt ...
    print(breakdown([Path(p) for p in sys.argv[3:]], float(sys.argv[1]), int(sys.argv[2])))
