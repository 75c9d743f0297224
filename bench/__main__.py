"""Benchmarks and failure drills, one command each:

    python -m bench [--orders N] [--concurrency C]   throughput, latency, actions vs the floor; then latency at half the rate
    python -m bench --only ours --profile DIR        py-spy flame graphs of the worker, CPU per order by step
    python -m bench --rate R                         our side alone, orders placed open-loop at R orders/s
    python -m bench chaos [DRILL ...] [--orders N]   failure drills; exit 1 on a message lost, repeated, stranded or untruly recorded
    python -m bench recommendations [--orders N]     recommendations query p99 at a million orders
    python -m bench open-orders [--orders N]         worker memory with N paid orders awaiting dispatch
    python -m bench wocas [--orders N]               the WOCAS report's build time on a year of N orders
    python -m bench history [--orders N] [--from F]  an order's history bytes by payload kind and event type
    python -m bench codec [--payloads N]             bytes and CPU per-workflow data keys add to a payload
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    chaos = sub.add_parser("chaos", help="failure drills")
    chaos.add_argument(
        "drills", nargs="*",
        help="kill-worker, deploy, provider-faults, postgres-outage, temporal-restart, channel-outage, two-workers, kill-and-faults (default: all)",
    )
    chaos.add_argument("--orders", type=int, default=300)
    chaos.add_argument("--concurrency", type=int, default=100)
    chaos.add_argument("--sms-outage-seconds", type=float, help="channel-outage: how long Twilio answers 503 (default: 120)")
    chaos.add_argument(
        "--email-activity-lag", type=float,
        help="seconds before the fake Email Activity shows a mail (default: 1, under the 5 s settle window; "
        "above it, the window of risk: mails sent twice)",
    )
    open_orders = sub.add_parser("open-orders", help="worker memory with many open orders")
    open_orders.add_argument("--orders", type=int, default=10_000)
    open_orders.add_argument("--concurrency", type=int, default=200)
    recs = sub.add_parser("recommendations", help="recommendations query at scale")
    recs.add_argument("--orders", type=int, default=1_000_000)
    recs.add_argument("--queries", type=int, default=2000)
    wocas = sub.add_parser("wocas", help="WOCAS report build time on a year of history")
    wocas.add_argument("--orders", type=int, default=100_000)
    wocas.add_argument("--runs", type=int, default=5)
    history = sub.add_parser("history", help="history bytes by payload kind and event type")
    history.add_argument("--orders", type=int, default=20)
    history.add_argument("--concurrency", type=int, default=10)
    history.add_argument("--from", dest="path", type=Path, help="a history saved as JSON instead of a live run")
    history.add_argument("--save", type=Path, help="a directory to save one order's and one customer's history in, stored and decoded")
    history.add_argument(
        "--write-dictionary", dest="dictionary", type=Path,
        help="write a deflate dictionary for the codec from tests/histories (a new one needs a new codec marker)",
    )
    codec = sub.add_parser("codec", help="bytes and CPU per-workflow data keys add to a payload")
    codec.add_argument("--payloads", type=int, default=1000)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--only", choices=["ours", "floor"], help="run one side only, e.g. to profile it")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="py-spy flame graphs of our workers into DIR (worker-N.svg, and worker-N.txt collapsed), and the CPU per order by step",
    )
    parser.add_argument(
        "--rate", type=float, metavar="R",
        help="our side alone, orders placed open-loop at R orders/s (a run of both sides ends with one at half the rate ours reached)",
    )
    args = parser.parse_args()
    if args.command is None:
        from bench.throughput import main as throughput

        throughput(args.orders, args.concurrency, args.only, args.profile, args.rate)
    elif args.command == "open-orders":
        from bench.open_orders import main as open_orders_main

        open_orders_main(args.orders, args.concurrency)
    elif args.command == "recommendations":
        from bench.recommendations import main as recommendations

        recommendations(args.orders, args.queries)
    elif args.command == "history":
        from bench.history import main as history_main

        history_main(args.orders, args.concurrency, args.path, args.save, args.dictionary)
    elif args.command == "wocas":
        from bench.wocas import main as wocas

        wocas(args.orders, args.runs)
    elif args.command == "codec":
        from bench.codec_cost import main as codec_cost

        codec_cost(args.payloads)
    elif args.command == "chaos":
        from bench.chaos import DRILLS, EMAIL_ACTIVITY_LAG_SECONDS, SMS_OUTAGE_SECONDS, main as chaos_main

        unknown = set(args.drills) - set(DRILLS)
        if unknown:
            parser.error(f"unknown drill(s): {', '.join(sorted(unknown))}; one of {', '.join(DRILLS)}")
        sms_outage_seconds = args.sms_outage_seconds or SMS_OUTAGE_SECONDS
        lag = EMAIL_ACTIVITY_LAG_SECONDS if args.email_activity_lag is None else args.email_activity_lag
        if not chaos_main(args.drills or list(DRILLS), args.orders, args.concurrency, sms_outage_seconds, lag):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
