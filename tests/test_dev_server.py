"""On the real dev server: the stock `temporal` CLI with plain JSON through
the codec server, search attributes for operators, and the real starter end
to end."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import uuid

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus

from codec.server import CodecServerConfig, start as start_codec_server
from starter.embedded import installed_binary
from tests.conftest import TEST_KEY_ENV, new_order, payment_for
from tests.test_web import unused_port
from workflows.models import TASK_QUEUE


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}): {out.decode()} {err.decode()}"
    return out.decode()


@pytest.fixture(scope="module")
async def codec_server(data_keys):
    """The codec server as an operator runs it: (endpoint, token)."""
    config = CodecServerConfig(token=uuid.uuid4().hex, port=unused_port())
    stop = asyncio.Event()
    served = start_codec_server(config, data_keys, stop)
    async with httpx.AsyncClient() as http:
        for _ in range(100):  # until uvicorn listens
            try:
                await http.post(config.url + "/decode")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
    yield config.url, config.token
    stop.set()
    await served


async def temporal(dev_env, codec_server, *args: str) -> str:
    """The stock CLI as the README shows it: payloads through the codec server."""
    address = dev_env.client.service_client.config.target_host
    codec = ("--codec-endpoint", codec_server[0], "--codec-auth", f"Bearer {codec_server[1]}") if codec_server else ()
    return await run(installed_binary("temporal"), *args, "--address", address, *codec)


async def test_temporal_cli_plain_json_and_status_search(dev_env, make_harness, codec_server):
    order = new_order()
    workflow_id = f"order-{order['order_id']}"
    async with make_harness(dev_env, task_queue=TASK_QUEUE) as h:
        temporal_cli = lambda *args: temporal(dev_env, codec_server, *args)  # noqa: E731
        start = (
            "workflow", "start", "--type", "OrderLifecycle", "--task-queue", TASK_QUEUE,
            "--workflow-id", workflow_id, "--id-reuse-policy", "RejectDuplicate",
            "--id-conflict-policy", "UseExisting", "--input", json.dumps(order),
        )
        await temporal_cli(*start)
        handle = dev_env.client.get_workflow_handle(workflow_id)
        await h.wait_touchpoint(handle, "order_confirmation")
        first_run = (await handle.describe()).run_id
        await temporal_cli(*start)  # a backend's retry finds the running order
        assert (await handle.describe()).run_id == first_run
        await temporal_cli("workflow", "signal", "--workflow-id", workflow_id, "--name", "payment_received",
                           "--input", json.dumps(payment_for(order)))
        await temporal_cli("workflow", "signal", "--workflow-id", workflow_id, "--name", "order_dispatched",
                           "--input", '{"carrier": "DHL", "tracking_number": 5}')
        view = await h.wait_for(handle, lambda v: v.status == "paid" and v.rejected_events)
        assert view.rejected_events[0].reason.startswith("malformed order_dispatched: tracking_number: Input should be a valid string")

        query = f'OrderStatus="paid" AND CustomerId="{order["customer"]["customer_id"]}"'
        for _ in range(50):  # visibility is eventually consistent
            listed = await temporal_cli("workflow", "list", "--query", query, "-o", "json")
            if workflow_id in listed:
                break
            await asyncio.sleep(0.2)
        assert workflow_id in listed
        status = json.loads(await temporal_cli("workflow", "query", "--workflow-id", workflow_id, "--name", "status", "-o", "json"))
        assert "paid" in json.dumps(status)
        # What the server keeps is encrypted: without the codec server the CLI shows ciphertext.
        encrypted = base64.b64encode(b"binary/encrypted").decode()
        shown = await temporal(dev_env, None, "workflow", "show", "--workflow-id", workflow_id, "-o", "json")
        assert encrypted in shown
        decoded = json.loads(await temporal_cli("workflow", "show", "--workflow-id", workflow_id, "-o", "json"))
        started = decoded["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
        assert json.loads(base64.b64decode(started["data"])) == order and encrypted not in json.dumps(decoded)
        await handle.terminate("test done")
        # A finished order is not started again: the CLI answers with its last
        # run (exit 0, "Running execution" all the same) and starts none.
        await temporal_cli(*start)
        assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
        assert (await handle.describe()).run_id == first_run


@pytest.mark.long(28)
async def test_starter_demo_end_to_end(dev_env, make_harness, database_url):
    """`orders demo` as a backend developer runs it, against a worker on the real task queue."""
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, "DATABASE_URL": database_url, **TEST_KEY_ENV}
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
    env = {**os.environ, "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host, **TEST_KEY_ENV}
    order = new_order()
    order["items"][0]["quantity"] = -2
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter.cli", "place", json.dumps(order), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip() == "error: invalid order: items.0.quantity: Input should be greater than 0"
