"""The order-lifecycle worker.

Production entry point: `python worker.py` (or `orders-worker`) against the
Temporal service and PostgreSQL named by the environment. Pending schema
migrations are applied at start-up under an advisory lock, so several workers
may start at once.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
from datetime import timedelta
from typing import Any, Coroutine, Mapping

import asyncpg
import uvloop
from temporalio.client import Client, TLSConfig
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import PollerBehaviorAutoscaling, UnsandboxedWorkflowRunner, Worker
from temporalio.worker._worker import load_default_build_id

from activities.cases import CaseActivities
from activities.config import ProviderConfig, case_routing_from_env, journey_settings_from_env, lifecycle_settings_from_env
from activities.customers import CustomerActivities
from activities.messaging import PROVIDER_REQUEST, MessagingActivities, providers_for
from activities.orders import OrderActivities
from activities.retention import RetentionActivities
from activities.staff_mail import StaffMailer
from activities.wocas import WocasActivities
from codec import CodecConfigError, data_keys_from_env, encrypted_data_converter, payload_keys_from_env
from codec.data_keys import rewrap
from providers import Provider
from providers.privacy import keep_customer_data_out_of
from reports.config import leads_from_env
from reports.metrics import targets_from_env
from reports.schedule import ensure_schedule, retention_schedule_from_env, schedule_from_env
from store.database import create_pool, migrate
from store.erasure_salt import erasure_salt_from_env
from workflows.case_handling import CaseWorkflow
from workflows.customer_journey import CustomerJourney
from workflows.metrics import MESSAGE_WAIT
from workflows.models import TASK_QUEUE, CaseRouting, Channel, JourneySettings, LifecycleSettings
from workflows.order_lifecycle import OrderLifecycle
from workflows.resend import MessageResend
from workflows.retention import RetentionRun
from workflows.wocas_report import WocasReport

log = logging.getLogger("worker")

# At DEBUG the Temporal SDK prints workflow activations and completions,
# payloads included: the order, with the customer's address.
TEMPORAL_PAYLOAD_LOGGERS = ("temporalio.worker._workflow", "temporalio.worker._workflow_instance", "temporalio.worker._activity")

DEFAULT_METRICS_PORT = 9464
# Buckets of this project's histograms, in seconds: a provider request takes
# milliseconds up to its timeouts; a message may wait for hours (quiet hours,
# the marketing cap, a provider's outage).
HISTOGRAM_BUCKETS = {
    PROVIDER_REQUEST: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    MESSAGE_WAIT: [0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 7 * 86400],
}


def metrics_address(env: Mapping[str, str], variable: str, default_port: int) -> str | None:
    """METRICS_HOST (default 127.0.0.1) and the port in `variable`; None when
    that is 0 or empty: no metrics."""
    raw = env.get(variable)
    port = default_port if raw is None else raw.strip()
    if port in ("", "0"):
        return None
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"error: {variable} must be a port number, or 0 to serve no metrics; got {raw!r}")
    return f"{env.get('METRICS_HOST') or '127.0.0.1'}:{port}"


def prometheus_runtime(address: str, variable: str) -> Runtime:
    """A Temporal runtime serving Prometheus metrics at http://<address>/metrics:
    the SDK's and this project's, in Prometheus' conventions (counters end in
    _total, durations in seconds). `variable` is the setting that chose the port."""
    prometheus = PrometheusConfig(
        bind_address=address,
        counters_total_suffix=True,
        unit_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides=HISTOGRAM_BUCKETS,
    )
    try:
        runtime = Runtime(telemetry=TelemetryConfig(metrics=prometheus))
    except ValueError as err:  # what the SDK raises for an address it cannot bind
        raise SystemExit(f"error: no metrics on {address} ({err}); set {variable} to a free port, or 0 to serve none") from None
    log.info("Prometheus metrics on http://%s/metrics", address)
    return runtime


async def connect_temporal(env: Mapping[str, str] = os.environ, runtime: Runtime | None = None) -> Client:
    """TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE, plus Temporal Cloud credentials:
    TEMPORAL_API_KEY, or TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY (mTLS paths).
    Payloads are encrypted with PAYLOAD_ENCRYPTION_KEYS(_FILE), required;
    customers' workflows' with their data keys in DATABASE_URL, needed once
    one of their payloads is read or written.
    With a `runtime` (prometheus_runtime), the client's and its workers'
    metrics go to its endpoint."""
    data_converter = encrypted_data_converter(data_keys_from_env(env))
    tls: bool | TLSConfig = env.get("TEMPORAL_TLS", "").lower() in ("1", "true", "yes")
    if env.get("TEMPORAL_TLS_CERT"):
        with open(env["TEMPORAL_TLS_CERT"], "rb") as cert, open(env["TEMPORAL_TLS_KEY"], "rb") as key:
            tls = TLSConfig(client_cert=cert.read(), client_private_key=key.read())
    api_key = env.get("TEMPORAL_API_KEY") or None
    return await Client.connect(
        env.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=env.get("TEMPORAL_NAMESPACE", "default"),
        api_key=api_key,
        tls=tls or bool(api_key),
        data_converter=data_converter,
        runtime=runtime,
    )


def build_worker(
    client: Client,
    pool: asyncpg.Pool,
    provider_config: ProviderConfig,
    journey: JourneySettings,
    *,
    lifecycle: LifecycleSettings | None = None,
    case_routing: CaseRouting | None = None,
    providers: dict[Channel, Provider] | None = None,
    task_queue: str = TASK_QUEUE,
    report_env: Mapping[str, str] = {},
) -> Worker:
    """`report_env`: the WOCAS report's settings (WOCAS_LEADS, WOCAS_REPORT_DIR, METRIC_TARGET_*)."""
    keep_customer_data_out_of(TEMPORAL_PAYLOAD_LOGGERS)
    if lifecycle is None:
        lifecycle = LifecycleSettings(sms_quiet_from=journey.sms_quiet_from, sms_quiet_until=journey.sms_quiet_until)
    orders = OrderActivities(pool, journey, client, lifecycle)
    customers = CustomerActivities(pool)
    messaging = MessagingActivities(pool, provider_config, providers)
    staff_mail = StaffMailer(pool, messaging.provider(Channel.EMAIL))
    cases = CaseActivities(pool, client, case_routing or CaseRouting(), staff_mail)
    wocas = WocasActivities(pool, staff_mail, leads_from_env(report_env), targets_from_env(report_env), report_env)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[OrderLifecycle, CustomerJourney, MessageResend, CaseWorkflow, WocasReport, RetentionRun],
        activities=[
            orders.record_order,
            orders.cancel_order,
            orders.record_delivery,
            orders.record_pickup_missed,
            orders.store_feedback,
            customers.issue_coupon,
            customers.record_phase,
            messaging.send_message,
            cases.open_case,
            cases.route_case,
            cases.record_case,
            cases.notify_staff,
            wocas.build_wocas_report,
            wocas.mail_wocas_report,
            RetentionActivities(pool).apply_retention,
        ],
        **worker_tuning(),
        # Stamped on every workflow task and activity start (46 events of an
        # order): the SDK's hash of the loaded code, 8 of its 32 hex digits
        # (about 1 kB of history per order less), still one per deploy.
        build_id=load_default_build_id()[:8],
        # On SIGTERM, running sends finish and record their outcome instead of
        # being cancelled with their request in flight (a claimed send finishes
        # even when cancelled); sends not yet claimed are left to the next worker.
        graceful_shutdown_timeout=timedelta(seconds=messaging.seconds_for_a_send),
    )


def worker_tuning() -> dict[str, Any]:
    """Worker settings measured with `python -m bench` (README,
    "Benchmarks"), shared with the floor's worker: workflows without the
    sandbox, and as many pollers of each kind as the server's answers call
    for, not a fixed 5 (more orders/s and less CPU per order, in the worker
    and in the server)."""
    return {
        "workflow_runner": workflow_runner(),
        "workflow_task_poller_behavior": PollerBehaviorAutoscaling(),
        "activity_task_poller_behavior": PollerBehaviorAutoscaling(),
    }


def workflow_runner() -> UnsandboxedWorkflowRunner:
    """Workflows run without the SDK's sandbox. With our modules passed
    through (they keep no module state) it caught nothing in them, since they
    call the real datetime, random and I/O, and it cost 14 % of the worker's
    CPU: every activation, and every payload's serialization context, went in
    and out of it (bench/results/profile-before). Determinism is checked where
    it can be: tests/test_replay.py replays every recorded history under the
    full sandbox, which re-imports our modules."""
    return UnsandboxedWorkflowRunner()


async def run_worker(client: Client, database_url: str, env: Mapping[str, str], stop: asyncio.Event) -> None:
    erasure_salt = erasure_salt_from_env(env)
    applied = await migrate(database_url, erasure_salt)
    if applied:
        log.info("database migrated: %s", ", ".join(applied))
    provider_config = ProviderConfig.from_env(env)
    # Their HTTP sessions open with the first request.
    providers = providers_for(provider_config)
    pool = await create_pool(database_url, erasure_salt=erasure_salt, max_size=int(env.get("DATABASE_POOL_SIZE", "10")))
    try:
        rewrapped = await rewrap(pool, payload_keys_from_env(env))
        if rewrapped:
            log.info("re-wrapped %d data keys under the current master key", rewrapped)
        journey = journey_settings_from_env(env)
        worker = build_worker(
            client, pool, provider_config, journey, lifecycle=lifecycle_settings_from_env(env, journey),
            case_routing=case_routing_from_env(env), providers=providers, report_env=env,
        )
        await ensure_schedule(client, schedule_from_env(env))
        await ensure_schedule(client, retention_schedule_from_env(env))
        async with worker:
            log.info("worker polling task queue %r", TASK_QUEUE)
            await stop.wait()
    finally:
        # Once the worker has stopped: no send is left to use them.
        for provider in providers.values():
            await provider.close()
        await pool.close()


async def _main() -> None:
    if "DATABASE_URL" not in os.environ:
        raise SystemExit("DATABASE_URL is required, e.g. postgresql://user:pass@localhost:5432/orders")
    metrics_at = metrics_address(os.environ, "METRICS_PORT", DEFAULT_METRICS_PORT)
    runtime = prometheus_runtime(metrics_at, "METRICS_PORT") if metrics_at else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Every setting checked before anything starts.
        ProviderConfig.from_env(os.environ)
        case_routing_from_env(os.environ)
        leads_from_env(os.environ)
        targets_from_env(os.environ)
        schedule_from_env(os.environ)
        retention_schedule_from_env(os.environ)
        erasure_salt_from_env(os.environ)
        client = await connect_temporal(runtime=runtime)
    except (CodecConfigError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    await run_worker(client, os.environ["DATABASE_URL"], os.environ, stop)


def exit_without_teardown(code: int) -> None:
    """Exit once the work is done, skipping interpreter teardown: the Temporal
    client's Rust threads can touch the GIL while Python finalizes and abort
    the process (temporalio/sdk-python#300)."""
    atexit._run_exitfuncs()  # what a normal exit runs first, e.g. stopping embedded PostgreSQL
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run on uvloop's event loop: each activation, activity task,
    PostgreSQL statement and provider request passes through the loop, and
    uvloop's costs less CPU per order than asyncio's own (README, "Benchmarks")."""
    uvloop.run(main)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_event_loop(_main())
    exit_without_teardown(0)


if __name__ == "__main__":
    main()
