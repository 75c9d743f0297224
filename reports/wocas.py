"""The report "What our customers are saying" for a period (default: the 7
days before a moment), compared with the period before, from PostgreSQL in a
handful of set-based queries:

- rating averages per product (item_ratings), category (the item's) and
  seller (feedback.seller_rating), counted by when the feedback came in
  (feedback.received_at), with their volume and trend;
- "Was this helpful?" votes per touchpoint (message_votes.kind);
- complaint themes: keywords and two- and three-word phrases shared by
  several complaints (feedback comments with a rating of 3 or less, comments
  on "not helpful" votes, case texts; each distinct text once);
- cases: open ones per owner and status, the overdue ones (acknowledgement
  due before the period's end), and the period's flow (as the cases table
  holds them now: a case keeps only its current state);
- deadline breaches of the order journeys, per seller: late dispatch and late
  delivery (the ledger rows of the dispatch_delayed and delivery_delayed
  touchpoints the workflow sends at those deadlines), parcels declared lost
  (parcel_lost), lockers not collected (orders.pickup_missed_at);
- the lifecycle metrics (reports/metrics.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg

from reports.metrics import Metric, lifecycle_metrics
from reports.period import Period

BREACHES = ("late_dispatch", "late_delivery", "parcel_lost", "locker_not_collected")
BREACH_TITLES = {
    "late_dispatch": "Late dispatch",
    "late_delivery": "Late delivery",
    "parcel_lost": "Parcel lost",
    "locker_not_collected": "Locker not collected",
}
CASE_STATUSES = ("open", "acknowledged", "escalated", "resolved")
OVERDUE_LISTED = 25
THEMES_LISTED = 12

# Words that carry no theme. Comments are split on anything not a letter, so
# "didn't" gives "didn" (listed) and "t" (too short).
STOP_WORDS = sorted(
    set(
        """
        a about above after again against all also am an and any are aren as at be because been before being below
        between both but by can cannot could couldn did didn do does doesn doing don down during each few for from
        further get got had hadn has hasn have haven having he her here hers herself him himself his how i if in into
        is isn it its itself just let me more most much my myself no nor not now of off on once only or other ought our
        ours ourselves out over own same shan she should shouldn so some such than that the their theirs them
        themselves then there these they this those through to too under until up very was wasn we were weren what
        when where which while who whom why will with won would wouldn you your yours yourself yourselves
        really still even ever one two three please thanks thank yes okay ok im ive dont also way thing things lot
        """.split()
    )
)

RATINGS_BY_ITEM = """
WITH rated AS (
    SELECT r.rating, f.received_at >= $2 AS now, i.sku, i.name, i.category
    FROM feedback f
    JOIN item_ratings r ON r.order_id = f.order_id
    CROSS JOIN LATERAL (
        SELECT sku, name, category FROM order_items oi WHERE oi.order_id = r.order_id AND oi.sku = r.sku LIMIT 1
    ) i
    WHERE f.received_at >= $1 AND f.received_at < $3
)
SELECT GROUPING(sku) = 1 AS is_category, coalesce(sku, category) AS key,
       CASE WHEN GROUPING(sku) = 1 THEN category ELSE min(name) END AS name, category,
       avg(rating) FILTER (WHERE now) AS avg_now, count(*) FILTER (WHERE now) AS n_now,
       avg(rating) FILTER (WHERE NOT now) AS avg_before, count(*) FILTER (WHERE NOT now) AS n_before
FROM rated
GROUP BY GROUPING SETS ((sku, category), (category))
"""

RATINGS_BY_SELLER = """
SELECT f.seller_id AS key, s.seller_name AS name, NULL AS category,
       avg(f.seller_rating) FILTER (WHERE f.received_at >= $2) AS avg_now,
       count(*) FILTER (WHERE f.received_at >= $2) AS n_now,
       avg(f.seller_rating) FILTER (WHERE f.received_at < $2) AS avg_before,
       count(*) FILTER (WHERE f.received_at < $2) AS n_before
FROM feedback f
CROSS JOIN LATERAL (SELECT seller_name FROM orders o WHERE o.order_id = f.order_id) s
WHERE f.received_at >= $1 AND f.received_at < $3
GROUP BY f.seller_id, s.seller_name
"""

VOTES = """
SELECT kind,
       count(*) FILTER (WHERE voted_at >= $2) AS votes, count(*) FILTER (WHERE voted_at >= $2 AND helpful) AS helpful,
       count(comment) FILTER (WHERE voted_at >= $2) AS comments,
       count(*) FILTER (WHERE voted_at < $2) AS votes_before, count(*) FILTER (WHERE voted_at < $2 AND helpful) AS helpful_before
FROM message_votes WHERE voted_at >= $1 AND voted_at < $3
GROUP BY kind
"""

# Each complaint text once; words lower-cased, a plural "s" dropped from
# longer words (not "ss", "us", "is"), stop words left out; a phrase is two
# or three words next to each other once stop words are out ("box was
# damaged": "box damaged").
COMPLAINT_TEXTS = """
SELECT DISTINCT text FROM (
    SELECT comment AS text FROM feedback
    WHERE received_at >= $1 AND received_at < $2 AND comment IS NOT NULL AND least(item_rating, seller_rating) <= 3
    UNION ALL
    SELECT comment FROM message_votes
    WHERE NOT helpful AND comment IS NOT NULL AND coalesce(commented_at, voted_at) >= $1 AND coalesce(commented_at, voted_at) < $2
    UNION ALL
    SELECT text FROM cases WHERE opened_at >= $1 AND opened_at < $2 AND text IS NOT NULL
) complaints
"""

COUNT_COMPLAINTS = f"SELECT count(*) FROM ({COMPLAINT_TEXTS}) c"

THEMES = f"""
WITH docs AS ({COMPLAINT_TEXTS}),
words AS (
    SELECT d.text AS doc, t.pos,
           CASE WHEN length(t.word) > 4 AND t.word ~ '[^siu]s$' THEN left(t.word, -1) ELSE t.word END AS word
    FROM docs d CROSS JOIN LATERAL regexp_split_to_table(lower(d.text), '[^[:alpha:]]+') WITH ORDINALITY AS t(word, pos)
    WHERE length(t.word) >= 3 AND t.word <> ALL($3::text[])
),
seq AS (
    SELECT doc, word, lead(word) OVER w AS w2, lead(word, 2) OVER w AS w3
    FROM words WINDOW w AS (PARTITION BY doc ORDER BY pos)
),
terms AS (
    SELECT doc, word AS term, 1 AS size FROM seq
    UNION ALL SELECT doc, word || ' ' || w2, 2 FROM seq WHERE w2 IS NOT NULL
    UNION ALL SELECT doc, word || ' ' || w2 || ' ' || w3, 3 FROM seq WHERE w3 IS NOT NULL
),
counted AS (
    SELECT term, size, count(DISTINCT doc) AS documents FROM terms GROUP BY term, size HAVING count(DISTINCT doc) >= 2
)
SELECT term, size, documents, (SELECT count(*) FROM docs) AS complaints
FROM (SELECT *, row_number() OVER (PARTITION BY size = 1 ORDER BY documents DESC, size DESC, term) AS rank FROM counted) ranked
WHERE rank <= $4
ORDER BY size = 1, documents DESC, size DESC, term
"""

CASES_BY_OWNER = """
SELECT coalesce(owner, '(no owner)') AS owner,
       count(*) FILTER (WHERE status = 'open') AS open,
       count(*) FILTER (WHERE status = 'acknowledged') AS acknowledged,
       count(*) FILTER (WHERE status = 'escalated') AS escalated,
       count(*) FILTER (WHERE due_at < $1) AS overdue,
       min(opened_at) AS oldest
FROM cases WHERE status NOT IN ('resolved', 'closed')
GROUP BY 1 ORDER BY overdue DESC, count(*) DESC, 1
"""

OVERDUE_CASES = """
SELECT case_id, coalesce(owner, '(no owner)') AS owner, status, escalation_level, trigger, seller_id, opened_at, due_at,
       count(*) OVER () AS total
FROM cases WHERE status NOT IN ('resolved', 'closed') AND due_at < $1
ORDER BY due_at, case_id LIMIT $2
"""

CASE_FLOW = """
SELECT count(*) FILTER (WHERE opened_at >= $1 AND opened_at < $2) AS opened,
       count(*) FILTER (WHERE opened_at >= $1 AND opened_at < $2 AND trigger = 'low_rating') AS low_rating,
       count(*) FILTER (WHERE opened_at >= $1 AND opened_at < $2 AND trigger = 'not_helpful') AS not_helpful,
       count(*) FILTER (WHERE opened_at >= $1 AND opened_at < $2 AND trigger = 'complaint') AS complaint,
       count(*) FILTER (WHERE resolved_at >= $1 AND resolved_at < $2) AS resolved,
       count(*) FILTER (WHERE reopened_at >= $1 AND reopened_at < $2) AS reopened,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM resolved_at - opened_at))
           FILTER (WHERE resolved_at >= $1 AND resolved_at < $2) / 3600 AS resolve_p50_hours,
       count(*) FILTER (WHERE status = 'open') AS now_open,
       count(*) FILTER (WHERE status = 'acknowledged') AS now_acknowledged,
       count(*) FILTER (WHERE status = 'escalated') AS now_escalated
FROM cases
WHERE opened_at >= $1 OR resolved_at >= $1 OR reopened_at >= $1 OR status NOT IN ('resolved', 'closed')
"""

DEADLINE_BREACHES = """
WITH breaches AS (
    SELECT order_id,
           CASE kind WHEN 'dispatch_delayed' THEN 'late_dispatch' WHEN 'delivery_delayed' THEN 'late_delivery' ELSE kind END AS breach,
           min(created_at) >= $2 AS now
    FROM message_ledger
    WHERE kind IN ('dispatch_delayed', 'delivery_delayed', 'parcel_lost') AND created_at >= $1 AND created_at < $3
      AND order_id IS NOT NULL
    GROUP BY order_id, kind
    UNION ALL
    SELECT order_id, 'locker_not_collected', pickup_missed_at >= $2
    FROM orders WHERE pickup_missed_at >= $1 AND pickup_missed_at < $3
)
SELECT o.seller_id, min(o.seller_name) AS seller_name, b.breach,
       count(*) FILTER (WHERE b.now) AS now, count(*) FILTER (WHERE NOT b.now) AS before
FROM breaches b JOIN orders o USING (order_id)
GROUP BY o.seller_id, b.breach
"""

ORDERS_PER_SELLER = """
SELECT seller_id, min(seller_name) AS seller_name,
       count(*) FILTER (WHERE placed_at >= $2) AS now, count(*) FILTER (WHERE placed_at < $2) AS before
FROM orders WHERE placed_at >= $1 AND placed_at < $3
GROUP BY seller_id
"""


@dataclass(frozen=True)
class Rating:
    """Average stars of one product, category or seller, now and before."""

    key: str
    name: str
    category: str | None
    average: float | None
    count: int
    average_before: float | None
    count_before: int

    @property
    def trend(self) -> float | None:
        if self.average is None or self.average_before is None:
            return None
        return self.average - self.average_before


@dataclass(frozen=True)
class Votes:
    kind: str
    votes: int
    helpful: int
    comments: int
    votes_before: int
    helpful_before: int

    @property
    def rate(self) -> float | None:
        return self.helpful / self.votes if self.votes else None

    @property
    def rate_before(self) -> float | None:
        return self.helpful_before / self.votes_before if self.votes_before else None


@dataclass(frozen=True)
class Theme:
    term: str
    words: int
    complaints: int  # distinct complaint texts that use it


@dataclass(frozen=True)
class OwnerCases:
    owner: str
    open: int
    acknowledged: int
    escalated: int
    overdue: int
    oldest: datetime


@dataclass(frozen=True)
class OverdueCase:
    case_id: str
    owner: str
    status: str
    escalation_level: int
    trigger: str
    seller_id: str
    opened_at: datetime
    due_at: datetime


@dataclass(frozen=True)
class CaseFlow:
    opened: int
    by_trigger: dict[str, int]
    resolved: int
    reopened: int
    resolve_p50_hours: float | None
    by_status: dict[str, int]  # the cases not resolved, by status now


@dataclass
class SellerBreaches:
    seller_id: str
    seller_name: str
    orders: int = 0
    orders_before: int = 0
    now: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BREACHES, 0))
    before: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BREACHES, 0))


@dataclass
class Report:
    period: Period
    built_at: datetime
    products: list[Rating]
    categories: list[Rating]
    sellers: list[Rating]
    votes: list[Votes]
    themes: list[Theme]
    complaints: int  # distinct complaint texts in the period
    owners: list[OwnerCases]
    overdue: list[OverdueCase]
    overdue_total: int
    case_flow: CaseFlow
    breaches: list[SellerBreaches]  # per seller, most breaches first
    metrics: list[Metric]

    def breach_totals(self, which: str = "now") -> dict[str, int]:
        return {b: sum(getattr(s, which)[b] for s in self.breaches) for b in BREACHES}


def _rating(row: asyncpg.Record) -> Rating:
    def avg(value: object) -> float | None:
        return None if value is None else float(value)

    return Rating(
        key=row["key"],
        name=row["name"] or row["key"],
        category=row["category"],
        average=avg(row["avg_now"]),
        count=row["n_now"],
        average_before=avg(row["avg_before"]),
        count_before=row["n_before"],
    )


def _by_volume(ratings: list[Rating]) -> list[Rating]:
    return sorted(ratings, key=lambda r: (-r.count, -r.count_before, r.key))


async def build_report(
    db: asyncpg.Pool | asyncpg.Connection, period: Period, targets: Mapping[str, float]
) -> Report:
    before = period.previous
    span = (before.start, period.start, period.end)

    items = [(_rating(r), r["is_category"]) for r in await db.fetch(RATINGS_BY_ITEM, *span)]
    products = _by_volume([r for r, is_category in items if not is_category])
    categories = _by_volume([r for r, is_category in items if is_category])
    sellers = _by_volume([_rating(r) for r in await db.fetch(RATINGS_BY_SELLER, *span)])

    votes = sorted(
        (Votes(**dict(r)) for r in await db.fetch(VOTES, *span)), key=lambda v: (-v.votes, v.kind)
    )

    theme_rows = await db.fetch(THEMES, period.start, period.end, STOP_WORDS, THEMES_LISTED)
    themes = [Theme(term=r["term"], words=r["size"], complaints=r["documents"]) for r in theme_rows]
    complaints = theme_rows[0]["complaints"] if theme_rows else await db.fetchval(COUNT_COMPLAINTS, period.start, period.end)

    owners = [OwnerCases(**dict(r)) for r in await db.fetch(CASES_BY_OWNER, period.end)]
    overdue_rows = await db.fetch(OVERDUE_CASES, period.end, OVERDUE_LISTED)
    overdue = [OverdueCase(**{k: v for k, v in dict(r).items() if k != "total"}) for r in overdue_rows]
    flow = await db.fetchrow(CASE_FLOW, period.start, period.end)
    case_flow = CaseFlow(
        opened=flow["opened"],
        by_trigger={t: flow[t] for t in ("low_rating", "not_helpful", "complaint")},
        resolved=flow["resolved"],
        reopened=flow["reopened"],
        resolve_p50_hours=flow["resolve_p50_hours"],
        by_status={s: flow[f"now_{s}"] for s in CASE_STATUSES if s != "resolved"},
    )

    sellers_breaches: dict[str, SellerBreaches] = {}
    for r in await db.fetch(ORDERS_PER_SELLER, *span):
        sellers_breaches[r["seller_id"]] = SellerBreaches(r["seller_id"], r["seller_name"], r["now"], r["before"])
    for r in await db.fetch(DEADLINE_BREACHES, *span):
        s = sellers_breaches.setdefault(r["seller_id"], SellerBreaches(r["seller_id"], r["seller_name"]))
        s.now[r["breach"]] = r["now"]
        s.before[r["breach"]] = r["before"]
    breaches = sorted(sellers_breaches.values(), key=lambda s: (-sum(s.now.values()), -s.orders, s.seller_id))

    return Report(
        period=period,
        built_at=datetime.now(timezone.utc),
        products=products,
        categories=categories,
        sellers=sellers,
        votes=votes,
        themes=themes,
        complaints=complaints,
        owners=owners,
        overdue=overdue,
        overdue_total=overdue_rows[0]["total"] if overdue_rows else 0,
        case_flow=case_flow,
        breaches=breaches,
        metrics=await lifecycle_metrics(db, period, targets),
    )
