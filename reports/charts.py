"""The report's charts, as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.wocas import BREACH_TITLES, BREACHES, CASE_STATUSES, Report  # noqa: E402

NOW, BEFORE, GOOD, BAD = "#2b6cb0", "#a0aec0", "#2f855a", "#c53030"
MAX_BARS = 12


def _png(fig: plt.Figure) -> bytes:
    out = io.BytesIO()
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def _axes(height: float) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(7.2, height))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def ratings_by_category(report: Report) -> bytes:
    """Average stars per category, this period next to the one before."""
    rows = [c for c in report.categories if c.count or c.count_before][:MAX_BARS]
    fig, ax = _axes(0.9 + 0.42 * max(len(rows), 1))
    if not rows:
        ax.text(0.5, 0.5, "No ratings in either period", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    rows.reverse()
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r.average_before or 0 for r in rows], 0.4, color=BEFORE, label="previous period")
    ax.barh([i - 0.2 for i in y], [r.average or 0 for r in rows], 0.4, color=NOW, label="this period")
    for i, r in zip(y, rows):
        if r.average is not None:
            trend = "" if r.trend is None else f"  ({r.trend:+.2f})"
            ax.text(r.average + 0.05, i - 0.2, f"{r.average:.2f}{trend}", va="center", fontsize=8)
    ax.set_yticks(list(y), [f"{_label(r.key)} ({r.count})" for r in rows])
    ax.set_xlim(1, 5.6)  # no rating is below one star
    ax.set_xticks([1, 2, 3, 4, 5])
    ax.set_xlabel("average stars (ratings this period in brackets)")
    ax.set_title("Item ratings by category", loc="left", fontsize=11)
    ax.legend(loc="lower left", bbox_to_anchor=(0.55, 1.0), ncols=2, fontsize=8, frameon=False)
    return _png(fig)


def helpful_by_touchpoint(report: Report, target: float) -> bytes:
    """Share of "Was this helpful?" votes that said yes, per message."""
    rows = [v for v in report.votes if v.votes][:MAX_BARS]
    fig, ax = _axes(0.9 + 0.36 * max(len(rows), 1))
    if not rows:
        ax.text(0.5, 0.5, "No votes this period", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    rows = sorted(rows, key=lambda v: v.rate or 0, reverse=True)
    y = range(len(rows))
    rates = [100 * (v.rate or 0) for v in rows]
    ax.barh(list(y), rates, color=[GOOD if r >= 100 * target else BAD for r in rates])
    for i, v, r in zip(y, rows, rates):
        ax.text(r + 1, i, f"{r:.0f}%  of {v.votes}", va="center", fontsize=8)
    ax.axvline(100 * target, color="#4a5568", linestyle="--", linewidth=1)
    ax.text(100 * target, len(rows) - 0.4, f" target {100 * target:.0f}%", fontsize=8, color="#4a5568")
    ax.set_yticks(list(y), [_label(v.kind) for v in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 118)
    ax.set_xlabel("% of votes saying helpful")
    ax.set_title("Was this helpful? by message", loc="left", fontsize=11)
    return _png(fig)


def cases_by_status(report: Report) -> bytes:
    """Cases not resolved, by status now, and those resolved this period."""
    flow = report.case_flow
    names = [s for s in CASE_STATUSES if s != "resolved"]
    values = [flow.by_status[s] for s in names] + [flow.resolved]
    labels = [_label(s) for s in names] + ["Resolved\nthis period"]
    colors = ["#dd6b20", "#3182ce", BAD, GOOD]
    fig, ax = _axes(2.8)
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fontsize=9)
    ax.set_ylabel("cases")
    ax.set_title(f"Cases: {flow.opened} opened this period, {report.overdue_total} overdue now", loc="left", fontsize=11)
    ax.margins(y=0.15)
    return _png(fig)


def deadline_breaches(report: Report) -> bytes:
    """Orders per deadline missed, this period next to the one before."""
    now, before = report.breach_totals("now"), report.breach_totals("before")
    fig, ax = _axes(2.8)
    x = range(len(BREACHES))
    b1 = ax.bar([i - 0.2 for i in x], [before[b] for b in BREACHES], 0.4, color=BEFORE, label="previous period")
    b2 = ax.bar([i + 0.2 for i in x], [now[b] for b in BREACHES], 0.4, color=NOW, label="this period")
    ax.bar_label(b1, fontsize=8)
    ax.bar_label(b2, fontsize=8)
    ax.set_xticks(list(x), [BREACH_TITLES[b] for b in BREACHES])
    ax.set_ylabel("orders")
    ax.set_title("Deadlines missed", loc="left", fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    ax.margins(y=0.15)
    return _png(fig)
