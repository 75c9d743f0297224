"""The worker's CPU per order by step, from py-spy's collapsed stacks
(`python -m bench --only ours --profile DIR`).

Each sampled stack goes to the first step below that one of its frames
belongs to, so a step counts what it calls that is not a step of its own:
the codec inside payload conversion is the codec's, and templates inside an
activity are the templates'. py-spy sees Python threads only; the rest of
the worker's CPU (the SDK's Rust core: gRPC, history, protobuf of
activations) is what the process used beyond the samples."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

# (step, pattern on a frame's "function (file:line)"), first match wins.
STEPS = [
    ("codec (encrypt, decrypt, compress)", r"\(codec/|cryptography/|zlib|zstd"),
    ("payload conversion (JSON, pydantic)", r"temporalio/converter\.py|pydantic|json/"),
    ("PostgreSQL client (asyncpg)", r"asyncpg/"),
    ("provider clients (SendGrid, Twilio, HTTP)", r"sendgrid/|python_http_client/|twilio/|http/client\.py|urllib|ssl\.py|aiohttp/|MessagingActivities\._in_thread|\(providers/(sendgrid|twilio)\.py"),
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
NOT_SAMPLED = "outside Python threads (SDK core in Rust), by difference"
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
    """A table of CPU ms per order by step; the samples' total against what
    the worker process used."""
    counts = samples_by_step(paths)
    ms = {step: 1000 * n / RATE / max(orders, 1) for step, n in counts.items()}
    sampled = sum(ms.values())
    lines = [f"worker CPU per order by step (py-spy, {sum(counts.values())} samples at {RATE}/s over {orders} orders):"]
    for step, value in sorted(ms.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {step:48}{value:8.1f} ms")
    lines.append(f"  {NOT_SAMPLED:48}{worker_cpu_ms_per_order - sampled:8.1f} ms")
    lines.append(f"  {'worker total (process CPU)':48}{worker_cpu_ms_per_order:8.1f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    # python -m bench.profile WORKER_CPU_MS_PER_ORDER ORDERS worker-1.txt ...
    print(breakdown([Path(p) for p in sys.argv[3:]], float(sys.argv[1]), int(sys.argv[2])))
