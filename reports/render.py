"""The report as HTML a department lead reads: headline figures first, then
each department's section (sellers, categories, delivery, customer service)
with tables and charts, and the figures as CSV. One rendering for a folder
(index.html, the charts as PNG files beside it, figures.csv) and one for
email (charts as inline CID attachments), for the whole report or a lead's
sections only."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import escape
from pathlib import Path

from reports import charts
from reports.config import SECTION_TITLES, SECTIONS, Lead
from reports.wocas import BREACH_TITLES, BREACHES, Rating, Report

LISTED = 15  # rows per table: the ones that need attention first
MIN_RATINGS = 2  # a product needs this many ratings to be listed among the lowest

# Which charts each section shows: (name, builder).
CHARTS: dict[str, list[tuple[str, Callable[[Report], bytes]]]] = {
    "sellers": [],
    "categories": [("ratings_by_category", charts.ratings_by_category)],
    "delivery": [("deadline_breaches", charts.deadline_breaches)],
    "customer_service": [
        ("helpful_by_touchpoint", lambda r: charts.helpful_by_touchpoint(r, _target(r, "helpful_rate"))),
        ("cases_by_status", charts.cases_by_status),
    ],
}

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; color: #1a202c; max-width: 820px; margin: 0 auto; padding: 16px; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 18px; border-bottom: 2px solid #2b6cb0; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 15px; margin-bottom: 6px; } .sub { color: #4a5568; margin-top: 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin-bottom: 12px; }
th, td { padding: 4px 6px; border-bottom: 1px solid #e2e8f0; text-align: right; } th { background: #f7fafc; }
th:first-child, td:first-child { text-align: left; }
.good { color: #2f855a; font-weight: 600; } .bad { color: #c53030; font-weight: 600; }
.tiles { display: flex; flex-wrap: wrap; gap: 8px; } .tile { flex: 1 1 150px; border: 1px solid #e2e8f0; border-radius: 6px; padding: 8px; }
.tile b { display: block; font-size: 20px; } .tile span { color: #4a5568; font-size: 12px; }
img { max-width: 100%; height: auto; } .note { color: #718096; font-size: 12px; }
"""


@dataclass(frozen=True)
class EmailReport:
    """What an email of the report carries."""

    subject: str
    html: str
    images: list[tuple[str, bytes]]  # (content id, PNG), referenced as cid:<content id>
    csv: str


# --- formatting ---------------------------------------------------------------------


def _target(report: Report, name: str) -> float:
    return next(m.target for m in report.metrics if m.definition.name == name)


def _stars(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _trend(value: float | None, *, higher_is_better: bool = True, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) < 1e-9:
        return f"±0{unit}"
    good = (value > 0) == higher_is_better
    return f'<span class="{"good" if good else "bad"}">{value:+.2f}{unit}</span>'


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _change(now: int, before: int, *, lower_is_better: bool = True) -> str:
    delta = now - before
    if delta == 0:
        return "±0"
    good = (delta < 0) == lower_is_better
    return f'<span class="{"good" if good else "bad"}">{delta:+d}</span>'


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """Cells are HTML already (callers escape text)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>" if body else '<p class="note">Nothing this period.</p>'


def _tile(value: str, label: str) -> str:
    return f'<div class="tile"><b>{value}</b><span>{escape(label)}</span></div>'


def _rating_rows(ratings: list[Rating], with_category: bool = False) -> list[list[str]]:
    return [
        [escape(r.name)]
        + ([escape(r.category or "")] if with_category else [])
        + [_stars(r.average), _trend(r.trend), str(r.count), str(r.count_before)]
        for r in ratings
    ]


# --- sections -----------------------------------------------------------------------


def _headline(report: Report) -> str:
    rated = sum(s.count for s in report.sellers)
    seller_avg = (sum((s.average or 0) * s.count for s in report.sellers) / rated) if rated else None
    votes = sum(v.votes for v in report.votes)
    helpful = sum(v.helpful for v in report.votes)
    breaches = sum(report.breach_totals().values())
    tiles = "".join(
        [
            _tile(str(sum(s.orders for s in report.breaches)), "orders placed"),
            _tile(_stars(seller_avg), f"average seller rating ({rated} ratings)"),
            _tile(_pct(helpful / votes if votes else None), f"found messages helpful ({votes} votes)"),
            _tile(str(report.case_flow.opened), "cases opened"),
            _tile(str(report.overdue_total), "cases overdue now"),
            _tile(str(breaches), "orders that missed a deadline"),
        ]
    )
    rows = []
    for m in report.metrics:
        if m.meets_target is None:
            mark = '<span class="note">no data</span>'
        else:
            # Above is good for some, bad for others: the mark says which, not only the colour.
            verdict = "✓ met" if m.meets_target else "✗ missed"
            mark = f'<span class="{"good" if m.meets_target else "bad"}">{verdict}: {m.position} target</span>'
        rows.append(
            [escape(m.definition.label), m.show(), ("≥ " if m.definition.higher_is_better else "≤ ") + m.show(m.target), mark,
             escape(m.basis)]
        )
    return (
        f'<div class="tiles">{tiles}</div>'
        "<h2>Lifecycle metrics</h2>"
        + _table(["Metric", "Value", "Target", "", "Based on"], rows)
        + '<p class="note">Activation: first orders 90 to 180 days ago followed by a second within 90 days. Repeat, win-back:'
        " the last 365 days. Loyal: customers whose latest phase is loyal. The rest: this period.</p>"
    )


def _sellers(report: Report) -> str:
    breaches = {b.seller_id: b for b in report.breaches}
    worst = sorted(report.sellers, key=lambda s: (s.average if s.average is not None else 6, -s.count))[:LISTED]
    rows = []
    for s in worst:
        b = breaches.get(s.key)
        late = [str(b.now[k]) if b else "0" for k in ("late_dispatch", "late_delivery")]
        rows.append(_rating_rows([s])[0] + [str(b.orders if b else 0)] + late)
    dispatch = sorted(report.breaches, key=lambda b: (-b.now["late_dispatch"], b.seller_id))[:LISTED]
    return (
        "<h3>Seller ratings, lowest first</h3>"
        + _table(["Seller", "Stars", "Trend", "Ratings", "Before", "Orders", "Late dispatch", "Late delivery"], rows)
        + "<h3>Late dispatch by seller</h3>"
        + _table(
            ["Seller", "Orders", "Late dispatch", "Change", "Share"],
            [
                [escape(b.seller_name), str(b.orders), str(b.now["late_dispatch"]),
                 _change(b.now["late_dispatch"], b.before["late_dispatch"]),
                 _pct(b.now["late_dispatch"] / b.orders if b.orders else None)]
                for b in dispatch
                if b.now["late_dispatch"] or b.before["late_dispatch"]
            ],
        )
    )


def _categories(report: Report, image: Callable[[str], str]) -> str:
    lowest = sorted((p for p in report.products if p.count >= MIN_RATINGS), key=lambda p: (p.average, -p.count))[:LISTED]
    drops = sorted((p for p in report.products if p.trend is not None and p.trend < 0), key=lambda p: (p.trend, -p.count))[:LISTED]
    return (
        image("ratings_by_category")
        + "<h3>Categories</h3>"
        + _table(["Category", "Stars", "Trend", "Ratings", "Before"], _rating_rows(report.categories))
        + f"<h3>Lowest-rated products (at least {MIN_RATINGS} ratings)</h3>"
        + _table(["Product", "Category", "Stars", "Trend", "Ratings", "Before"], _rating_rows(lowest, True))
        + "<h3>Biggest drops against the previous period</h3>"
        + _table(["Product", "Category", "Stars", "Trend", "Ratings", "Before"], _rating_rows(drops, True))
    )


def _delivery(report: Report, image: Callable[[str], str]) -> str:
    now, before = report.breach_totals("now"), report.breach_totals("before")
    metrics = {m.definition.name: m for m in report.metrics}
    timing = [
        metrics[n] for n in ("payment_to_dispatch_p50_hours", "payment_to_dispatch_p90_hours",
                             "dispatch_to_delivery_p50_hours", "dispatch_to_delivery_p90_hours",
                             "delivery_rate_email", "delivery_rate_sms")
    ]
    by_seller = [b for b in report.breaches if sum(b.now.values())][:LISTED]
    return (
        image("deadline_breaches")
        + _table(
            ["Deadline missed", "This period", "Before", "Change"],
            [[BREACH_TITLES[b], str(now[b]), str(before[b]), _change(now[b], before[b])] for b in BREACHES],
        )
        + "<h3>Speed and delivery of messages</h3>"
        + _table(
            ["", "This period", "Target", "Based on"],
            [[escape(m.definition.label), m.show(), m.show(m.target), escape(m.basis)] for m in timing],
        )
        + "<h3>Sellers with the most missed deadlines</h3>"
        + _table(["Seller", "Orders", *(BREACH_TITLES[b] for b in BREACHES)],
                 [[escape(b.seller_name), str(b.orders), *(str(b.now[k]) for k in BREACHES)] for b in by_seller])
    )


def _customer_service(report: Report, image: Callable[[str], str]) -> str:
    phrases = [t for t in report.themes if t.words > 1]
    words = [t for t in report.themes if t.words == 1]
    flow = report.case_flow
    theme_rows = [[escape(t.term), str(t.complaints), _pct(t.complaints / report.complaints)] for t in phrases + words]
    return (
        image("helpful_by_touchpoint")
        + _table(
            ["Message", "Votes", "Helpful", "Before", "Comments"],
            [[escape(v.kind.replace("_", " ")), str(v.votes), _pct(v.rate), _pct(v.rate_before), str(v.comments)] for v in report.votes],
        )
        + f"<h3>What customers complain about ({report.complaints} complaints)</h3>"
        + _table(["Phrase or keyword", "Complaints", "Share"], theme_rows)
        + '<p class="note">From comments on ratings of 3 stars or less, on "not helpful" votes and from cases; '
        "phrases first, then single words.</p>"
        + image("cases_by_status")
        + f"<p>Opened this period: {flow.opened} ({flow.by_trigger['low_rating']} low ratings, "
        f"{flow.by_trigger['not_helpful']} not-helpful votes, {flow.by_trigger['complaint']} complaints); "
        f"resolved: {flow.resolved} (median {'-' if flow.resolve_p50_hours is None else f'{flow.resolve_p50_hours:.0f} h'}), "
        f"reopened: {flow.reopened}.</p>"
        + "<h3>Open cases by owner</h3>"
        + _table(
            ["Owner", "Open", "Acknowledged", "Escalated", "Overdue", "Oldest opened"],
            [[escape(o.owner), str(o.open), str(o.acknowledged), str(o.escalated),
              f'<span class="bad">{o.overdue}</span>' if o.overdue else "0", f"{o.oldest:%Y-%m-%d %H:%M}"] for o in report.owners],
        )
        + f"<h3>Overdue cases ({report.overdue_total}, oldest first)</h3>"
        + _table(
            ["Case", "Owner", "Status", "Level", "Trigger", "Due"],
            [[escape(c.case_id), escape(c.owner), c.status, str(c.escalation_level), c.trigger.replace("_", " "),
              f"{c.due_at:%Y-%m-%d %H:%M}"] for c in report.overdue],
        )
    )


def render_html(report: Report, sections: Iterable[str], image_src: Callable[[str], str], *, for_whom: str = "") -> str:
    """The page with the headline and the given sections; `image_src` names
    where each chart is (a file name, or cid:...)."""
    chosen = [s for s in SECTIONS if s in set(sections)]

    def image(name: str) -> str:
        return f'<img src="{escape(image_src(name))}" alt="{escape(name.replace("_", " "))}">'

    bodies = {
        "sellers": lambda: _sellers(report),
        "categories": lambda: _categories(report, image),
        "delivery": lambda: _delivery(report, image),
        "customer_service": lambda: _customer_service(report, image),
    }
    parts = [f'<h2 id="{s}">{SECTION_TITLES[s]}</h2>' + bodies[s]() for s in chosen]
    index = " · ".join(f'<a href="#{s}">{SECTION_TITLES[s]}</a>' for s in chosen)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>What our customers are saying, {escape(report.period.label)}</title><style>{STYLE}</style></head><body>"
        "<h1>What our customers are saying</h1>"
        f'<p class="sub">{escape(report.period.label)} (UTC), compared with the {(report.period.end - report.period.start).days} days before'
        f"{escape(for_whom)}. {index}</p>"
        + _headline(report)
        + "".join(parts)
        + f'<p class="note">Built {report.built_at:%Y-%m-%d %H:%M} UTC from PostgreSQL. Figures: figures.csv.</p></body></html>'
    )


def figures_csv(report: Report, sections: Iterable[str] = SECTIONS) -> str:
    """Every figure as a row: section, subject, figure, this period, previous period."""
    chosen = set(sections)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["section", "subject", "figure", "value", "previous"])
    for m in report.metrics:
        w.writerow(["lifecycle", m.definition.name, "value", _num(m.value), ""])
        w.writerow(["lifecycle", m.definition.name, "target", _num(m.target), ""])
    if "sellers" in chosen:
        for s in report.sellers:
            w.writerow(["sellers", s.key, "average_stars", _num(s.average), _num(s.average_before)])
            w.writerow(["sellers", s.key, "ratings", s.count, s.count_before])
        for b in report.breaches:
            w.writerow(["sellers", b.seller_id, "orders", b.orders, b.orders_before])
    if "categories" in chosen:
        for kind, rows in (("category", report.categories), ("product", report.products)):
            for r in rows:
                w.writerow(["categories", f"{kind}:{r.key}", "average_stars", _num(r.average), _num(r.average_before)])
                w.writerow(["categories", f"{kind}:{r.key}", "ratings", r.count, r.count_before])
    if "delivery" in chosen:
        for b in report.breaches:
            for k in BREACHES:
                if b.now[k] or b.before[k]:
                    w.writerow(["delivery", b.seller_id, k, b.now[k], b.before[k]])
    if "customer_service" in chosen:
        for v in report.votes:
            w.writerow(["customer_service", f"touchpoint:{v.kind}", "votes", v.votes, v.votes_before])
            w.writerow(["customer_service", f"touchpoint:{v.kind}", "helpful", v.helpful, v.helpful_before])
        for t in report.themes:
            w.writerow(["customer_service", f"theme:{t.term}", "complaints", t.complaints, ""])
        for o in report.owners:
            w.writerow(["customer_service", f"owner:{o.owner}", "open_cases", o.open + o.acknowledged + o.escalated, ""])
            w.writerow(["customer_service", f"owner:{o.owner}", "overdue_cases", o.overdue, ""])
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _charts(report: Report, sections: Iterable[str]) -> list[tuple[str, bytes]]:
    chosen = set(sections)
    return [(name, build(report)) for s in SECTIONS if s in chosen for name, build in CHARTS[s]]


def write_folder(report: Report, out: Path, sections: Iterable[str] = SECTIONS) -> Path:
    """index.html, the charts beside it and figures.csv in `out`; returns index.html's path."""
    out.mkdir(parents=True, exist_ok=True)
    for name, png in _charts(report, sections):
        (out / f"{name}.png").write_bytes(png)
    (out / "figures.csv").write_text(figures_csv(report, sections))
    index = out / "index.html"
    index.write_text(render_html(report, sections, lambda name: f"{name}.png"))
    return index


def render_email(report: Report, lead: Lead) -> EmailReport:
    """The lead's sections, charts as inline attachments (cid:wocas-<chart>)."""
    images = [(f"wocas-{name}", png) for name, png in _charts(report, lead.sections)]
    html = render_html(report, lead.sections, lambda name: f"cid:wocas-{name}", for_whom=f"; for {lead.name}")
    return EmailReport(
        subject=f"What our customers are saying, {report.period.label}",
        html=html,
        images=images,
        csv=figures_csv(report, lead.sections),
    )
