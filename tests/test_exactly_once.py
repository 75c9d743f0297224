"""The exactly-once ledger under the failures of issue items 7 to 11: busy
provider request slots, a worker shut down mid-request, two attempts at once,
retries that re-render, and every kind of provider and database error.

Most tests run `send_message` attempt by attempt in an ActivityEnvironment,
which sets what Temporal would (attempt number, start_to_close_timeout,
heartbeat details), against the real PostgreSQL and the real provider clients
talking to the fakes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.config import ProviderConfig
from activities.messaging import MessagingActivities
from messages.templates import CUSTOMER_TEMPLATES, render
from store.database import create_pool
from tests.conftest import TEST_ERASURE_SALT, new_order, store
from tests.fake_providers import BOUNCING_EMAIL_DOMAIN, FakeProviders, RecordedRequest
from tests.test_journey import kinds
from worker import build_worker
from workflows.ledger_key import LedgerKey
from workflows.models import (
    Channel,
    DeliveryState,
    JourneySettings,
    MessageRequest,
    OrderInput,
    OrderStatusView,
    Touchpoint,
)

# --- helpers -------------------------------------------------------------------


async def recorded_order(pool: asyncpg.Pool, **overrides: Any) -> dict[str, Any]:
    order = new_order(**overrides)
    await store(pool, order)
    return order


def request_for(
    order: dict[str, Any], channel: Channel = Channel.EMAIL, kind: Touchpoint = Touchpoint.ORDER_CONFIRMATION
) -> MessageRequest:
    return MessageRequest(
        key=str(LedgerKey.of_order(order["order_id"], kind, channel)),
        kind=kind,
        channel=channel,
        customer_id=order["customer"]["customer_id"],
        order_id=order["order_id"],
    )


def recipient(order: dict[str, Any], channel: Channel) -> str:
    return order["customer"]["email"] if channel is Channel.EMAIL else order["customer"]["phone"]


def attempt(number: int = 1, *, seconds: float = 60, heartbeat: list[Any] | None = None) -> ActivityEnvironment:
    """An environment standing for one attempt of the activity, as Temporal starts it."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=number, start_to_close_timeout=timedelta(seconds=seconds), heartbeat_details=heartbeat or []
    )
    return env


def requests_to(fakes: FakeProviders, to: str) -> list[RecordedRequest]:
    """Every request about `to`: mail sends, SMS sends and Message look-ups."""
    return [
        r for r in list(fakes.requests)
        if (r.path == "/v3/mail/send" and to in r.body.decode())
        or (r.method == "POST" and r.path.endswith("/Messages.json") and r.form.get("To") == to)
        or (r.method == "GET" and r.params.get("To") == to)
    ]


async def ledger(pool: asyncpg.Pool, key: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT state, attempts, provider_message_id, error FROM message_ledger WHERE key = $1", key)


async def wait_until(condition: Callable[[], Any], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


async def wait_until_async(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(await read()):
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def logging_statements(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str]]]:
    """A worker's pool, and every statement it sends, in order."""
    statements: list[str] = []

    async def log_statements(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda logged: statements.append(logged.query))

    pool = await create_pool(database_url, erasure_salt=TEST_ERASURE_SALT, max_size=2, init=log_statements)
    try:
        yield pool, statements
    finally:
        await pool.close()


class CuttablePostgres:
    """A unix-socket proxy in front of PostgreSQL that can be cut the way an
    outage looks to a client: open connections drop, new ones are refused."""

    def __init__(self, database_url: str) -> None:
        upstream_dir = parse_qs(urlparse(database_url).query)["host"][0]
        self._upstream = str(next(Path(upstream_dir).glob(".s.PGSQL.*")))
        self._dir = Path(self._upstream).parent.with_name(f"proxy-{uuid.uuid4().hex[:6]}")
        self._dir.mkdir()
        self._path = str(self._dir / Path(self._upstream).name)
        self.url = database_url.replace(upstream_dir, str(self._dir))
        self._server: asyncio.AbstractServer | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_unix_server(self._relay, path=self._path)

    async def cut(self) -> None:
        assert self._server
        self._server.close()
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_unix_connection(self._upstream)
        self._links |= {client_writer, server_writer}
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def postgres_behind_proxy(database_url: str):
    proxy = CuttablePostgres(database_url)
    await proxy.open()
    pool = await create_pool(proxy.url, erasure_salt=TEST_ERASURE_SALT)
    yield proxy, pool
    await pool.close()


def cut_when_sent_to(fakes: FakeProviders, proxy: CuttablePostgres, to: str) -> None:
    """PostgreSQL goes away the moment the provider gets the request for `to`,
    so the attempt gets its answer but cannot record it."""
    loop = asyncio.get_running_loop()

    def on_request(req: RecordedRequest) -> None:
        if req.method == "POST" and to in req.body.decode():
            asyncio.run_coroutine_threadsafe(proxy.cut(), loop).result(timeout=5)

    fakes.on_request = on_request


@pytest.fixture(autouse=True)
def no_request_hook(fakes: FakeProviders):
    yield
    fakes.on_request = None


# --- 7: claimed only when the request can leave at once -------------------------


async def three_slow_mails_in_two_request_slots(database_url: str, fakes: FakeProviders, config: ProviderConfig):
    """In a fresh event loop, as in a worker process. Returns the keys that
    were claimed while their request had not reached the provider, and the
    outcomes."""
    pool = await create_pool(database_url, erasure_salt=TEST_ERASURE_SALT)
    try:
        orders = [await recorded_order(pool) for _ in range(3)]
        for order in orders:
            fakes.hang_next(order["customer"]["email"], 1.5)
        messaging = MessagingActivities(pool, config)
        sends = [asyncio.create_task(attempt().run(messaging.send_message, request_for(o))) for o in orders]
        keys = [request_for(o).key for o in orders]
        accepted = lambda: {m.key for m in fakes.accepted} & set(keys)  # noqa: E731
        await wait_until(lambda: len(accepted()) >= 2)
        await asyncio.sleep(0.3)  # time enough for a third claim, if one is made
        claimed = {r["key"] for r in await pool.fetch("SELECT key FROM message_ledger WHERE key = ANY($1) AND state = 'sending'", keys)}
        unsent_claims = claimed - accepted()
        return unsent_claims, await asyncio.gather(*sends)
    finally:
        await pool.close()


def test_item07_no_row_is_claimed_before_a_provider_request_slot_is_free(database_url: str, fakes: FakeProviders, provider_config):
    env = {
        "SENDGRID_API_KEY": provider_config.sendgrid_api_key,
        "SENDGRID_API_HOST": provider_config.sendgrid_api_host,
        "EMAIL_FROM": provider_config.email_from,
        "PROVIDER_TIMEOUT_SECONDS": "5",
        "PROVIDER_THREADS": "2",
    }
    config = ProviderConfig.from_env(env)
    with ThreadPoolExecutor(1) as loop_thread:
        unsent_claims, outcomes = loop_thread.submit(
            asyncio.run, three_slow_mails_in_two_request_slots(database_url, fakes, config)
        ).result()
    assert unsent_claims == set(), "rows claimed while no request slot could send them"
    assert [o.state for o in outcomes] == [DeliveryState.SENT] * 3


# --- 8: a deploy leaves nothing in doubt -------------------------------------------


async def test_item08_a_send_in_flight_at_shutdown_is_recorded_not_left_in_doubt(dev_env, make_harness, fakes: FakeProviders, pool):
    """The worker shuts down (as on SIGTERM) while a mail's request has been
    accepted but not answered. The send finishes and is recorded; the next
    worker finds it sent. On the dev server: the time-skipping one leaves
    queries with the stopped worker's sticky queue."""
    order = new_order()
    email = order["customer"]["email"]
    fakes.hang_next(email, 2.0)
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with make_harness(dev_env, task_queue=queue):
        # Started here, not by the harness, which ends what it started when it stops.
        handle = await dev_env.client.start_workflow(
            "OrderLifecycle", order, id=f"order-{order['order_id']}", task_queue=queue, result_type=OrderStatusView
        )
        await wait_until(lambda: fakes.deliveries_to(email), timeout=20)
    async with make_harness(dev_env, task_queue=queue) as next_worker:
        view = await next_worker.wait_touchpoint(handle, "order_confirmation")
        await handle.terminate("test done")
    assert kinds(view) == [("order_confirmation", "email", "sent")]
    assert len(fakes.deliveries_to(email)) == 1
    assert (await ledger(pool, str(LedgerKey.of_order(order["order_id"], "order_confirmation", "email"))))["state"] == "sent"


# --- 9: one attempt at a time ------------------------------------------------------


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
async def test_item09_a_second_attempt_during_a_live_claim_sends_nothing(pool, fakes: FakeProviders, provider_config, channel):
    """The server starts attempt 2 while attempt 1, past its start_to_close,
    still waits for the provider's answer: attempt 2 neither sends nor looks
    up, and retries later; attempt 1 records the send."""
    order = await recorded_order(pool)
    to = recipient(order, channel)
    fakes.hang_next(to, 2.0)
    messaging = MessagingActivities(pool, provider_config)
    request = request_for(order, channel)
    first = asyncio.create_task(attempt(1).run(messaging.send_message, request))
    await wait_until(lambda: fakes.deliveries_to(to))
    requests_before = len(requests_to(fakes, to))
    with pytest.raises(ApplicationError) as raised:
        await attempt(2).run(messaging.send_message, request)
    assert raised.value.type == "ClaimHeld" and not raised.value.non_retryable
    assert raised.value.next_retry_delay and raised.value.next_retry_delay > timedelta(0)
    assert len(requests_to(fakes, to)) == requests_before
    assert (await first).state is DeliveryState.SENT
    assert (await ledger(pool, request.key))["state"] == "sent"
    assert len(fakes.deliveries_to(to)) == 1


async def test_item09_an_attempt_that_lost_its_claim_changes_nothing(pool, fakes: FakeProviders, provider_config):
    """Attempt 1 outlives its lease (its expiry stands for the time passing)
    while its mail waits for an answer. Attempt 2 takes the row over and,
    SendGrid having no look-up, settles it in doubt. Attempt 1's late answer
    must not overwrite what attempt 2 told the workflow."""
    order = await recorded_order(pool)
    email = order["customer"]["email"]
    fakes.hang_next(email, 2.0)
    messaging = MessagingActivities(pool, provider_config)
    request = request_for(order)
    first = asyncio.create_task(attempt(1).run(messaging.send_message, request))
    await wait_until(lambda: fakes.deliveries_to(email))
    await pool.execute("UPDATE message_ledger SET lease_until = now() WHERE key = $1", request.key)
    second = await attempt(2).run(messaging.send_message, request)
    assert second.state is DeliveryState.IN_DOUBT
    with pytest.raises(ApplicationError) as lost:
        await first
    assert lost.value.type == "ClaimLost"
    assert (await ledger(pool, request.key))["state"] == "in_doubt"
    assert len(fakes.deliveries_to(email)) == 1


async def test_item09_no_request_leaves_without_time_to_record_its_answer(pool, fakes: FakeProviders, provider_config):
    """A 5 s timeout lets a request take 10 s (connect, then read), and the
    answer must still be recorded: an 8 s attempt cannot hold that, which is a
    configuration error, not a reason to send and hope."""
    order = await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config)
    request = request_for(order)
    with pytest.raises(ApplicationError) as raised:
        await attempt(1, seconds=8).run(messaging.send_message, request)
    assert raised.value.type == "ProviderMisconfigured" and raised.value.non_retryable
    assert requests_to(fakes, order["customer"]["email"]) == []
    assert await ledger(pool, request.key) is None


# --- 10: one rendering per message ----------------------------------------------------


def test_item10_every_sms_names_its_order_or_coupon_and_no_two_touchpoints_read_alike():
    """Messages of the customer's journey belong to no order: they name their coupon."""
    order = OrderInput.model_validate(new_order())
    details = {
        "payment_id": "P1", "reason": "out of stock", "carrier": "DHL", "tracking_number": "T1",
        "expected_delivery": "2026-01-02", "delivered_at": "2026-01-02T10:00:00+00:00", "locker_pickup_code": "123",
        "pickup_deadline": "2026-01-05T10:00:00+00:00", "products": [{"sku": "X", "name": "Cable", "category": "c"}],
        "coupon_code": "CPN-7Q2", "discount_percent": 10, "free_shipping": False, "expires_at": "2026-02-01T00:00:00+00:00",
    }
    texts = {kind: render(kind, order, details)[0].sms for kind in Touchpoint}
    customer_kinds = set(CUSTOMER_TEMPLATES)
    assert [kind for kind, text in texts.items() if kind not in customer_kinds and order.order_id not in text] == []
    assert [kind for kind in customer_kinds if "CPN-7Q2" not in texts[kind]] == []
    assert len(set(texts.values())) == len(texts)


async def test_item10_a_retry_sends_what_the_first_attempt_rendered(pool, fakes: FakeProviders, provider_config):
    """Recommendations change between two attempts of one SMS. Attempt 1 got
    no answer; attempt 2 must look for the very text attempt 1 sent (and only
    among messages sent since the claim), find it, and send nothing."""
    uid = uuid.uuid4().hex[:8]
    camera = {"sku": f"CAM-{uid}", "name": "Camera", "quantity": 1, "unit_price": "100", "category": f"cameras-{uid}"}

    def lens(name: str) -> dict[str, Any]:
        return {"sku": f"{name}-{uid}", "name": f"{name} lens", "quantity": 1, "unit_price": "10", "category": f"lenses-{uid}"}

    await recorded_order(pool, items=[camera, lens("WIDE")])
    # Recommendations are marketing: this customer agreed to them by SMS.
    customer = {**new_order()["customer"], "marketing_consent": {"email": True, "sms": True}}
    order = await recorded_order(pool, items=[camera], customer=customer)
    phone = order["customer"]["phone"]
    fakes.hang_next(phone, 1.5)
    messaging = MessagingActivities(pool, dataclasses.replace(provider_config, request_timeout=0.5))
    request = request_for(order, Channel.SMS, Touchpoint.RECOMMENDATIONS)
    with pytest.raises(ApplicationError):
        await attempt(1).run(messaging.send_message, request)
    for _ in range(2):  # other customers now buy another lens with the camera more often
        await recorded_order(pool, items=[camera, lens("TELE")])
    outcome = await attempt(2).run(messaging.send_message, request)
    assert outcome.state is DeliveryState.SENT
    assert len(fakes.deliveries_to(phone)) == 1


# --- 11: every error read rightly ---------------------------------------------------


def test_item11_every_error_of_both_clients_is_classified():
    import socket

    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey
    from python_http_client import exceptions as sg
    from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
    from twilio.http.response import Response

    from providers.verdicts import Verdict, classify

    never, maybe, refused, misconfigured = (
        Verdict.NEVER_ARRIVED, Verdict.MAY_HAVE_ARRIVED, Verdict.REFUSED, Verdict.MISCONFIGURED
    )

    def sendgrid(status: int, cls=sg.HTTPError) -> sg.HTTPError:
        return cls(status, "reason", b'{"errors":[{"message":"x"}]}', {})

    def twilio(status: int) -> TwilioRestException:
        return TwilioRestException(status, "/2010-04-01/Accounts/AC1/Messages.json", "Unable to create record", 20001)

    def twilio_problem(status: int) -> TwilioServiceException:
        return TwilioServiceException("https://www.twilio.com/docs/errors/21211", "Invalid", status, 21211)

    api = ConnectionKey("api.twilio.com", 443, True, True, None, None, None)
    expected = {
        # SendGrid: its answers raised as python_http_client raises them
        sendgrid(400, sg.BadRequestsError): refused,
        sendgrid(401, sg.UnauthorizedError): misconfigured,
        sendgrid(403, sg.ForbiddenError): misconfigured,
        sendgrid(404, sg.NotFoundError): refused,
        sendgrid(405, sg.MethodNotAllowedError): refused,
        sendgrid(413, sg.PayloadTooLargeError): refused,
        sendgrid(415, sg.UnsupportedMediaTypeError): refused,
        sendgrid(408): never,
        sendgrid(429, sg.TooManyRequestsError): never,
        sendgrid(500, sg.InternalServerError): never,
        sendgrid(502): maybe,
        sendgrid(503, sg.ServiceUnavailableError): never,
        sendgrid(504, sg.GatewayTimeoutError): maybe,
        # Twilio: the twilio client's own errors
        twilio(400): refused,
        twilio(401): misconfigured,
        twilio(403): misconfigured,
        twilio(404): refused,
        twilio(429): never,
        twilio(500): maybe,
        twilio(502): maybe,
        twilio(503): never,
        twilio(504): maybe,
        twilio_problem(400): refused,
        twilio_problem(401): misconfigured,
        twilio_problem(429): never,
        twilio_problem(502): maybe,
        TwilioException("Unable to fetch page", Response(503, "", {})): never,
        TwilioException("Unable to fetch page", Response(401, "", {})): misconfigured,
        TwilioException("Page Records can not be deserialized"): maybe,
        # Both: aiohttp, connecting (nothing written), then writing and reading
        aiohttp.ClientConnectorError(api, ConnectionRefusedError(111, "Connect call failed")): never,
        aiohttp.ClientConnectorDNSError(api, socket.gaierror(-2, "Name or service not known")): never,
        aiohttp.ClientConnectorCertificateError(api, ValueError("certificate verify failed")): never,
        aiohttp.ConnectionTimeoutError("Connection timeout to host https://api.twilio.com"): never,
        aiohttp.SocketTimeoutError("Timeout on reading data from socket"): maybe,
        aiohttp.ServerDisconnectedError(): maybe,
        aiohttp.ClientOSError(104, "Connection reset by peer"): maybe,
        aiohttp.ClientPayloadError("Response payload is not completed"): maybe,
        aiohttp.InvalidURL("api.sendgrid.com/v3/mail/send"): misconfigured,
        aiohttp.InvalidUrlClientError("api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"): misconfigured,
        aiohttp.NonHttpUrlClientError("ftp://api.sendgrid.com/v3/mail/send"): misconfigured,
        # Anything else proves nothing: the request may have left.
        TimeoutError("timed out"): maybe,
        ConnectionResetError(104, "reset"): maybe,
        RuntimeError("unexpected"): maybe,
    }
    wrong = {f"{type(err).__name__} {err}": (classify(err), verdict) for err, verdict in expected.items() if classify(err) is not verdict}
    assert wrong == {}


# --- issue 19: no thread per provider request --------------------------------------


async def test_item19_sends_and_look_ups_make_their_requests_on_the_event_loop_without_a_thread(
    pool, fakes: FakeProviders, provider_config, monkeypatch
):
    """A mail, an SMS whose answer was lost and is looked up, and a staff
    mail, while no thread pool takes any work: each provider request runs on
    the event loop."""
    from activities.staff_mail import StaffMailer
    from providers import RenderedMessage

    def no_thread(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a provider request was handed to a thread")

    order = await recorded_order(pool)
    phone = order["customer"]["phone"]
    fakes.hang_next(phone, 1.5)
    messaging = MessagingActivities(pool, dataclasses.replace(provider_config, request_timeout=0.5))
    monkeypatch.setattr(ThreadPoolExecutor, "submit", no_thread)
    mail = await attempt(1).run(messaging.send_message, request_for(order))
    with pytest.raises(ApplicationError) as unanswered:
        await attempt(1).run(messaging.send_message, request_for(order, Channel.SMS))
    assert "did not answer" in str(unanswered.value)
    sms = await attempt(2).run(messaging.send_message, request_for(order, Channel.SMS))
    staff = RenderedMessage(f"staff-{uuid.uuid4().hex[:8]}", f"lead.{uuid.uuid4().hex[:8]}@shop.example", "Report", "text", "<p>text</p>")
    staff_id = await attempt(1).run(
        StaffMailer(pool, messaging.provider(Channel.EMAIL)).send, staff, order_id=None, kind="wocas_report"
    )
    assert (mail.state, sms.state) == (DeliveryState.SENT, DeliveryState.SENT) and staff_id
    assert [len(fakes.deliveries_to(to)) for to in (order["customer"]["email"], phone, staff.recipient)] == [1, 1, 1]


async def test_item19_a_send_cancelled_with_its_request_in_flight_finishes_and_records_the_answer(
    pool, fakes: FakeProviders, provider_config
):
    """The attempt is cancelled (a worker shutting down, its timeout) while
    SendGrid holds the request, unanswered: the request on the event loop is
    not cut off, its answer is recorded, and the outcome is the send's."""
    order = await recorded_order(pool)
    email = order["customer"]["email"]
    fakes.hang_next(email, 1.0)
    messaging = MessagingActivities(pool, provider_config)
    request = request_for(order)
    env = attempt(1)
    sending = asyncio.create_task(env.run(messaging.send_message, request))
    await wait_until(lambda: fakes.deliveries_to(email))
    env.cancel()
    outcome = await sending
    assert outcome.state is DeliveryState.SENT
    assert (await ledger(pool, request.key))["state"] == "sent"
    assert len(fakes.deliveries_to(email)) == 1


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
async def test_item19_a_refused_connection_never_arrived_and_a_url_not_http_is_misconfigured(
    pool, fakes: FakeProviders, provider_config, channel, unused_tcp_port
):
    """Read from aiohttp's own errors: a refused connection wrote nothing (the
    row goes back 'pending', sent by the next attempt); an address that is
    not http(s) (htp://) is a setting to fix (paused, non-retryable)."""
    host = "sendgrid_api_host" if channel is Channel.EMAIL else "twilio_api_base_url"
    order = await recorded_order(pool)
    request = request_for(order, channel)
    closed = MessagingActivities(pool, dataclasses.replace(provider_config, **{host: f"http://127.0.0.1:{unused_tcp_port}"}))
    with pytest.raises(ApplicationError) as refused:
        await attempt(1).run(closed.send_message, request)
    assert refused.value.type == "ProviderUnavailable" and "unreachable" in str(refused.value)
    assert (await ledger(pool, request.key))["state"] == "pending"
    schemeless = MessagingActivities(pool, dataclasses.replace(provider_config, **{host: f"htp://127.0.0.1:{unused_tcp_port}"}))
    with pytest.raises(ApplicationError) as misconfigured:
        await attempt(2).run(schemeless.send_message, request)
    assert misconfigured.value.type == "ProviderMisconfigured" and misconfigured.value.non_retryable
    assert (await ledger(pool, request.key))["state"] == "pending"
    assert requests_to(fakes, recipient(order, channel)) == []


@pytest.mark.parametrize("status", [502, 504])
@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
async def test_item11_a_gateway_error_after_acceptance_is_never_sent_again(pool, fakes: FakeProviders, provider_config, channel, status):
    order = await recorded_order(pool)
    to = recipient(order, channel)
    fakes.fail_next(to, status)
    messaging = MessagingActivities(pool, provider_config)
    request = request_for(order, channel)
    with pytest.raises(ApplicationError) as raised:
        await attempt(1).run(messaging.send_message, request)
    assert raised.value.type == "ProviderUnavailable" and not raised.value.non_retryable
    outcome = await attempt(2).run(messaging.send_message, request)
    # Twilio is asked and has it; SendGrid cannot be asked.
    assert outcome.state is (DeliveryState.IN_DOUBT if channel is Channel.EMAIL else DeliveryState.SENT)
    assert len(fakes.deliveries_to(to)) == 1


async def test_item11_a_failed_twilio_look_up_is_retried_and_sends_nothing(pool, fakes: FakeProviders, provider_config):
    order = await recorded_order(pool)
    phone = order["customer"]["phone"]
    fakes.hang_next(phone, 1.5)
    messaging = MessagingActivities(pool, dataclasses.replace(provider_config, request_timeout=0.5))
    request = request_for(order, Channel.SMS)
    with pytest.raises(ApplicationError):
        await attempt(1).run(messaging.send_message, request)
    fakes.fail_next_lookup(phone, 503)
    with pytest.raises(ApplicationError) as raised:
        await attempt(2).run(messaging.send_message, request)
    assert raised.value.type == "ProviderUnavailable" and not raised.value.non_retryable
    outcome = await attempt(3).run(messaging.send_message, request)
    assert outcome.state is DeliveryState.SENT
    assert len(fakes.deliveries_to(phone)) == 1


async def test_item11_a_refusal_in_the_rfc9457_format_is_final(pool, fakes: FakeProviders, provider_config):
    order = await recorded_order(pool)
    phone = order["customer"]["phone"]
    fakes.answer_in_problem_format(phone)
    fakes.fail_next(phone, 400)
    messaging = MessagingActivities(pool, provider_config)
    request = request_for(order, Channel.SMS)
    outcome = await attempt(1).run(messaging.send_message, request)
    assert outcome.state is DeliveryState.FAILED
    assert "21211" in outcome.error and phone not in outcome.error
    assert (await ledger(pool, request.key))["state"] == "failed"


ANSWERS = {
    # answer: (fault set up for the recipient, state at the end, requests made in all)
    "429": ((429,), DeliveryState.SENT, 2),
    "refused": ((), DeliveryState.FAILED, 1),
    "accepted": ((), DeliveryState.SENT, 1),
}


@pytest.mark.parametrize("answer", ANSWERS)
async def test_item11_an_outcome_postgres_could_not_take_reaches_the_next_attempt(
    pool, postgres_behind_proxy, fakes: FakeProviders, provider_config, answer
):
    """PostgreSQL goes away as the provider answers. Attempt 1 cannot record
    the answer; attempt 2 must still act on it: send what never arrived,
    never resend what was refused or accepted, and never call it in doubt."""
    proxy, proxied_pool = postgres_behind_proxy
    overrides = {}
    if answer == "refused":
        overrides["customer"] = {**new_order()["customer"], "email": f"x{uuid.uuid4().hex[:8]}@{BOUNCING_EMAIL_DOMAIN}"}
    order = await recorded_order(pool, **overrides)
    email = order["customer"]["email"]
    faults, final_state, requests_made = ANSWERS[answer]
    fakes.fail_next(email, *faults)
    cut_when_sent_to(fakes, proxy, email)
    messaging = MessagingActivities(proxied_pool, dataclasses.replace(provider_config, request_timeout=1))
    request = request_for(order)
    first = attempt(1, seconds=8)
    handed_over: list[Any] = []
    first.on_heartbeat = lambda *details: handed_over.extend(details)
    with pytest.raises(ApplicationError) as raised:
        await asyncio.wait_for(first.run(messaging.send_message, request), 20)
    assert raised.value.type == "LedgerUnavailable" and not raised.value.non_retryable
    fakes.on_request = None
    await proxy.open()
    outcome = await attempt(2, heartbeat=handed_over[-1:]).run(messaging.send_message, request)
    assert outcome.state is final_state
    assert len(requests_to(fakes, email)) == requests_made
    assert (await ledger(pool, request.key))["state"] == final_state.value
    if final_state is DeliveryState.SENT:
        [mail] = [m for m in fakes.accepted if m.recipient == email]
        assert outcome.provider_message_id == mail.provider_id


async def test_item11_heartbeat_details_reach_the_next_attempt_on_a_real_server(
    ts_env, postgres_behind_proxy, fakes: FakeProviders, provider_config, pool
):
    """The hand-over above relies on Temporal passing attempt 1's heartbeat to
    attempt 2. A real worker and server: PostgreSQL goes away as SendGrid
    answers 429, and comes back only once the server shows the failed attempt
    with its heartbeat."""
    proxy, proxied_pool = postgres_behind_proxy
    order = new_order()
    email = order["customer"]["email"]
    fakes.fail_next(email, 429)
    cut_when_sent_to(fakes, proxy, email)
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    worker = build_worker(ts_env.client, proxied_pool, provider_config, JourneySettings(), task_queue=queue)
    async with worker:
        handle = await ts_env.client.start_workflow("OrderLifecycle", order, id=f"order-{order['order_id']}", task_queue=queue)
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            pending = (await handle.describe()).raw_description.pending_activities
            if pending and pending[0].attempt >= 2 and pending[0].heartbeat_details.payloads:
                break
            assert asyncio.get_running_loop().time() < deadline, f"no retry with heartbeat details: {pending}"
            await asyncio.sleep(0.1)
        fakes.on_request = None
        await proxy.open()
        await wait_until(lambda: fakes.deliveries_to(email), timeout=20)
        key = str(LedgerKey.of_order(order["order_id"], "order_confirmation", "email"))
        await wait_until_async(lambda: ledger(pool, key), lambda row: row and row["state"] == "sent")
        await handle.terminate("test done")
    assert len(fakes.deliveries_to(email)) == 1


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
async def test_item11_rejected_credentials_pause_the_provider_with_one_alert(
    pool, fakes: FakeProviders, provider_config, caplog, channel
):
    secret = f"revoked{uuid.uuid4().hex[:12]}"
    if channel is Channel.EMAIL:
        config = dataclasses.replace(provider_config, sendgrid_api_key=f"SG.{secret}")
    else:
        config = dataclasses.replace(provider_config, twilio_auth_token=secret)
    fakes.revoke(secret)
    messaging = MessagingActivities(pool, config)
    first, second = await recorded_order(pool), await recorded_order(pool)
    caplog.set_level(logging.INFO)
    errors = []
    for order in (first, second):
        with pytest.raises(ApplicationError) as raised:
            await attempt(1).run(messaging.send_message, request_for(order, channel))
        errors.append(raised.value)
    assert {(e.type, e.non_retryable) for e in errors} == {("ProviderMisconfigured", True)}
    assert "paused until the configuration is fixed" in errors[0].message
    assert errors[0].message == errors[1].message
    assert len(requests_to(fakes, recipient(first, channel))) == 1
    assert requests_to(fakes, recipient(second, channel)) == []
    # Put back, so it is sent once the configuration is fixed.
    assert (await ledger(pool, request_for(first, channel).key))["state"] == "pending"
    alerts = [r for r in caplog.records if r.levelno >= logging.ERROR and "rejected" in r.getMessage()]
    assert [r.getMessage() for r in alerts] == [errors[0].message]
    assert secret not in errors[0].message


async def test_a_first_send_reads_permission_in_the_statement_that_registers_it(database_url: str, provider_config):
    """A new message of an order the worker holds: one statement reads
    whether the customer was forgotten, their consent and the suppression
    list, and registers and claims the row; one records the answer."""
    async with logging_statements(database_url) as (pool, statements):
        order = await recorded_order(pool)
        messaging = MessagingActivities(pool, provider_config)
        # The first send reads the order's document; the worker keeps it.
        await attempt().run(messaging.send_message, request_for(order, Channel.EMAIL))
        statements.clear()
        outcome = await attempt().run(messaging.send_message, request_for(order, Channel.SMS))
    assert outcome.state is DeliveryState.SENT
    assert len(statements) == 2, "\n---\n".join(statements)
    assert "message_refusal(" in statements[0] and "INSERT INTO message_ledger" in statements[0]


async def test_item19_a_request_whose_body_the_provider_stops_reading_ends_within_twice_the_timeout(provider_config):
    """aiohttp times a read only once the body is written: the whole request
    is bounded too, so a stalled upload (a large mail to a provider that
    stops reading) cannot outlive the attempt's lease; it may have arrived."""
    import time

    from providers import Attachment, RenderedMessage
    from providers.sendgrid import SendGridEmail
    from providers.verdicts import Verdict, classify

    def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled.append(writer)  # kept open, and never read

    stalled: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    email = SendGridEmail(dataclasses.replace(provider_config, sendgrid_api_host=f"http://127.0.0.1:{port}", request_timeout=0.5))
    big = Attachment("figures.bin", "application/octet-stream", b"\0" * 32_000_000)
    message = RenderedMessage("stalled-upload", "someone@example.com", "Report", "text", "<p>html</p>", attachments=(big,))
    began = time.monotonic()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(Exception) as raised:
                await email.send(message)
    finally:
        await email.close()
        server.close()
    assert time.monotonic() - began < 3
    assert classify(raised.value) is Verdict.MAY_HAVE_ARRIVED


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
async def test_item19_a_provider_closed_then_used_again_opens_new_connections(fakes: FakeProviders, provider_config, channel):
    from activities.messaging import providers_for
    from providers import RenderedMessage

    provider = providers_for(provider_config)[channel]
    to = "closed.then.used@example.com" if channel is Channel.EMAIL else "+48600111222"
    for n in (1, 2):
        await provider.send(RenderedMessage(f"closed-then-used-{uuid.uuid4().hex}", to, "Hello", f"text {n}", "<p>html</p>"))
        await provider.close()
    assert len(fakes.deliveries_to(to)) == 2
