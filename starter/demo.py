"""A handful of orders through the whole journey in about a minute, with
short per-order delays, to watch in the Web UI."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from temporalio.client import Client

from starter.cli import place_order, send_event
from workflows.models import OrderStatusView, workflow_id_for

DEMO_JOURNEY = {
    "payment_reminder_after": "PT5S",
    "payment_deadline": "PT12S",
    "dispatch_promised_within": "PT6S",
    "delivery_grace": "PT0S",
    "locker_pickup_window": "PT20S",
    "locker_reminder_before": "PT12S",
    "feedback_delay": "PT5S",
    "recommendations_delay": "PT10S",
    "feedback_window": "PT8S",
}

CATALOGUE = [
    ("KB-87", "Mechanical keyboard", "89.90", "keyboards"),
    ("MS-2", "Wireless mouse", "24.50", "mice"),
    ("PAD-XL", "Desk pad XL", "19.00", "accessories"),
    ("USB-C-2M", "USB-C cable 2 m", "9.99", "accessories"),
    ("HS-7", "Headset", "59.00", "audio"),
]


def demo_order(n: int, run: str, *, locker: bool = False, phone: bool = True) -> dict[str, Any]:
    items = [CATALOGUE[n % len(CATALOGUE)], CATALOGUE[(n + 1) % len(CATALOGUE)]]
    customer = {
        "customer_id": f"demo-{run}-c{n}",
        "name": f"Demo Customer {n}",
        "email": f"customer{n}.{run}@example.com",
        "timezone": "Europe/Warsaw",
    }
    if phone:
        customer["phone"] = f"+4860010{n:04d}"
    delivery = (
        {"method": "locker", "locker_id": "WAW-042", "locker_name": "Locker WAW-042"}
        if locker
        else {"method": "address", "address": {"line1": "Marszałkowska 1", "city": "Warsaw", "postal_code": "00-001", "country": "PL"}}
    )
    return {
        "order_id": f"demo-{run}-{n}",
        "placed_at": datetime.now(timezone.utc).isoformat(),
        "currency": "PLN",
        "customer": customer,
        "items": [{"sku": s, "name": name, "quantity": 1, "unit_price": price, "category": c} for s, name, price, c in items],
        "delivery": delivery,
        "seller": {"seller_id": "demo-seller", "name": "Demo Electronics", "sends_delivery_day_notice": n % 2 == 0},
        "journey": DEMO_JOURNEY,
    }


def payment(order: dict[str, Any]) -> dict[str, Any]:
    total = sum(Decimal(i["unit_price"]) * i["quantity"] for i in order["items"])
    return {"payment_id": f"pay-{order['order_id']}", "amount": str(total), "currency": order["currency"]}


async def happy(client: Client, order: dict[str, Any], *, collect: bool = True) -> None:
    oid = order["order_id"]
    today = datetime.now(timezone.utc).date().isoformat()
    await asyncio.sleep(1)
    await send_event(client, oid, "payment_received", payment(order), sync=True)
    await asyncio.sleep(2)
    dispatch = {"carrier": "InPost" if order["delivery"]["method"] == "locker" else "DHL",
                "tracking_number": f"TRK-{oid}", "expected_delivery": today}
    await send_event(client, oid, "order_dispatched", dispatch, sync=True)
    await asyncio.sleep(2)
    await send_event(client, oid, "out_for_delivery", {"date": today}, sync=True)
    await asyncio.sleep(2)
    delivered: dict[str, Any] = {"delivered_at": datetime.now(timezone.utc).isoformat()}
    if order["delivery"]["method"] == "locker":
        delivered["locker_pickup_code"] = "482913"
    await send_event(client, oid, "order_delivered", delivered, sync=True)
    if order["delivery"]["method"] == "locker" and collect:
        await asyncio.sleep(3)
        await send_event(client, oid, "parcel_collected", {}, sync=True)
    await asyncio.sleep(6)
    await send_event(client, oid, "feedback_submitted", {"item_rating": 5, "seller_rating": 4, "comment": "Fast!"}, sync=True)


async def cancelled(client: Client, order: dict[str, Any]) -> None:
    await asyncio.sleep(2)
    await send_event(client, order["order_id"], "order_cancelled", {"reason": "customer changed their mind"}, sync=True)


async def unpaid(client: Client, order: dict[str, Any]) -> None:
    """Nothing to do: the reminder and the cancellation come by themselves."""


async def late_dispatch(client: Client, order: dict[str, Any]) -> None:
    await send_event(client, order["order_id"], "payment_received", payment(order), sync=True)
    await asyncio.sleep(8)  # past the 6 s promise: an apology and a flag
    await send_event(
        client, order["order_id"], "order_dispatched",
        {"carrier": "DHL", "tracking_number": "TRK-LATE", "expected_delivery": datetime.now(timezone.utc).date().isoformat()},
        sync=True,
    )
    await asyncio.sleep(2)
    await send_event(client, order["order_id"], "order_delivered", {"delivered_at": datetime.now(timezone.utc).isoformat()}, sync=True)


async def run_demo(client: Client) -> list[OrderStatusView]:
    run = uuid.uuid4().hex[:6]
    scenarios = [
        ("delivered to an address", demo_order(1, run), happy),
        ("delivered to a parcel locker", demo_order(2, run, locker=True), happy),
        ("locker parcel left uncollected", demo_order(3, run, locker=True, phone=False), lambda c, o: happy(c, o, collect=False)),
        ("cancelled by the customer", demo_order(4, run), cancelled),
        ("never paid", demo_order(5, run), unpaid),
        ("dispatched late", demo_order(6, run, phone=False), late_dispatch),
    ]
    print(f"demo run {run}: {len(scenarios)} orders; watch them at http://localhost:8233")
    for _, order, _ in scenarios:
        await place_order(client, order)
    await asyncio.gather(*(drive(client, order) for _, order, drive in scenarios))
    views = await asyncio.gather(
        *(client.get_workflow_handle(workflow_id_for(o["order_id"]), result_type=OrderStatusView).result() for _, o, _ in scenarios)
    )
    for (title, order, _), view in zip(scenarios, views):
        flags = f" ⚠ {', '.join(view.attention_reasons)}" if view.needs_attention else ""
        print(f"  {order['order_id']:<16} {title:<32} {view.status.value:<10} {len(view.touchpoints)} messages{flags}")
    return list(views)
