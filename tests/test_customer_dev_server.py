"""The customer's journey on the real dev server with the real worker: the
`CustomerPhase` search attribute as operators query it with the stock CLI,
and the HTTP service's unsubscribe link reaching the running CustomerJourney."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import httpx

from messages.unsubscribe_tokens import sign
from tests.conftest import new_order, payment_for
from tests.test_dev_server import temporal
from tests.test_web import ONE_CLICK, PUBLIC_URL, unused_port
from web.app import create_app
from web.config import WebConfig
from workflows.models import Channel, CustomerPhase, CustomerView, LifecycleSettings, customer_workflow_id

# Short enough to see a lapse in a test, long enough to see `new` first;
# the win-back's second attempt is far off, so the customer stays lapsed.
LIFECYCLE = LifecycleSettings(lapse_after=timedelta(seconds=8), win_back_retry_after=timedelta(days=1), holdout_share=0)


async def listed(dev_env, query: str, timeout: float = 20) -> list[str]:
    """Workflow ids the stock CLI lists for a visibility query, once any are there."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = json.loads(await temporal(dev_env, None, "workflow", "list", "--query", query, "-o", "json") or "[]")
        if rows or asyncio.get_running_loop().time() > deadline:
            return [r["execution"]["workflowId"] for r in rows]
        await asyncio.sleep(0.2)


async def test_customer_phase_is_queryable_and_an_unsubscribe_reaches_the_running_journey(
    dev_env, make_harness, provider_config, pool, database_url
):
    order = new_order()
    customer_id = order["customer"]["customer_id"]
    async with make_harness(dev_env, lifecycle=LIFECYCLE) as h:
        handle = await h.start(order)
        customer = dev_env.client.get_workflow_handle(customer_workflow_id(customer_id))
        await handle.signal("payment_received", payment_for(order))
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "T1", "expected_delivery": await h.tomorrow()})
        await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})

        assert await listed(dev_env, f'CustomerPhase="new" AND CustomerId="{customer_id}"') == [customer_workflow_id(customer_id)]
        view = await h.wait_for(customer, lambda v: v.phase is CustomerPhase.LAPSED, timeout=30, view_type=CustomerView)
        assert view.win_back_group == "treated"
        assert await listed(dev_env, f'CustomerPhase="lapsed" AND CustomerId="{customer_id}"') == [customer_workflow_id(customer_id)]
        assert await listed(dev_env, f'CustomerPhase="new" AND CustomerId="{customer_id}"', timeout=0) == []

        config = WebConfig(
            unsubscribe_secret=provider_config.unsubscribe_secret,
            database_url=database_url,
            public_url=PUBLIC_URL,
            temporal_env={"TEMPORAL_ADDRESS": f"127.0.0.1:{unused_port()}"},
        )
        token = sign(customer_id, Channel.EMAIL, provider_config.unsubscribe_secret, datetime.now(timezone.utc))
        app = create_app(config, pool=pool, temporal_client=dev_env.client)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as http:
            response = await http.post(f"/unsubscribe?token={token}", data=ONE_CLICK)
        assert response.status_code == 200
        view = await h.wait_for(customer, lambda v: any("consent" in line for line in v.timeline), timeout=30, view_type=CustomerView)
        assert any("marketing email: withdrawn (unsubscribe_link)" in line for line in view.timeline), view.timeline
