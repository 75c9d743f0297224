"""A handful of orders through the whole journey in about a minute, with
short per-order delays, to watch in the Web UI; with `orders up --demo`, also
six customers through every phase of their lifecycle (new, active, loyal,
lapsed, won_back, churned) in under two minutes, on a worker whose lifecycle
durations are shortened by DEMO_WORKER_ENV."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from starter.cli import place_order, send_event
from starter.demo_answers import DemoAnswers
from workflows.clock import local_date
from workflows.customer_journey import in_holdout
from workflows.ledger_key import LedgerKey
from workflows.models import CustomerPhase, CustomerView, DeliveryState, OrderStatusView, customer_workflow_id, workflow_id_for

# What `orders up --demo` gives the worker it starts: a customer lapses 40 s
# after their last order, gets the win-back reminder 15 s later and churns 15 s
# after that; three delivered orders make them loyal; SMS never wait for the
# morning; and the welcome, recommendations, loyalty reward and win-back of one
# minute stay within the marketing cap (2 a week by default).
DEMO_WORKER_ENV = {
    "LIFECYCLE_LAPSE_AFTER": "40s",
    "LIFECYCLE_WIN_BACK_RETRY_AFTER": "15s",
    "LIFECYCLE_CHURN_AFTER": "15s",
    "LIFECYCLE_LOYAL_AFTER_ORDERS": "3",
    "LIFECYCLE_HOLDOUT_SHARE": "0.1",
    "JOURNEY_SMS_QUIET_FROM": "0s",
    "JOURNEY_SMS_QUIET_UNTIL": "0s",
    "MARKETING_CAP": "20",
    # A case escalates after 8 s unacknowledged, and once more 8 s later.
    "CASE_SLA": "8s",
    "CASE_DEFAULT_OWNER": "care-team@shop.example",
    "CASE_ESCALATION": "care-lead@shop.example,head-of-care@shop.example",
    "CASE_REOPEN_WINDOW": "30s",
}

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
    "report_window": "PT5S",
    # No quiet hours: an SMS at night goes at once instead of in the morning.
    "sms_quiet_from": "PT0S",
    "sms_quiet_until": "PT0S",
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


def customers_today(order: dict[str, Any]) -> str:
    """The date where the customer is: a delivery expected "today" by the UTC
    date would already be late in Warsaw between 23:00 and midnight UTC."""
    return local_date(datetime.now(timezone.utc), order["customer"]["timezone"]).isoformat()


async def happy(client: Client, order: dict[str, Any], *, collect: bool = True, answers: DemoAnswers | None = None) -> None:
    """Paid, dispatched, delivered, rated: through the feedback page, with
    votes under its mails, when `answers` can reach the HTTP service."""
    oid = order["order_id"]
    today = customers_today(order)
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
    if answers:
        await answers.vote(str(LedgerKey.of_order(oid, "order_confirmation", "email")), helpful=True)
        await answers.rate(oid, [4] * len(order["items"]), 5, "Good keyboard, quick delivery.")
        complaint = "The courier left the parcel at the door without ringing."
        if await answers.vote(str(LedgerKey.of_order(oid, "delivery_confirmation", "email")), helpful=False, comment=complaint):
            await answers.escalate_and_resolve(client, oid)
        return
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
        {"carrier": "DHL", "tracking_number": "TRK-LATE", "expected_delivery": customers_today(order)},
        sync=True,
    )
    await asyncio.sleep(2)
    await send_event(client, order["order_id"], "order_delivered", {"delivered_at": datetime.now(timezone.utc).isoformat()}, sync=True)


async def run_demo(
    client: Client, *, lifecycle: bool = False, database_url: str | None = None, web_url: str | None = None
) -> list[OrderStatusView]:
    """The order scenarios; with `lifecycle` (a worker started with
    DEMO_WORKER_ENV), the customer lifecycle alongside them. `database_url`
    lets the won-back customer redeem their win-back coupon, and prints the
    lifecycle report at the end; with `web_url` too, a customer answers
    through the HTTP service's pages."""
    run = uuid.uuid4().hex[:6]
    answers = DemoAnswers(database_url, web_url) if database_url and web_url else None
    customers = asyncio.create_task(customer_lifecycle(client, run, database_url)) if lifecycle else None
    try:
        views = await order_scenarios(client, run, answers)
        if customers:
            await customers
    finally:
        if customers and not customers.done():
            customers.cancel()
    if database_url:
        await wocas_report(database_url, run)
        await forget(client, database_url, demo_order(4, run)["customer"]["customer_id"])
    return views


async def forget(client: Client, database_url: str, customer_id: str) -> None:
    """The customer who cancelled asks to be forgotten, as `orders forget` does it."""
    import json

    from starter.cli import forget_customer

    receipt = await forget_customer(client, customer_id, "orders up --demo", database_url)
    print(f"\n`orders forget {customer_id}`: the customer who cancelled is forgotten; the receipt:")
    print(json.dumps(receipt, indent=2))
    if receipt["state"] != "completed":
        print("Completed once their workflows have closed and their data keys are shredded: the HTTP service's relay "
              "does it within minutes (GET /erasures/{receipt_id} shows it).")


async def wocas_report(database_url: str, run: str) -> None:
    """The week's "What our customers are saying", the demo's answers in it."""
    import argparse

    from reports.cli import report
    from starter.cli import DATA_DIR

    page = await report(argparse.Namespace(until=None, days=7, out=DATA_DIR / "wocas-reports" / f"demo-{run}"), database_url)
    print(f"\n`orders report wocas`: this week's \"What our customers are saying\", to open in a browser: {page.resolve()}")


async def order_scenarios(client: Client, run: str, answers: DemoAnswers | None = None) -> list[OrderStatusView]:
    scenarios = [
        ("delivered to an address", demo_order(1, run), lambda c, o: happy(c, o, answers=answers)),
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
    if answers:
        print("What the customer answered, through the HTTP service's pages:")
        for line in answers.told:
            print(f"  {line}")
    return list(views)


# --- the customer lifecycle -------------------------------------------------------------

# How long the demo waits for one step before it reports it missing and goes on.
STEP_TIMEOUT = 90.0


def demo_customer_id(run: str, who: str, *, holdout: bool) -> str:
    """A customer id on the wanted side of the demo worker's holdout."""
    share = float(DEMO_WORKER_ENV["LIFECYCLE_HOLDOUT_SHARE"])
    for n in range(10_000):
        candidate = f"demo-{run}-{who}" + (f"-{n}" if n else "")
        if in_holdout(candidate, share) == holdout:
            return candidate
    raise RuntimeError("no customer id on that side of the holdout")


def customer_order(customer: dict[str, Any], n: int, k: int, run: str, coupon_code: str | None = None) -> dict[str, Any]:
    """Order number `k` of a lifecycle customer, with their marketing consent."""
    order = demo_order(n + k, run)
    order["order_id"] = f"{customer['customer_id']}-o{k}"
    order["customer"] = customer
    if coupon_code:
        order["coupon_code"] = coupon_code
    return order


async def deliver(client: Client, order: dict[str, Any]) -> None:
    """Paid, dispatched and delivered at once; the order completes by itself
    once its feedback window and recommendations are over."""
    oid, today = order["order_id"], customers_today(order)
    await send_event(client, oid, "payment_received", payment(order), sync=True)
    await send_event(client, oid, "order_dispatched", {"carrier": "DHL", "tracking_number": f"TRK-{oid}", "expected_delivery": today}, sync=True)
    await send_event(client, oid, "order_delivered", {"delivered_at": datetime.now(timezone.utc).isoformat()}, sync=True)


class DemoCustomer:
    """One customer of the lifecycle demo, and what the demo saw of it."""

    def __init__(self, client: Client, run: str, n: int, who: str, story: str, *, holdout: bool = False) -> None:
        self.client, self.run, self.n, self.story = client, run, n, story
        cid = demo_customer_id(run, who, holdout=holdout)
        self.customer = {
            "customer_id": cid,
            "name": f"Demo {who.replace('-', ' ').title()}",
            "email": f"{cid}@example.com",
            "phone": f"+4860020{n:04d}",
            "timezone": "Europe/Warsaw",
            "marketing_consent": {"email": True},
        }
        self.handle = client.get_workflow_handle(customer_workflow_id(cid))
        self.orders = 0
        self.view: CustomerView | None = None
        # Phase -> seconds after the demo's start when the customer entered it.
        self.reached: dict[str, float | None] = {}
        self.missing: str | None = None

    @property
    def customer_id(self) -> str:
        return self.customer["customer_id"]

    async def order(self, t0: datetime, coupon_code: str | None = None, *, delivered: bool = True) -> None:
        """Place the next order, wait until the customer's workflow has heard
        of it (so each order is news to it, in turn), then deliver it."""
        self.orders += 1
        order = customer_order(self.customer, self.n, self.orders, self.run, coupon_code)
        await place_order(self.client, order)
        await self.until(t0, lambda v: v.orders_total >= self.orders, f"order {self.orders} reaching the customer")
        if delivered:
            await deliver(self.client, order)

    async def poll(self, t0: datetime) -> CustomerView | None:
        try:
            view = await self.handle.query("status", result_type=CustomerView)
        except RPCError:
            return None  # not started yet
        self.view = view
        for line in view.timeline:  # phases entered between two polls
            if " UTC phase " in line:
                self.reached.setdefault(line.split(" UTC phase ", 1)[1].split(" ")[0], None)
        if self.reached.get(view.phase.value) is None:
            since = view.phase_since or datetime.now(timezone.utc)
            self.reached[view.phase.value] = max(0.0, (since - t0).total_seconds())
        return view

    async def until(self, t0: datetime, predicate: Any, what: str) -> CustomerView | None:
        deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            view = await self.poll(t0)
            if view is not None and predicate(view):
                return view
            await asyncio.sleep(0.5)
        self.missing = f"gave up waiting for {what} after {STEP_TIMEOUT:.0f} s"
        print(f"  ! {self.customer_id}: {self.missing}; last seen: {self.view.model_dump_json() if self.view else 'no workflow'}")
        return None

    def path(self) -> str:
        # "new" is where every customer starts, with their first order.
        order = ["new"] + [p for p in self.reached if p != "new"]
        return " → ".join(p + (f" (+{self.reached[p]:.0f}s)" if self.reached.get(p) is not None else "") for p in order)


def sent(view: CustomerView, kind: str) -> bool:
    return any(LedgerKey.parse(key).kind == kind and state is DeliveryState.SENT for key, state in view.messages.items())


async def win_back_coupon(database_url: str | None, customer_id: str) -> str | None:
    if not database_url:
        return None
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT code FROM coupons WHERE customer_id = $1 AND milestone LIKE 'win_back-%' ORDER BY issued_at DESC LIMIT 1",
            customer_id,
        )
    finally:
        await conn.close()


async def customer_lifecycle(client: Client, run: str, database_url: str | None) -> list[DemoCustomer]:
    """Three customers order once and lapse; one of them comes back after the
    win-back, one ignores it and its reminder, one is in the holdout and gets
    nothing. Once they have lapsed (after 40 s), three more order: once,
    twice, and three times (loyal), so they are still new, active and loyal
    when the others have churned."""
    t0 = datetime.now(timezone.utc)
    lapse = DEMO_WORKER_ENV["LIFECYCLE_LAPSE_AFTER"]
    won_back = DemoCustomer(client, run, 11, "won-back", "lapses, orders after the win-back")
    churned = DemoCustomer(client, run, 12, "churned", "lapses, ignores win-back and reminder")
    holdout = DemoCustomer(client, run, 13, "holdout", "lapses in the holdout: no win-back", holdout=True)
    new = DemoCustomer(client, run, 14, "new", "orders once")
    active = DemoCustomer(client, run, 15, "active", "orders twice")
    loyal = DemoCustomer(client, run, 16, "loyal", "three delivered orders")
    everyone = [new, active, loyal, won_back, churned, holdout]
    print(
        f"demo run {run}: {len(everyone)} customers through every phase in under two minutes "
        f"(lapse after {lapse}, win-back reminder and churn 15 s apart)"
    )

    async def comes_back() -> None:
        await won_back.order(t0)
        view = await won_back.until(t0, lambda v: v.phase is CustomerPhase.LAPSED and sent(v, "win_back"), "the win-back")
        if view is None:
            return
        await won_back.order(t0, await win_back_coupon(database_url, won_back.customer_id))
        await won_back.until(t0, lambda v: v.phase is CustomerPhase.WON_BACK, "won_back")

    async def drifts_away(c: DemoCustomer) -> None:
        await c.order(t0)
        await c.until(t0, lambda v: v.phase is CustomerPhase.LAPSED, "lapsed")
        await c.until(t0, lambda v: v.phase is CustomerPhase.CHURNED, "churned")

    async def stays(c: DemoCustomer, orders: int, phase: CustomerPhase) -> None:
        # Ordering once the first ones have lapsed, they lapse only after the demo.
        await churned.until(t0, lambda v: v.lapses > 0, "the first lapse")
        for _ in range(orders):
            await c.order(t0)
        await c.until(t0, lambda v: v.phase is phase, phase.value)

    await asyncio.gather(
        comes_back(),
        drifts_away(churned),
        drifts_away(holdout),
        stays(new, 1, CustomerPhase.NEW),
        stays(active, 2, CustomerPhase.ACTIVE),
        stays(loyal, 3, CustomerPhase.LOYAL),
    )
    took = (datetime.now(timezone.utc) - t0).total_seconds()
    print(f"Customer lifecycle, demo run {run} ({took:.0f} s; times from the start of the demo):")
    for c in everyone:
        now = c.view.phase.value if c.view else "?"
        print(f"  {c.customer_id:<24} {c.story:<38} {c.path()}   now {now}")
    seen = {p for c in everyone for p in c.reached} | {"new"}
    missing = [p.value for p in CustomerPhase if p.value not in seen]
    print(f"  phases reached: {', '.join(p.value for p in CustomerPhase if p.value in seen)}" + (f"; not reached: {', '.join(missing)}" if missing else ""))
    print("  See them: temporal workflow list --query 'CustomerPhase=\"lapsed\"'  (or churned, won_back, loyal, active, new)")
    print(f"  The new, active and loyal ones lapse too, {lapse} after their last order, while the worker runs.")
    if database_url:
        from starter.lifecycle_report import format_report, lifecycle_report

        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            today = datetime.now(timezone.utc).date()
            rows = await lifecycle_report(conn, since=today, until=today)
        finally:
            await conn.close()
        print("\n`orders lifecycle report` now (every customer on record, the order demo's included):\n")
        print(format_report(rows))
    return everyone
