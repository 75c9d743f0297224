"""`orders seed-history`: a year of realistic history, deterministic by seed,
bulk-loaded with COPY, so that the WOCAS report and the metrics can be seen
on real-looking data (and measured: `python -m bench wocas`).

Customers come back (or not) after a first order; sellers differ in how
fast they dispatch and how well they are rated, products in how good they
are; deadlines are those of the default journey (JourneySettings): a
dispatch later than dispatch_promised_within gets its dispatch_delayed
touchpoint, a delivery later than delivery_grace after the expected day its
delivery_delayed one, a few parcels are lost, some locker parcels are not
collected within locker_pickup_window. About a third of delivered orders are
rated; low ratings, "not helpful" votes with a comment and some complaints
open cases, in every state. Nothing happens after `until`.
"""

from __future__ import annotations

import math
import random
from decimal import Decimal
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import asyncpg

from store.recommendations import rebuild_rollups
from workflows.models import JourneySettings

SETTINGS = JourneySettings()
CATEGORIES = {
    "kitchen": ["Frying pan", "Chef's knife", "Kettle", "Coffee grinder", "Cutting board", "Mixing bowl set", "Toaster"],
    "lighting": ["Desk lamp", "Floor lamp", "LED strip", "Bedside lamp", "Pendant light", "Smart bulb"],
    "audio": ["Bluetooth speaker", "Wireless earbuds", "Headphones", "Soundbar", "Turntable"],
    "garden": ["Garden hose", "Pruning shears", "Planter", "Solar lantern", "Watering can", "Lawn sprinkler"],
    "toys": ["Building blocks", "Puzzle 1000", "Plush bear", "Remote car", "Board game"],
    "fashion": ["Rain jacket", "Wool scarf", "Leather belt", "Sneakers", "Backpack", "Sunglasses"],
    "office": ["Office chair", "Notebook pack", "Monitor stand", "Desk organiser", "Fountain pen"],
    "sports": ["Yoga mat", "Dumbbells", "Running belt", "Water bottle", "Bike light", "Tennis balls"],
}
SELLERS = [
    ("S01", "Northwind Home"), ("S02", "Bright & Co"), ("S03", "Gadget Garage"), ("S04", "Green Thumb"),
    ("S05", "Playful Things"), ("S06", "Urban Threads"), ("S07", "Desk Works"), ("S08", "Active Life"),
    ("S09", "Kitchen Corner"), ("S10", "Sound Lab"), ("S11", "Budget Bazaar"), ("S12", "Prime Picks"),
]
CASE_TEAMS = {c: f"{c}-team" for c in CATEGORIES}
COMPLAINTS = [
    "The box was damaged and the item arrived broken",
    "Arrived late, two days after the promised date",
    "Wrong size, the description said something else",
    "Stopped working after a week",
    "Not as described in the listing",
    "The courier left the parcel outside in the rain",
    "Missing parts, the instructions were missing too",
    "Cheap quality, feels flimsy",
    "Delivery was late and nobody told me",
    "Item arrived broken, the packaging was too thin",
    "Refund still not received",
    "The colour is different from the photos",
]
PRAISE = ["Great quality, fast delivery", "Exactly as described", "Works perfectly", "Lovely product, well packed", "Good value"]
VOTE_COMPLAINTS = [
    "The tracking link did not work",
    "No delivery date in the message",
    "Too many emails about one order",
    "The tracking link did not work on my phone",
    "I wanted to know when it arrives, not that it was sent",
    "The message came after the parcel",
]
# Share of each touchpoint's votes that say "helpful".
HELPFUL = {
    "order_confirmation": 0.9, "payment_confirmation": 0.88, "dispatch_notice": 0.8, "dispatch_delayed": 0.45,
    "delivery_confirmation": 0.86, "delivery_delayed": 0.4, "feedback_request": 0.7, "parcel_lost": 0.35,
}


class SeedRefused(RuntimeError):
    """The database already holds orders (and --force was not given)."""


@dataclass
class Tables:
    customers: list[tuple] = field(default_factory=list)
    orders: list[tuple] = field(default_factory=list)
    order_items: list[tuple] = field(default_factory=list)
    feedback: list[tuple] = field(default_factory=list)
    item_ratings: list[tuple] = field(default_factory=list)
    message_ledger: list[tuple] = field(default_factory=list)
    message_votes: list[tuple] = field(default_factory=list)
    cases: list[tuple] = field(default_factory=list)
    customer_phase_changes: list[tuple] = field(default_factory=list)
    win_backs: list[tuple] = field(default_factory=list)


COLUMNS = {
    "customers": ("customer_id", "name", "email", "phone", "timezone", "created_at"),
    "orders": (
        "order_id", "customer_id", "seller_id", "seller_name", "placed_at", "currency", "total", "delivery_method", "status",
        "cancellation_reason", "created_at", "paid_at", "dispatched_at", "delivered_at", "pickup_missed_at",
    ),
    "order_items": ("order_id", "line_no", "sku", "name", "category", "quantity", "unit_price"),
    "feedback": ("order_id", "customer_id", "seller_id", "skus", "item_rating", "seller_rating", "comment", "received_at"),
    "item_ratings": ("order_id", "sku", "rating"),
    "message_ledger": (
        "key", "order_id", "kind", "channel", "recipient", "state", "attempts", "created_at", "updated_at", "sent_at",
        "customer_id", "message_class", "delivery", "delivery_at",
    ),
    "message_votes": ("ledger_key", "order_id", "kind", "channel", "helpful", "comment", "voted_at", "commented_at"),
    "cases": (
        "case_id", "order_id", "n", "trigger", "trigger_key", "customer_id", "seller_id", "category", "text", "owner", "status",
        "escalation_level", "due_at", "opened_at", "acknowledged_at", "resolved_at", "resolution", "resolved_by", "reopened_at",
        "sla_breaches",
    ),
    "customer_phase_changes": ("customer_id", "phase", "at", "order_id"),
    "win_backs": ("customer_id", "lapse_no", "grp", "lapsed_at", "reordered_order_id", "reordered_at", "churned_at"),
}

CASE_SLA = timedelta(hours=4)


def default_until() -> datetime:
    """Today, 00:00 UTC: the same history all day for a given seed."""
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


class _History:
    def __init__(self, orders: int, seed: int, until: datetime) -> None:
        self.rng = random.Random(seed)
        self.target = orders
        self.until = until
        self.start = until - timedelta(days=365)
        self.t = Tables()
        self.prefix = f"H{seed}-"
        rng = self.rng
        self.products = []  # (sku, name, category, price, quality)
        n = 0
        for category, names in CATEGORIES.items():
            for name in names:
                for variant in ("", " Plus", " Mini"):
                    n += 1
                    price = Decimal(f"{rng.uniform(8, 180):.2f}")
                    self.products.append((f"SKU-{n:04d}", name + variant, category, price, rng.gauss(4.1, 0.45)))
        self.popularity = [1 / (i + 1) ** 0.8 for i in range(len(self.products))]
        rng.shuffle(self.popularity)
        # Per seller: rating offset, median hours to dispatch, share of stars given to the seller.
        self.sellers = [(sid, name, rng.gauss(0, 0.35), rng.choice([10, 14, 18, 22, 28])) for sid, name in SELLERS]
        self.seller_weights = [rng.uniform(0.5, 3) for _ in SELLERS]
        # Median hours each team takes to acknowledge a case: some miss the SLA often.
        self.ack_hours = {team: rng.choice([1.0, 1.5, 2.0, 3.5]) for team in CASE_TEAMS.values()}
        self.orders = 0
        self.cases_per_order: dict[str, int] = {}

    def id(self, kind: str, n: int) -> str:
        return f"{self.prefix}{kind}{n:07d}"

    def run(self) -> Tables:
        rng, c = self.rng, 0
        while self.orders < self.target:
            c += 1
            self.customer(self.id("C", c), rng)
        return self.t

    # --- customers ------------------------------------------------------------

    def customer(self, cid: str, rng: random.Random) -> None:
        # More customers arrive later in the year: the shop grows.
        first = self.start + timedelta(days=365 * math.sqrt(rng.random()), seconds=rng.randrange(86400))
        self.t.customers.append((cid, f"Customer {cid}", f"{cid.lower()}@example.test", None, "Europe/Warsaw", first))
        at, n, delivered, lapse_no = first, 0, 0, 0
        phase = None
        while at < self.until and self.orders < self.target:
            n += 1
            oid = self.id("O", self.orders + 1)
            self.orders += 1
            order_delivered = self.order(oid, cid, at, rng)
            if n == 1:
                phase = self.phase(cid, "new", at, oid)
            elif phase in ("new",):
                phase = self.phase(cid, "active", at, oid)
            if order_delivered:
                delivered += 1
                if delivered == 3 and phase != "loyal":
                    phase = self.phase(cid, "loyal", min(order_delivered, self.until - timedelta(seconds=1)), oid)
            # Next order: half never come back; the rest after about six weeks.
            if rng.random() < (0.5 if n == 1 else 0.35):
                gap = None
            else:
                gap = timedelta(days=rng.expovariate(1 / 45))
            lapse_at = at + timedelta(days=90)
            if gap is None or gap > timedelta(days=90):
                if lapse_at < self.until:
                    lapse_no += 1
                    comes_back = gap is not None and at + gap < self.until
                    # A win-back makes coming back likelier: most who come back were treated.
                    grp = "treated" if rng.random() < (0.88 if comes_back else 0.76) else "holdout"
                    self.phase(cid, "lapsed", lapse_at, None)
                    next_at = at + gap if comes_back else None
                    churned = lapse_at + timedelta(days=90)
                    self.t.win_backs.append(
                        (
                            cid, lapse_no, grp, lapse_at,
                            self.id("O", self.orders + 1) if comes_back else None, next_at,
                            churned if not comes_back and churned < self.until else None,
                        )
                    )
                    if comes_back:
                        phase = "won_back_pending"
                    elif churned < self.until:
                        self.phase(cid, "churned", churned, None)
                if gap is None:
                    return
            at = at + gap
            if phase == "won_back_pending" and at < self.until:
                phase = self.phase(cid, "won_back", at, self.id("O", self.orders + 1))

    def phase(self, cid: str, phase: str, at: datetime, oid: str | None) -> str:
        self.t.customer_phase_changes.append((cid, phase, at, oid))
        return phase

    # --- orders ---------------------------------------------------------------

    def order(self, oid: str, cid: str, placed: datetime, rng: random.Random) -> datetime | None:
        """Records one order and everything that followed it; returns when it was delivered, if it was."""
        until = self.until
        s = rng.choices(range(len(self.sellers)), self.seller_weights)[0]
        sid, seller_name, seller_offset, dispatch_hours = self.sellers[s]
        picks = rng.choices(range(len(self.products)), self.popularity, k=rng.choice([1, 1, 1, 2, 2, 3]))
        lines, total = [], 0.0
        for line_no, p in enumerate(dict.fromkeys(picks), start=1):
            sku, name, category, price, _ = self.products[p]
            qty = rng.choice([1, 1, 1, 2])
            lines.append((oid, line_no, sku, name, category, qty, price))
            total += qty * float(price)
        self.t.order_items.extend(lines)
        method = "locker" if rng.random() < 0.25 else "address"
        email = f"{cid.lower()}@example.test"
        ledger = self.t.message_ledger

        def message(kind: str, at: datetime, channel: str = "email") -> None:
            if at >= until:
                return
            key = f"{oid}:{kind}:{channel}"
            bad = rng.random() < (0.015 if channel == "email" else 0.03)
            delivery = (rng.choice(["bounced", "dropped"]) if channel == "email" else "undelivered") if bad else "delivered"
            delivery_at = at + timedelta(seconds=rng.randrange(5, 600))
            if delivery_at >= until:
                delivery, delivery_at = None, None
            ledger.append((key, oid, kind, channel, email if channel == "email" else "+48600000000", "sent", 1, at, at, at,
                           cid, "transactional", delivery, delivery_at))
            if channel == "email" and rng.random() < 0.07:
                voted = at + timedelta(hours=rng.expovariate(1 / 6))
                if voted < until:
                    helpful = rng.random() < HELPFUL.get(kind, 0.8)
                    comment = None if helpful or rng.random() < 0.5 else rng.choice(VOTE_COMPLAINTS)
                    commented = voted + timedelta(minutes=rng.randrange(1, 30)) if comment else None
                    if commented and commented >= until:
                        comment, commented = None, None
                    self.t.message_votes.append((key, oid, kind, channel, helpful, comment, voted, commented))
                    if comment:
                        self.case(oid, cid, sid, lines[0][4], "not_helpful", key, comment, commented, rng)

        message("order_confirmation", placed + timedelta(seconds=5))
        status, reason, paid = "open", None, None
        dispatched = delivered = missed = None
        try:
            if rng.random() < 0.03:
                status, reason = "cancelled", "payment not received within 72 hours"
                return None
            paid = placed + timedelta(minutes=rng.expovariate(1 / 40))
            if paid >= until:
                paid = None
                return None
            message("payment_confirmation", paid + timedelta(seconds=3))
            dispatched = paid + timedelta(hours=rng.lognormvariate(math.log(dispatch_hours), 0.5))
            if dispatched - paid > SETTINGS.dispatch_promised_within:
                message("dispatch_delayed", paid + SETTINGS.dispatch_promised_within)
                if dispatched - paid > SETTINGS.dispatch_deadline:
                    status, reason = "cancelled", "not dispatched within 7 days of payment; a full refund follows"
                    dispatched = None
                    return None
            if dispatched >= until:
                dispatched = None
                return None
            message("dispatch_notice", dispatched)
            if rng.random() < 0.5:
                message("dispatch_notice", dispatched, "sms")
            expected = dispatched + timedelta(days=2)
            late_at = expected + SETTINGS.delivery_grace
            if rng.random() < 0.003:
                message("delivery_delayed", late_at)
                message("parcel_lost", expected + SETTINGS.delivery_deadline)
                return None
            delivered = dispatched + timedelta(hours=rng.lognormvariate(math.log(40), 0.45))
            if delivered > late_at:
                message("delivery_delayed", late_at)
            if delivered >= until:
                delivered = None
                return None
            message("delivery_confirmation", delivered)
            if method == "locker" and rng.random() < 0.06:
                missed = delivered + SETTINGS.locker_pickup_window
                missed = missed if missed < until else None
            asked = delivered + SETTINGS.feedback_delay
            message("feedback_request", asked)
            late = (dispatched - paid > SETTINGS.dispatch_promised_within) or delivered > late_at
            if asked < until and rng.random() < 0.35:
                self.feedback(oid, cid, sid, seller_offset, lines, asked, late, rng)
            elif rng.random() < 0.004:
                opened = delivered + timedelta(hours=rng.uniform(2, 200))
                if opened < until:
                    self.case(oid, cid, sid, lines[0][4], "complaint", f"{oid}:complaint", rng.choice(COMPLAINTS), opened, rng)
            return delivered
        finally:
            self.t.orders.append(
                (oid, cid, sid, seller_name, placed, "EUR", Decimal(f"{total:.2f}"), method, status, reason, placed,
                 paid, dispatched, delivered, missed)
            )

    def feedback(self, oid, cid, sid, seller_offset, lines, asked, late, rng) -> None:
        received = asked + timedelta(hours=rng.expovariate(1 / 30))
        if received >= self.until:
            return
        penalty = 1.2 if late else 0.0

        def stars(mean: float) -> int:
            return max(1, min(5, round(rng.gauss(mean, 0.8))))

        ratings = {line[2]: stars(self.products[int(line[2][4:]) - 1][4] - penalty * 0.5) for line in lines}
        seller_rating = stars(4.2 + seller_offset - penalty)
        item_rating = round(sum(ratings.values()) / len(ratings))
        low = min(item_rating, seller_rating)
        comment = None
        if rng.random() < 0.45:
            comment = rng.choice(COMPLAINTS if low <= 3 else PRAISE)
        self.t.feedback.append((oid, cid, sid, list(ratings), item_rating, seller_rating, comment, received))
        self.t.item_ratings.extend((oid, sku, r) for sku, r in ratings.items())
        if low <= 2:
            self.case(oid, cid, sid, lines[0][4], "low_rating", f"{oid}:feedback", comment, received, rng)

    def case(self, oid, cid, sid, category, trigger, trigger_key, text, opened, rng) -> None:
        n = self.cases_per_order.get(oid, 0) + 1
        self.cases_per_order[oid] = n
        owner = CASE_TEAMS[category]
        ack_after = timedelta(hours=rng.lognormvariate(math.log(self.ack_hours[owner]), 0.8))
        if rng.random() < 0.1:  # left lying for days: escalated, overdue while it lasts
            ack_after = timedelta(days=rng.uniform(1, 6))
        breaches = int(ack_after // CASE_SLA)
        acknowledged = opened + ack_after
        resolved = acknowledged + timedelta(hours=rng.lognormvariate(math.log(30), 0.7))
        reopened = None
        level = min(breaches, 2)
        if acknowledged >= self.until:
            # Not acknowledged yet: open, or escalated once per SLA passed so far.
            passed = int((self.until - opened) // CASE_SLA)
            status, level, breaches = ("escalated", min(passed, 2), passed) if passed else ("open", 0, 0)
            # Past the last level nobody else is told: overdue until someone acts.
            due = opened + CASE_SLA * (min(passed, 2) + 1)
            acknowledged = resolved = None
        elif resolved >= self.until:
            status, due, resolved = "acknowledged", None, None
        else:
            status, due = "resolved", None
            if rng.random() < 0.05:
                reopened = resolved + timedelta(days=1)
                if reopened < self.until:
                    resolved = reopened + timedelta(hours=rng.uniform(4, 48))
                    if resolved >= self.until:
                        status, resolved = "acknowledged", None
                else:
                    reopened = None
        self.t.cases.append(
            (f"case-{oid}-{n}", oid, n, trigger, trigger_key, cid, sid, category, text, owner, status, level, due, opened,
             acknowledged, resolved, None if resolved is None else "refund offered", None if resolved is None else owner,
             reopened, breaches)
        )


def generate(orders: int, seed: int, until: datetime) -> Tables:
    """The history, in memory (the same for the same arguments)."""
    if orders < 1:
        raise ValueError(f"--orders must be at least 1, not {orders}")
    return _History(orders, seed, until).run()


async def seed_history(conn: asyncpg.Connection, orders: int, seed: int, until: datetime, *, force: bool = False) -> dict[str, int]:
    """Loads the history with COPY in one transaction; returns rows per table.
    Refuses a database that already holds orders unless `force`."""
    if not force and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM orders)"):
        raise SeedRefused(
            "the database already holds orders: seed-history fills a database for trying the report, "
            "not one in use (--force to add to it anyway)"
        )
    tables = generate(orders, seed, until)
    counts = {}
    async with conn.transaction():
        for table, columns in COLUMNS.items():
            rows = getattr(tables, table)
            await conn.copy_records_to_table(table, records=rows, columns=columns)
            counts[table] = len(rows)
        await rebuild_rollups(conn)
    await conn.execute("ANALYZE")
    return counts
