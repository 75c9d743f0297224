"""On the real dev server: the stock `temporal` CLI with plain JSON, search
attributes for operators, and the real starter end to end."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from starter.embedded import installed_binary
from tests.conftest import new_order, payment_for
from workflows.models import TASK_QUEUE


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}): {out.decode()} {err.decode()}"
    return out.decode()


async def temporal(dev_env, *args: str) -> str:
    address = dev_env.client.service_client.config.target_host
    return await run(installed_binary("temporal"), *args, "--address", address)


async def test_temporal_cli_plain_json_and_status_search(dev_env, make_harness):
    order = new_order()
    workflow_id = f"order-{order['order_id']}"
    async with make_harness(dev_env, task_queue=TASK_QUEUE) as h:
        await temporal(
            dev_env, "workflow", "start", "--type", "OrderLifecycle", "--task-queue", TASK_QUEUE,
            "--workflow-id", workflow_id, "--input", json.dumps(order),
        )
        handle = dev_env.client.get_workflow_handle(workflow_id)
        await h.wait_touchpoint(handle, "order_confirmation")
        await temporal(dev_env, "workflow", "signal", "--workflow-id", workflow_id, "--name", "payment_received",
                       "--input", json.dumps(payment_for(order)))
        await temporal(dev_env, "workflow", "signal", "--workflow-id", workflow_id, "--name", "order_dispatched",
                       "--input", '{"carrier": "DHL", "tracking_number": 5}')
        view = await h.wait_for(handle, lambda v: v.status == "paid" and v.rejected_events)
        assert view.rejected_events[0].reason.startswith("malformed order_dispatched: tracking_number: Input should be a valid string")

        query = f'OrderStatus="paid" AND CustomerId="{order["customer"]["customer_id"]}"'
        for _ in range(50):  # visibility is eventually consistent
            listed = await temporal(dev_env, "workflow", "list", "--query", query, "-o", "json")
            if workflow_id in listed:
                break
            await asyncio.sleep(0.2)
        assert workflow_id in listed
        status = json.loads(await temporal(dev_env, "workflow", "query", "--workflow-id", workflow_id, "--name", "status", "-o", "json"))
        assert "paid" in json.dumps(status)
        await handle.terminate("test done")


async def test_starter_demo_end_to_end(dev_env, make_harness, database_url):
    """`orders demo` as a backend developer runs it, against a worker on the real task queue."""
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "DATABASE_URL": database_url}
    async with make_harness(dev_env, task_queue=TASK_QUEUE):
        # faulthandler: should the process crash, its stderr shows where.
        out = await run(sys.executable, "-X", "faulthandler", "-m", "starter.cli", "demo", env=env, timeout=150)
    rows = {line.split()[0].rsplit("-", 1)[1]: line for line in out.splitlines() if line.startswith("  demo-")}
    assert sorted(rows) == ["1", "2", "3", "4", "5", "6"], out
    expected = {
        "1": ("completed", None),
        "2": ("completed", None),
        "3": ("completed", "locker_not_collected"),
        "4": ("cancelled", None),
        "5": ("cancelled", None),
        "6": ("completed", "dispatch_late"),
    }
    for n, (status, flag) in expected.items():
        assert f" {status} " in rows[n], rows[n]
        assert (flag in rows[n]) if flag else ("⚠" not in rows[n]), rows[n]


async def test_starter_rejects_a_bad_order_with_a_clear_message(dev_env):
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host}
    order = new_order()
    order["items"][0]["quantity"] = -2
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter.cli", "place", json.dumps(order), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip() == "error: invalid order: items.0.quantity: Input should be greater than 0"
