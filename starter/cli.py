"""`orders`: run the system, and talk to it as a backend or an operator would.

    orders up [--demo]          embedded Temporal + Web UI + PostgreSQL + worker + HTTP service
    orders worker               the worker alone (TEMPORAL_ADDRESS, DATABASE_URL)
    orders web                  the HTTP service alone (unsubscribe links, Twilio webhook)
    orders codec-server         decodes payloads for the Web UI and the `temporal` CLI (operators)
    orders place FILE|-         start an order from JSON
    orders event ID NAME JSON   send an event (signal; --sync: update with an answer)
    orders status ID            the status query
    orders outbox               messages kept locally when no provider is configured
    orders attention            orders and messages an operator may have to act on (no customer data)
    orders resend KEY           send a failed or in-doubt message once more, through the worker
    orders case ack|resolve|show ID   a case (service recovery): acknowledge, resolve, or show it
    orders schema [NAME]        JSON Schema of every payload
    orders lifecycle report     customers per phase, win-backs against the holdout, coupon cost vs revenue
    orders report wocas         "What our customers are saying" (HTML, charts, CSV) written to a folder; --mail: the scheduled run now, mailed to the leads
    orders rewrap-data-keys      data keys under an older master key wrapped with the current one (the worker does it at start too)
    orders retention [--dry-run]  remove what the retention policy no longer keeps (RETENTION_*): the schedule's run now; --dry-run: counts only
    orders metrics              lifecycle metrics against their targets (METRIC_TARGET_*)
    orders seed-history         a year of realistic history in an empty database, to try the report on
    orders demo                 push a handful of orders through the whole journey
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from codec import KEY_VARIABLES, KEYS_FILE_VARIABLE, CodecConfigError, new_key_entry
from reports.config import ReportConfigError
from reports.seed import SeedRefused
from store.retention import RetentionConfigError
from web.config import ConfigError, WebConfig, local_secret
from workflows import search_attributes as sa
from workflows.event_rules import format_validation_error
from workflows.ledger_key import LedgerKey
from workflows.models import (
    EVENT_MODELS,
    TASK_QUEUE,
    CaseAcknowledged,
    CaseOpening,
    CaseReopenRequested,
    CaseResolved,
    CaseView,
    ComplaintReceived,
    WORKFLOW_TYPE,
    EventEnvelope,
    MessageOutcome,
    MessageUndelivered,
    OrderInput,
    OrderStatusView,
    customer_id_problem,
    workflow_id_for,
)

DATA_DIR = Path(os.environ.get("ORDERS_DATA_DIR", ".orders-data"))
# Made by `orders up` on its first run, and kept: its histories need it to decode.
LOCAL_PAYLOAD_KEYS = DATA_DIR / "payload-encryption-keys"
# Made by `orders up` on its first run when ERASURE_SALT is not set, and kept:
# the erased customers' hashes in its database were made with it.
LOCAL_ERASURE_SALT = DATA_DIR / "erasure-salt"


class UsageError(Exception):
    """Bad input from the command line: printed without a traceback."""


def read_json(source: str) -> Any:
    """Inline JSON, @path, a path, or - for stdin."""
    if source == "-":
        text = sys.stdin.read()
    elif source.startswith("@") or (not source.lstrip().startswith(("{", "[")) and Path(source).exists()):
        text = Path(source.removeprefix("@")).read_text()
    else:
        text = source
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"not valid JSON: {err}") from None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


async def connect() -> Client:
    """With no payload keys in the environment, the ones `orders up` made, if
    any, but only for its embedded dev server: a real cluster's workers could
    not read what a laptop's key encrypted."""
    from worker import connect_temporal

    env = dict(os.environ)
    if not any(env.get(name) for name in KEY_VARIABLES) and not env.get("TEMPORAL_ADDRESS") and LOCAL_PAYLOAD_KEYS.exists():
        env[KEYS_FILE_VARIABLE] = str(LOCAL_PAYLOAD_KEYS)
    if not env.get("DATABASE_URL"):  # customers' workflows' data keys, in the embedded database if there is one
        with contextlib.suppress(UsageError):
            env["DATABASE_URL"] = database_url()
    return await connect_temporal(env)


def port_setting(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name} must be a port number, got {raw!r}")
    return int(raw)


def database_url() -> str:
    """DATABASE_URL, else the embedded server that `orders up` runs."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    pgdata = DATA_DIR / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        raise UsageError("no DATABASE_URL and no embedded database yet: run `orders up` first")
    from starter.embedded import start_postgres

    return start_postgres(pgdata)


# --- commands ----------------------------------------------------------------


async def place_order(client: Client, raw: Any) -> str:
    """Start the order's workflow, or find the one already running; its id.
    An order whose workflow has closed is refused: its journey is over."""
    try:
        order = OrderInput.model_validate(raw)
    except ValidationError as err:
        raise UsageError(f"invalid order: {format_validation_error(err)}") from None
    if problem := customer_id_problem(order):
        raise UsageError(f"invalid order: {problem}")
    workflow_id = workflow_id_for(order.order_id)
    try:
        handle = await client.start_workflow(
            WORKFLOW_TYPE,
            order.model_dump(mode="json", exclude_none=True),
            id=workflow_id,
            task_queue=TASK_QUEUE,
            # The same order twice is the same workflow: never a second
            # confirmation. A closed one is not started again (were it, the
            # run would find the order recorded by another run and end).
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.ORDER_STATUS, "awaiting_payment"),
                    SearchAttributePair(sa.CUSTOMER_ID, order.customer.customer_id),
                    SearchAttributePair(sa.NEEDS_ATTENTION, False),
                ]
            ),
            static_summary=f"Order {order.order_id} · {order.customer.name} · {order.total} {order.currency}",
            static_details="\n".join(
                [f"**Order {order.order_id}** for {order.customer.name} ({order.customer.customer_id})", ""]
                + [f"- {i.quantity} × {i.name} `{i.sku}` at {i.unit_price} {order.currency}" for i in order.items]
                + ["", f"Total **{order.total} {order.currency}**, seller {order.seller.name}, {order.delivery.method} delivery"]
            ),
        )
    except WorkflowAlreadyStartedError:
        raise UsageError(
            f"order {order.order_id} has already been through its journey (workflow {workflow_id} is closed): not started again"
        ) from None
    return handle.id


async def send_event(client: Client, order_id: str, event: str, payload: Any, sync: bool) -> OrderStatusView | None:
    if event not in EVENT_MODELS:
        raise UsageError(f"unknown event {event!r}; one of: {', '.join(EVENT_MODELS)}")
    try:
        TypeAdapter(EVENT_MODELS[event]).validate_python(payload)
    except ValidationError as err:
        raise UsageError(f"invalid {event}: {format_validation_error(err)}") from None
    handle = client.get_workflow_handle(workflow_id_for(order_id))
    if not sync:
        try:
            await handle.signal(event, payload)
        except RPCError as err:
            if event != "complaint_received" or err.status is not RPCStatusCode.NOT_FOUND:
                raise
            opening = await complain_after_the_order(client, order_id, payload)
            print(f"the order's workflow is over: complaint opened case {opening.case_id} directly", file=sys.stderr)
        return None
    try:
        return await handle.execute_update(
            "apply_event", EventEnvelope(event=event, payload=payload), result_type=OrderStatusView
        )
    except WorkflowUpdateFailedError as err:
        raise UsageError(f"rejected: {err.cause.message if err.cause else err}") from None


async def complain_after_the_order(client: Client, order_id: str, complaint: dict[str, Any]) -> CaseOpening:
    """A complaint about an order whose workflow has ended opens its case
    from PostgreSQL, keyed by what it says, so sending it again opens no second one."""
    import asyncpg

    from activities.cases import start_case
    from store import cases as case_store

    said = ComplaintReceived.model_validate(complaint)
    conn = await asyncpg.connect(database_url())
    try:
        opening = await case_store.open_case(
            conn, order_id=order_id, trigger="complaint", trigger_key=said.case_trigger_key(order_id), text=said.text
        )
    except case_store.OrderNotRecorded as err:
        raise UsageError(str(err)) from None
    finally:
        await conn.close()
    await start_case(client, opening, TASK_QUEUE)
    return opening


async def case_command(client: Client, args: argparse.Namespace) -> CaseView:
    """`orders case ack|resolve|show ID`: the case's answer, or the validator's rejection."""
    handle = client.get_workflow_handle(args.case_id)
    if args.case_command == "show":
        return await handle.query("status", result_type=CaseView)
    if args.case_command == "ack":
        name, payload = "case_acknowledged", {"by": args.by}
    else:
        name, payload = "case_resolved", {"resolution": args.resolution, "by": args.by}
    try:
        return await handle.execute_update(name, payload, result_type=CaseView)
    except WorkflowUpdateFailedError as err:
        raise UsageError(f"rejected: {err.cause.message if err.cause else err}") from None


def erasure_salt() -> str:
    """ERASURE_SALT(_FILE), else the one `orders up` made, if any (a salt
    that is not the database's is refused when the pool connects)."""
    from store.erasure_salt import SALT_FILE_VARIABLE, SALT_VARIABLE, erasure_salt_from_env

    env = dict(os.environ)
    if not env.get(SALT_VARIABLE) and not env.get(SALT_FILE_VARIABLE) and LOCAL_ERASURE_SALT.exists():
        env[SALT_FILE_VARIABLE] = str(LOCAL_ERASURE_SALT)
    return erasure_salt_from_env(env)


async def forget_customer(client: Client, customer_id: str, requested_by: str, url: str | None = None) -> dict[str, Any]:
    """`orders forget`: as `POST /erasures` does (web/erasures.py); signals
    Temporal does not take now, the HTTP service's relay delivers later."""
    from pydantic import ValidationError

    from store.database import create_pool
    from store.erasure_salt import SaltError
    from web.erasures import forget_and_tell
    from web.signals import OwedSignals, Signals
    from workflows.models import ErasureRequest

    try:
        request = ErasureRequest(customer_id=customer_id, requested_by=requested_by)
    except ValidationError as err:
        raise UsageError(f"not a customer id or requester: {err.errors()[0]['msg']}") from None
    try:
        pool = await create_pool(url or database_url(), erasure_salt=erasure_salt(), max_size=2)
    except SaltError as err:
        raise UsageError(str(err)) from None
    try:
        relay = OwedSignals(lambda: pool, Signals({}, client))
        receipt = await forget_and_tell(pool, relay, request.customer_id, request.requested_by)
    finally:
        await pool.close()
    return receipt.as_json()


async def rewrap_data_keys() -> int:
    from codec import payload_keys_from_env
    from codec.data_keys import rewrap
    from store.database import create_pool

    pool = await create_pool(database_url(), max_size=1)
    try:
        return await rewrap(pool, payload_keys_from_env(os.environ))
    finally:
        await pool.close()


async def order_status(client: Client, order_id: str) -> OrderStatusView:
    return await client.get_workflow_handle(workflow_id_for(order_id)).query("status", result_type=OrderStatusView)


async def show_outbox(order_id: str | None, limit: int) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(database_url())
    try:
        rows = await conn.fetch(
            "SELECT id, ledger_key, channel, recipient, subject, body, created_at FROM outbox "
            "WHERE $1::text IS NULL OR starts_with(ledger_key, $1) ORDER BY id DESC LIMIT $2",
            None if order_id is None else LedgerKey.order_prefix(order_id),
            limit,
        )
    finally:
        await conn.close()
    return [dict(r) for r in reversed(rows)]


def schemas() -> dict[str, Any]:
    models = {
        "order": OrderInput,
        "status": OrderStatusView,
        "apply_event": EventEnvelope,
        **EVENT_MODELS,
        # From the HTTP service, not from backends.
        "message_undelivered": MessageUndelivered,
        "message_settled": MessageOutcome,
        # A case (workflows/case_handling.py): its input, updates, signal and status.
        "case_opening": CaseOpening,
        "case_acknowledged": CaseAcknowledged,
        "case_resolved": CaseResolved,
        "case_reopen_requested": CaseReopenRequested,
        "case_status": CaseView,
    }
    return {name: model.model_json_schema() for name, model in models.items()}


async def up(demo: bool) -> None:
    """Everything on embedded defaults unless TEMPORAL_ADDRESS / DATABASE_URL say otherwise."""
    from activities.config import ProviderConfig
    from codec import DataKeys, payload_keys_from_env
    from codec.server import CodecServerConfig, start as start_codec_server
    from starter.embedded import start_dev_server, start_postgres, stop_postgres
    from store.database import migrate
    from web.server import start as start_web
    from worker import connect_temporal, run_worker

    env = dict(os.environ)
    # The embedded dev server's own ports (the HTTP service's and the codec
    # server's come with their settings, WEB_PORT and CODEC_PORT).
    temporal_port = port_setting(env, "TEMPORAL_DEV_PORT", 7233)
    ui_port = port_setting(env, "TEMPORAL_UI_PORT", 8233)
    ui_origin = f"http://localhost:{ui_port}"
    if demo:  # this worker only: the demo customers' whole lifecycle in under two minutes
        from starter.demo import DEMO_WORKER_ENV

        env.update(DEMO_WORKER_ENV)
        print("Demo settings for the worker: " + " ".join(f"{k}={v}" for k, v in DEMO_WORKER_ENV.items()))
    dev_server = None
    embedded_pgdata = None
    # Generated once and kept, like the unsubscribe secret: the dev server's
    # histories need the same key after a restart. Only for that dev server:
    # against TEMPORAL_ADDRESS the cluster's keys are required.
    if not any(env.get(name) for name in KEY_VARIABLES) and not env.get("TEMPORAL_ADDRESS"):
        local_secret(LOCAL_PAYLOAD_KEYS, new=lambda: new_key_entry("local"))
        env[KEYS_FILE_VARIABLE] = str(LOCAL_PAYLOAD_KEYS)
    keys = payload_keys_from_env(env)
    token_source = "CODEC_SERVER_TOKEN"
    if not env.get("CODEC_SERVER_TOKEN"):
        token_source = str(DATA_DIR / "codec-server-token")
        env["CODEC_SERVER_TOKEN"] = local_secret(Path(token_source))
    if not env.get("TEMPORAL_ADDRESS"):  # the embedded Web UI decodes through the codec server
        env.setdefault("CODEC_CORS_ORIGIN", ui_origin)
        env.setdefault("CODEC_TRUST_UI_ORIGIN", "true")
    codec_config = CodecServerConfig.from_env(env)
    # Kept in the data dir so unsubscribe links in mails sent before a restart still work.
    env.setdefault("UNSUBSCRIBE_SECRET", local_secret(DATA_DIR / "unsubscribe-secret"))
    # Kept too: the erased customers' hashes in its database were made with it.
    if not env.get("ERASURE_SALT") and not env.get("ERASURE_SALT_FILE"):
        env["ERASURE_SALT"] = local_secret(LOCAL_ERASURE_SALT)
    # Every setting is checked before anything starts, so a bad one leaves nothing running.
    web_config = WebConfig.from_env(env)
    env.setdefault("WEB_PUBLIC_URL", web_config.public_url)  # the worker's links point at this service
    try:
        ProviderConfig.from_env(env)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    try:
        # First: every client, the codec server's included, reads customers' data keys there.
        if not env.get("DATABASE_URL"):
            embedded_pgdata = DATA_DIR / "pgdata"
            env["DATABASE_URL"] = start_postgres(embedded_pgdata)
            web_config = dataclasses.replace(web_config, database_url=env["DATABASE_URL"])
            print(f"PostgreSQL at {env['DATABASE_URL']}")
        # Before the HTTP service, which reads tables of the schema at once.
        await migrate(env["DATABASE_URL"], web_config.erasure_salt)
        data_keys = DataKeys(keys, env["DATABASE_URL"])
        tasks.append(start_codec_server(codec_config, data_keys, stop))
        print(f"Codec server on {codec_config.url} (bearer token in {token_source})")
        if env.get("TEMPORAL_ADDRESS"):
            client = await connect_temporal(env)
        else:
            dev_server = await start_dev_server(
                DATA_DIR, data_keys, port=temporal_port, ui_port=ui_port, ui=True, ui_codec_endpoint=codec_config.url
            )
            client = dev_server.client
            env["TEMPORAL_ADDRESS"] = client.service_client.config.target_host
            print(f"Temporal dev server on {env['TEMPORAL_ADDRESS']}, Web UI on {ui_origin} (decoding through the codec server)")
        worker_task = asyncio.create_task(run_worker(client, env["DATABASE_URL"], env, stop))
        print(f"Worker running on task queue {TASK_QUEUE!r}. Ctrl-C stops everything; state stays in {DATA_DIR}/.")
        tasks.append(worker_task)
        tasks.append(start_web(web_config, stop, temporal_client=client))
        print(f"HTTP service on {web_config.public_url} (unsubscribe links, Twilio webhook; API docs at /docs)")
        if demo:
            from starter.demo import run_demo

            await run_demo(client, lifecycle=True, database_url=env["DATABASE_URL"], web_url=web_config.public_url)
        await worker_task
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if dev_server:
            await dev_server.shutdown()
        if embedded_pgdata:
            stop_postgres(embedded_pgdata)


async def run(args: argparse.Namespace) -> int:
    if args.command == "up":
        await up(args.demo)
    elif args.command == "worker":
        from worker import _main

        await _main()
    elif args.command == "web":
        from web.server import serve

        await serve(WebConfig.from_env(os.environ))
    elif args.command == "codec-server":
        from codec import data_keys_from_env
        from codec.server import CodecServerConfig, serve as serve_codec

        codec_config = CodecServerConfig.from_env(os.environ)
        data_keys = data_keys_from_env({**os.environ, "DATABASE_URL": database_url()})
        print(f"Codec server on {codec_config.url}", flush=True)
        await serve_codec(codec_config, data_keys)
    elif args.command == "schema":
        all_schemas = schemas()
        if args.name and args.name not in all_schemas:
            raise UsageError(f"no schema {args.name!r}; one of: {', '.join(all_schemas)}")
        print_json(all_schemas[args.name] if args.name else all_schemas)
    elif args.command == "lifecycle":
        from starter import lifecycle_report

        print(await lifecycle_report.run(args, database_url()))
    elif args.command == "report" and args.mail:
        from reports.schedule import SCHEDULE_ID, trigger_schedule

        if args.until or args.out or args.days != 7:
            raise UsageError("--mail runs the schedule's own report (the period ending today, WOCAS_PERIOD_DAYS long): "
                             "it takes no --until, --days or --out")
        await trigger_schedule(await connect())
        print(f"triggered schedule {SCHEDULE_ID!r}: its run mails each lead in WOCAS_LEADS (once per period) "
              "and writes the folder in the worker's WOCAS_REPORT_DIR")
    elif args.command == "report":
        from reports import cli as reports_cli

        print(await reports_cli.report(args, database_url()))
    elif args.command == "retention":
        await retention(args.dry_run)
    elif args.command == "rewrap-data-keys":
        print(f"re-wrapped {await rewrap_data_keys()} data keys under the current master key")
    elif args.command == "metrics":
        from reports import cli as reports_cli

        print(await reports_cli.metrics(args, database_url()))
    elif args.command == "seed-history":
        from reports import cli as reports_cli

        print(await reports_cli.seed(args, database_url()))
    elif args.command == "outbox":
        for row in await show_outbox(args.order, args.limit):
            print(f"#{row['id']} {row['created_at']:%Y-%m-%d %H:%M:%S} {row['channel']} to {row['recipient']} [{row['ledger_key']}]")
            if row["subject"]:
                print(f"  Subject: {row['subject']}")
            print("  " + row["body"].replace("\n", "\n  "))
    else:
        client = await connect()
        try:
            if args.command == "place":
                print(f"started {await place_order(client, read_json(args.file))}")
            elif args.command == "event":
                view = await send_event(client, args.order_id, args.name, read_json(args.payload), args.sync)
                print_json(view.model_dump(mode="json") if view else {"signalled": args.name})
            elif args.command == "status":
                print_json((await order_status(client, args.order_id)).model_dump(mode="json"))
            elif args.command == "case":
                print_json((await case_command(client, args)).model_dump(mode="json"))
            elif args.command == "forget":
                print_json(await forget_customer(client, args.customer_id, args.by))
            elif args.command in ("attention", "resend"):
                import asyncpg

                from starter import operator

                conn = await asyncpg.connect(database_url())
                try:
                    if args.command == "attention":
                        print(await operator.attention_report(client, conn, args.limit))
                    else:
                        print(operator.describe(await operator.resend(client, conn, args.key)))
                finally:
                    await conn.close()
            elif args.command == "demo":
                from starter.demo import run_demo

                await run_demo(client)
        except RPCError as err:
            raise UsageError(f"Temporal said: {err.message}") from None
    return 0


async def retention(dry_run: bool) -> None:
    """What the policy would remove now (by this shell's RETENTION_* settings);
    without `dry_run`, then the schedule's run now, with the worker's."""
    from datetime import datetime, timezone

    import asyncpg

    from reports.schedule import RETENTION_SCHEDULE_ID, trigger_schedule
    from store import retention as policy

    conn = await asyncpg.connect(database_url())
    try:
        print("\n".join(await policy.dry_run(conn, policy.policy_from_env(os.environ), datetime.now(timezone.utc))))
    finally:
        await conn.close()
    if not dry_run:
        await trigger_schedule(await connect(), RETENTION_SCHEDULE_ID)
        print(f"triggered schedule {RETENTION_SCHEDULE_ID!r}: its run applies the policy as the worker's RETENTION_* settings say, "
              "and its result (in the Web UI) counts what each rule removed")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orders", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="run everything on embedded defaults")
    up_cmd.add_argument("--demo", action="store_true", help="also run the demo once the worker is up")
    sub.add_parser("worker", help="run the worker against TEMPORAL_ADDRESS and DATABASE_URL")
    sub.add_parser("web", help="run the HTTP service against DATABASE_URL and TEMPORAL_ADDRESS")
    sub.add_parser("codec-server", help="decode payloads for the Web UI and the temporal CLI (CODEC_SERVER_TOKEN)")
    place = sub.add_parser("place", help="place an order from a JSON file (- for stdin)")
    place.add_argument("file")
    event = sub.add_parser("event", help="send an event to an order")
    event.add_argument("order_id")
    event.add_argument("name", choices=list(EVENT_MODELS))
    event.add_argument("payload", help="JSON, @file or - for stdin")
    event.add_argument("--sync", action="store_true", help="use the apply_event update and print the answer")
    status = sub.add_parser("status", help="show an order's status")
    status.add_argument("order_id")
    attention = sub.add_parser("attention", help="list flagged orders and failed or in-doubt messages")
    attention.add_argument("--limit", type=int, default=100, help="at most this many of each")
    resend = sub.add_parser("resend", help="send a failed or in-doubt message once more (a worker must run)")
    resend.add_argument("key", help="its ledger key, as `orders attention` lists it")
    forget = sub.add_parser("forget", help="erase a customer's data (GDPR); prints the receipt")
    forget.add_argument("customer_id")
    forget.add_argument("--by", default="orders forget", help="who asked for it, kept in the erasure log")
    outbox = sub.add_parser("outbox", help="show messages kept in the local outbox")
    outbox.add_argument("--order", help="only this order id")
    outbox.add_argument("--limit", type=int, default=50)
    lifecycle = sub.add_parser("lifecycle", help="the customer lifecycle").add_subparsers(dest="lifecycle_command", required=True)
    from starter.lifecycle_report import add_arguments as add_report_arguments

    add_report_arguments(lifecycle.add_parser("report", help="per month or week: phases, win-back vs holdout, coupon cost vs revenue"))
    case = sub.add_parser("case", help="a case: acknowledge, resolve or show it").add_subparsers(dest="case_command", required=True)
    ack = case.add_parser("ack", help="acknowledge a case (the case_acknowledged update)")
    ack.add_argument("case_id", help="case-{order_id}-{n}")
    ack.add_argument("--by", required=True, help="who takes it")
    resolve_case = case.add_parser("resolve", help="resolve a case (the case_resolved update); the customer gets the resolution")
    resolve_case.add_argument("case_id")
    resolve_case.add_argument("--resolution", required=True, help="what was done, as the customer will read it")
    resolve_case.add_argument("--by", required=True)
    case.add_parser("show", help="a case's status and timeline").add_argument("case_id")

    from reports import cli as reports_cli

    report = sub.add_parser("report", help="reports").add_subparsers(dest="report_command", required=True)
    reports_cli.add_report_arguments(
        report.add_parser("wocas", help='"What our customers are saying": build it now, write its folder, print its path')
    )
    reports_cli.add_metrics_arguments(sub.add_parser("metrics", help="lifecycle metrics against their targets"))
    reports_cli.add_seed_arguments(
        sub.add_parser("seed-history", help="fill an empty database with a year of realistic history (for trying the report)")
    )
    sub.add_parser(
        "rewrap-data-keys",
        help="wrap every customer workflow's data key with the current (first) master key, so older ones can be retired",
    )
    sub.add_parser("retention", help="remove what the retention policy no longer keeps: its schedule's run, now").add_argument(
        "--dry-run", action="store_true", help="only print, per table, the cut-off and what a run now would remove or blank"
    )
    schema = sub.add_parser("schema", help="print JSON Schemas of the payloads")
    schema.add_argument("name", nargs="?")
    sub.add_parser("demo", help="push a handful of orders through the whole journey")
    return p


def run_command(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return asyncio.run(run(args))
    except (UsageError, ConfigError, CodecConfigError, ReportConfigError, RetentionConfigError, SeedRefused) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main() -> None:
    from worker import exit_without_teardown

    exit_without_teardown(run_command())


if __name__ == "__main__":
    main()
