"""Mail left in doubt is settled, not left to an operator (issue 9).

A mail whose worker died between claiming its ledger row and learning what
SendGrid did with the request is in doubt. SENDGRID_SETTLE_AFTER later the
order settles it: sent if its ledger row was settled meanwhile by SendGrid's
own event, sent if SendGrid's Email Activity shows it, otherwise sent now,
once. What stays in doubt (Email Activity not bought) is flagged, and the
operator's commands act on it: `orders attention`, `orders resend`."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from activities.config import ProviderConfig
from activities.messaging import MessagingActivities
from providers import RenderedMessage
from providers.sendgrid import SendGridEmail
from providers.twilio import TwilioSms
from tests.conftest import continue_as_new, new_order, payment_for
from tests.fake_providers import EMAIL_ACTIVITY, FakeProviders, RecordedRequest
from tests.test_exactly_once import attempt, ledger, recorded_order, request_for
from tests.test_journey import kinds
from tests.test_provider_events import config, journey_web, post_events, sendgrid_event  # noqa: F401 (fixtures)
from tests.test_sending import WorkerDied
from workflows.ledger_key import LedgerKey
from workflows.models import Channel, DeliveryState, OrderStatusView, SendMode

# --- the crash windows --------------------------------------------------------------


class WorkerDiesOncePerMail(SendGridEmail):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.config = config
        # Keys of the mails whose worker died already.
        self.died: set[str] = set()

    def dies(self, message: RenderedMessage) -> bool:
        first = message.key not in self.died
        self.died.add(message.key)
        return first


class MailLostBeforeRequest(WorkerDiesOncePerMail):
    """The worker dies after claiming a mail's row, before its request leaves:
    SendGrid never gets it."""

    async def send(self, message: RenderedMessage) -> str:
        if self.dies(message):
            raise WorkerDied("worker killed before the mail's request left")
        return await super().send(message)


class MailAcceptedThenWorkerDied(WorkerDiesOncePerMail):
    """SendGrid takes the mail, then the worker dies before the answer is recorded."""

    async def send(self, message: RenderedMessage) -> str:
        message_id = await super().send(message)
        if self.dies(message):
            raise WorkerDied("worker killed between SendGrid's acceptance and the ledger")
        return message_id


def providers(config: ProviderConfig, email: SendGridEmail) -> dict[Channel, Any]:
    return {Channel.EMAIL: email, Channel.SMS: TwilioSms(config)}


def searches_for(fakes: FakeProviders, key: str) -> list[RecordedRequest]:
    """Email Activity searches for the mail with ledger key `key`."""
    return [r for r in list(fakes.requests) if r.method == "GET" and r.path == "/v3/messages" and key in r.params.get("query", "")]


def mail_sends_for(fakes: FakeProviders, key: str) -> list[RecordedRequest]:
    return [r for r in list(fakes.requests) if r.path == "/v3/mail/send" and key in r.body.decode()]


def states_of(view: OrderStatusView, kind: str, channel: str = "email") -> list[str]:
    return [t.state.value for t in view.touchpoints if t.kind == kind and t.channel == channel]


def settled(kind: str, channel: str = "email"):
    """The message has a touchpoint, and its latest is no longer in doubt."""
    return lambda view: states_of(view, kind, channel)[-1:] not in ([], ["in_doubt"])


def key_of(order: dict[str, Any], kind: str = "order_confirmation", channel: str = "email") -> str:
    return str(LedgerKey.of_order(order["order_id"], kind, channel))


def settling(request, mode: SendMode = SendMode.SETTLE):
    return request.model_copy(update={"mode": mode})


async def left_in_doubt(pool: asyncpg.Pool, messaging: MessagingActivities, request) -> Any:
    """Attempt 1 dies without an answer; attempt 2 finds the row and, SendGrid
    having no instant look-up, leaves it in doubt."""
    with pytest.raises(ApplicationError):
        await attempt(1).run(messaging.send_message, request)
    return await attempt(2).run(messaging.send_message, request)


# --- in the order's workflow ---------------------------------------------------------


async def confirmation_after_a_crash(
    ts_env, make_harness, sendgrid: WorkerDiesOncePerMail, history: str | None = None
) -> tuple[dict[str, Any], OrderStatusView]:
    """An order whose confirmation `sendgrid` leaves in doubt; its status once
    the confirmation is settled (with `history`, kept under that name)."""
    order = new_order()
    async with make_harness(ts_env, providers=providers(sendgrid.config, sendgrid)) as h:
        handle = await h.start(order)
        view = await h.wait_for(handle, settled("order_confirmation"))
        await handle.terminate("test done")
        if history:
            await h.keep_history(handle, history)
    return order, view


async def test_a_mail_lost_before_its_request_is_sent_once_after_the_window(
    ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """Nothing reached SendGrid, and Email Activity shows nothing: after the
    window the order sends it, once, and is not flagged."""
    order, view = await confirmation_after_a_crash(ts_env, make_harness, MailLostBeforeRequest(provider_config))
    key = key_of(order)
    assert states_of(view, "order_confirmation") == ["in_doubt", "sent"]
    assert not view.needs_attention, view.attention_reasons
    assert len(fakes.deliveries_to(order["customer"]["email"])) == 1
    [search] = searches_for(fakes, key)
    requests = list(fakes.requests)
    assert requests.index(search) < requests.index(mail_sends_for(fakes, key)[-1]), "looked up before sending"
    [mail] = [m for m in fakes.accepted if m.key == key]
    row = await ledger(pool, key)
    assert (row["state"], row["provider_message_id"]) == ("sent", mail.provider_id)


async def test_a_mail_sendgrid_took_is_settled_from_email_activity_not_sent_again(
    ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """SendGrid took the mail, the worker died before recording it: after the
    window Email Activity shows it, so it is recorded sent with SendGrid's
    message id, and never sent again."""
    order, view = await confirmation_after_a_crash(
        ts_env, make_harness, MailAcceptedThenWorkerDied(provider_config), history="message_settled"
    )
    key = key_of(order)
    assert states_of(view, "order_confirmation") == ["in_doubt", "sent"]
    assert not view.needs_attention, view.attention_reasons
    [mail] = [m for m in fakes.accepted if m.recipient == order["customer"]["email"]]
    assert len(mail_sends_for(fakes, key)) == 1 and len(searches_for(fakes, key)) == 1
    row = await ledger(pool, key)
    assert (row["state"], row["provider_message_id"]) == ("sent", mail.provider_id)
    assert view.touchpoints[-1].provider_message_id == mail.provider_id


async def test_a_mail_settled_meanwhile_by_sendgrids_event_is_neither_looked_up_nor_sent(
    ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """During the window SendGrid's `processed` event, carrying the ledger
    key, turns the row 'sent' (as the Event Webhook does): the order takes
    that, and neither asks Email Activity nor sends."""
    order = new_order()
    key = key_of(order)
    config = dataclasses.replace(provider_config, sendgrid_settle_after=timedelta(seconds=3))
    async with make_harness(ts_env, config=config, providers=providers(config, MailLostBeforeRequest(config))) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await pool.execute("UPDATE message_ledger SET state = 'sent', provider_message_id = 'sg-event' WHERE key = $1", key)
        view = await h.wait_for(handle, settled("order_confirmation"))
        await handle.terminate("test done")
    assert states_of(view, "order_confirmation") == ["in_doubt", "sent"]
    assert view.touchpoints[-1].provider_message_id == "sg-event"
    assert not view.needs_attention, view.attention_reasons
    assert searches_for(fakes, key) == [] and mail_sends_for(fakes, key) == []


async def test_without_email_activity_the_mail_stays_in_doubt_and_the_order_is_flagged(
    ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """The account has not bought Email Activity (403): nothing can tell, so
    nothing is sent again; the mail stays in doubt, flagged for an operator."""
    order = new_order()
    fakes.refuse_email_activity(403)
    try:
        async with make_harness(ts_env, providers=providers(provider_config, MailLostBeforeRequest(provider_config))) as h:
            handle = await h.start(order)
            view = await h.wait_for(handle, lambda v: v.needs_attention)
            await handle.terminate("test done")
    finally:
        fakes.refuse_email_activity(None)
    key = key_of(order)
    assert states_of(view, "order_confirmation") == ["in_doubt", "in_doubt"]
    assert view.attention_reasons == ["message_in_doubt:order_confirmation:email"]
    assert "Email Activity" in view.touchpoints[-1].error
    assert fakes.deliveries_to(order["customer"]["email"]) == []
    assert len(searches_for(fakes, key)) == 1
    assert (await ledger(pool, key))["state"] == "in_doubt"


@pytest.mark.parametrize("event", ["processed", "delivered", "bounce"])
async def test_without_email_activity_sendgrids_event_settles_the_mail_and_lifts_the_flag(
    ts_env, make_harness, journey_web, fakes: FakeProviders, provider_config: ProviderConfig, pool, event: str
):
    """Email Activity is not bought, so the mail SendGrid took is left in
    doubt and flagged; then SendGrid's Event Webhook reports on it. The report
    proves SendGrid had it: settled as sent, the flag lifted, nothing sent
    again; a bounce is then acted on as any bounce."""
    order = new_order()
    email, phone = order["customer"]["email"], order["customer"]["phone"]
    fakes.refuse_email_activity(403)
    try:
        async with (
            make_harness(ts_env, providers=providers(provider_config, MailAcceptedThenWorkerDied(provider_config))) as h,
            journey_web(ts_env) as web,
        ):
            handle = await h.start(order)
            await h.wait_for(handle, lambda v: "message_in_doubt:order_confirmation:email" in v.attention_reasons)
            [taken] = [m for m in fakes.accepted if m.recipient == email]
            report = sendgrid_event(
                event, key_of(order), sg_message_id=f"{taken.provider_id}.filter0001.1.2.0",
                **({"type": "bounce", "reason": "550 5.1.1 user unknown"} if event == "bounce" else {}),
            )
            assert (await post_events(web, [report])).status_code == 200
            view = await h.wait_for(handle, lambda v: "message_in_doubt:order_confirmation:email" not in v.attention_reasons)
            if event == "bounce":
                view = await h.wait_touchpoint(handle, "order_confirmation", "sms")
            else:  # the relay may deliver a signal twice: the repeat changes nothing
                settled = {"key": key_of(order), "channel": "email", "state": "sent", "provider_message_id": taken.provider_id}
                await handle.signal("message_settled", settled)
            view = await h.wait_queues_empty(handle)
            await handle.terminate("test done")
    finally:
        fakes.refuse_email_activity(None)
    assert (await ledger(pool, key_of(order)))["state"] == "sent"
    assert len(fakes.deliveries_to(email)) == 1
    if event == "bounce":
        assert states_of(view, "order_confirmation") == ["in_doubt", "in_doubt", "undelivered"]
        assert states_of(view, "order_confirmation", "sms") == ["sent"]
        assert view.attention_reasons == ["message_undelivered:order_confirmation:email"]
    else:
        assert states_of(view, "order_confirmation") == ["in_doubt", "in_doubt", "sent"]
        assert not view.needs_attention and fakes.deliveries_to(phone) == []


async def signalled(handle, name: str, timeout: float = 20) -> None:
    """Until the workflow's history holds a signal `name` (the HTTP service's relay delivered it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(
        e.workflow_execution_signaled_event_attributes.signal_name == name for e in (await handle.fetch_history()).events
    ):
        assert asyncio.get_running_loop().time() < deadline, f"no {name} signal"
        await asyncio.sleep(0.1)


async def test_a_bounce_reported_while_the_mail_is_being_settled_is_acted_on_once_it_is_settled(
    ts_env, make_harness, journey_web, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """Issue 16 item 1. SendGrid took the confirmation, the worker died before
    recording it: the mail waits, in doubt, for its settle moment. SendGrid's
    bounce comes meanwhile. The report waits for the settlement, and once
    that records the mail sent it is acted on: recorded undelivered, flagged,
    and the confirmation goes by SMS."""
    order = new_order()
    email, phone = order["customer"]["email"], order["customer"]["phone"]
    key = key_of(order)
    config = dataclasses.replace(provider_config, sendgrid_settle_after=timedelta(minutes=10))
    async with (
        make_harness(ts_env, config=config, providers=providers(config, MailAcceptedThenWorkerDied(config))) as h,
        journey_web(ts_env) as web,
    ):
        handle = await h.start(order)
        await h.wait_for(handle, lambda v: states_of(v, "order_confirmation") == ["in_doubt"])
        [taken] = [m for m in fakes.accepted if m.recipient == email]
        bounce = sendgrid_event(
            "bounce", key, type="bounce", reason="550 5.1.1 user unknown", sg_message_id=f"{taken.provider_id}.filter0001.1.2.0"
        )
        assert (await post_events(web, [bounce])).status_code == 200
        await signalled(handle, "message_undelivered")
        await ts_env.sleep(timedelta(minutes=11))
        view = await h.wait_for(handle, lambda v: states_of(v, "order_confirmation", "sms"))
        view = await h.wait_queues_empty(handle)
        await handle.terminate("test done")
    assert states_of(view, "order_confirmation") == ["in_doubt", "sent", "undelivered"]
    assert states_of(view, "order_confirmation", "sms") == ["sent"]
    assert view.attention_reasons == ["message_undelivered:order_confirmation:email"]
    assert len(fakes.deliveries_to(email)) == 1 and len(fakes.deliveries_to(phone)) == 1


async def test_the_window_holds_up_no_other_mail_and_an_overtaken_mail_is_not_sent_late(
    ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """The payment confirmation is in doubt; the order is dispatched during
    the window. The dispatch notice goes at once, and at the end of the window
    the payment confirmation, found nowhere, is superseded: not sent late."""
    order = new_order()
    email = order["customer"]["email"]
    config = dataclasses.replace(provider_config, sendgrid_settle_after=timedelta(seconds=4))
    sendgrid = MailLostBeforeRequest(config)
    sendgrid.died |= {key_of(order), key_of(order, "dispatch_notice")}  # these go normally
    async with make_harness(ts_env, config=config, providers=providers(config, sendgrid)) as h:
        handle = await h.start(order)
        await h.wait_touchpoint(handle, "order_confirmation")
        await handle.signal("payment_received", payment_for(order))
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "OVT1", "expected_delivery": await h.tomorrow()})
        during = await h.wait_touchpoint(handle, "dispatch_notice")
        view = await h.wait_for(handle, settled("payment_confirmation"))
        await handle.terminate("test done")
    assert states_of(during, "payment_confirmation") == ["in_doubt"], "the dispatch notice waited for the window"
    assert states_of(view, "payment_confirmation") == ["in_doubt", "superseded"]
    assert not view.needs_attention, view.attention_reasons
    assert [t.split("\n")[0] for t in fakes.deliveries_to(email)] == [
        f"Order {order['order_id']} confirmed", f"Order {order['order_id']} is on its way"
    ]
    assert (await ledger(pool, key_of(order, "payment_confirmation")))["state"] == "pending"


async def test_a_mail_in_doubt_is_settled_once_by_the_run_the_order_continued_as_new_into(
    ts_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """The order continues as new while its confirmation waits, in doubt, for
    its settle moment: the next run settles it (found in Email Activity), and
    SendGrid gets the mail once."""
    order = new_order()
    key = key_of(order)
    config = dataclasses.replace(provider_config, sendgrid_settle_after=timedelta(minutes=10))
    async with make_harness(ts_env, config=config, providers=providers(config, MailAcceptedThenWorkerDied(config))) as h:
        started = await h.start(order)
        handle = h.client.get_workflow_handle(started.id, result_type=OrderStatusView)  # follows the latest run
        await h.wait_for(handle, lambda v: states_of(v, "order_confirmation") == ["in_doubt"])
        handle = await continue_as_new(h, handle)
        assert (await handle.describe()).run_id != started.first_execution_run_id
        assert searches_for(fakes, key) == [], "settled before its moment"
        await ts_env.sleep(timedelta(minutes=11))
        view = await h.wait_for(handle, settled("order_confirmation"))
        await handle.terminate("test done")
    assert states_of(view, "order_confirmation") == ["in_doubt", "sent"]
    assert not view.needs_attention, view.attention_reasons
    assert len(mail_sends_for(fakes, key)) == 1 and len(searches_for(fakes, key)) == 1
    assert (await ledger(pool, key))["state"] == "sent"


# --- the settling attempt, step by step ------------------------------------------------


async def test_a_mail_in_doubt_waits_for_its_window_and_no_request_is_made_meanwhile(
    pool, fakes: FakeProviders, provider_config: ProviderConfig
):
    order = await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config, providers(provider_config, MailLostBeforeRequest(provider_config)))
    request = request_for(order)
    before = datetime.now(timezone.utc)
    outcome = await left_in_doubt(pool, messaging, request)
    assert outcome.state is DeliveryState.IN_DOUBT
    window = provider_config.sendgrid_settle_after
    assert before + window <= outcome.not_before <= datetime.now(timezone.utc) + window + timedelta(seconds=1)
    # Asked again before it is due (a continued run, the same order started
    # twice): the same answer, and still no request.
    again = await attempt(1).run(messaging.send_message, request)
    assert (again.state, again.not_before) == (DeliveryState.IN_DOUBT, outcome.not_before)
    assert searches_for(fakes, request.key) == [] and mail_sends_for(fakes, request.key) == []


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_an_email_activity_outage_is_retried_and_sends_nothing_meanwhile(
    pool, fakes: FakeProviders, provider_config: ProviderConfig, status
):
    order = await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config, providers(provider_config, MailLostBeforeRequest(provider_config)))
    request = request_for(order)
    await left_in_doubt(pool, messaging, request)
    fakes.fail_next(EMAIL_ACTIVITY, status)
    with pytest.raises(ApplicationError) as raised:
        await attempt(1).run(messaging.send_message, settling(request))
    assert raised.value.type == "ProviderUnavailable" and not raised.value.non_retryable
    assert (await ledger(pool, request.key))["state"] == "in_doubt"
    assert mail_sends_for(fakes, request.key) == []
    outcome = await attempt(2).run(messaging.send_message, settling(request))
    assert outcome.state is DeliveryState.SENT
    assert len(fakes.deliveries_to(order["customer"]["email"])) == 1
    assert len(searches_for(fakes, request.key)) == 2


async def test_email_activity_refused_leaves_the_mail_in_doubt_for_good_and_mail_sends_go_on(
    pool, fakes: FakeProviders, provider_config: ProviderConfig
):
    """403 from Email Activity says the add-on or the key's access is
    missing, not that our key is wrong for sending: no pause of email."""
    first, second = await recorded_order(pool), await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config, providers(provider_config, MailLostBeforeRequest(provider_config)))
    request = request_for(first)
    await left_in_doubt(pool, messaging, request)
    fakes.refuse_email_activity(403)
    try:
        outcome = await attempt(1).run(messaging.send_message, settling(request))
    finally:
        fakes.refuse_email_activity(None)
    assert (outcome.state, outcome.not_before) == (DeliveryState.IN_DOUBT, None)
    assert "Email Activity" in outcome.error
    assert mail_sends_for(fakes, request.key) == []
    assert (await attempt(1).run(messaging.send_message, request)).not_before is None  # and so it stays
    messaging._providers[Channel.EMAIL].died.add(request_for(second).key)
    assert (await attempt(1).run(messaging.send_message, request_for(second))).state is DeliveryState.SENT


@pytest.mark.parametrize("arrived", [False, True])
async def test_an_overtaken_mail_is_settled_without_sending(
    pool, fakes: FakeProviders, provider_config: ProviderConfig, arrived
):
    order = await recorded_order(pool)
    cls = MailAcceptedThenWorkerDied if arrived else MailLostBeforeRequest
    messaging = MessagingActivities(pool, provider_config, providers(provider_config, cls(provider_config)))
    request = request_for(order)
    await left_in_doubt(pool, messaging, request)
    outcome = await attempt(1).run(messaging.send_message, settling(request, SendMode.SETTLE_WITHOUT_SENDING))
    assert outcome.state is (DeliveryState.SENT if arrived else DeliveryState.SUPERSEDED)
    assert len(fakes.deliveries_to(order["customer"]["email"])) == int(arrived)
    # Not sent, and never will be: nothing went out (as far as anyone can tell).
    assert (await ledger(pool, request.key))["state"] == ("sent" if arrived else "pending")


async def test_the_window_of_risk_a_mail_not_yet_visible_in_email_activity_is_sent_twice(
    pool, fakes: FakeProviders, provider_config: ProviderConfig
):
    """What remains (README): SendGrid took the mail, but Email Activity does
    not show it yet when the window ends. Nothing can tell it apart from a
    mail that never arrived, so it goes again: the window must be longer than
    Email Activity's lag."""
    order = await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config, providers(provider_config, MailAcceptedThenWorkerDied(provider_config)))
    request = request_for(order)
    await left_in_doubt(pool, messaging, request)
    fakes.email_activity_lag = 60
    try:
        outcome = await attempt(1).run(messaging.send_message, settling(request))
    finally:
        fakes.email_activity_lag = 0
    assert outcome.state is DeliveryState.SENT
    assert len(fakes.deliveries_to(order["customer"]["email"])) == 2


# --- the operator's commands --------------------------------------------------------


async def test_resend_sends_a_failed_mail_once_however_often_it_is_run(
    dev_env, make_harness, fakes: FakeProviders, pool
):
    """SendGrid refused the confirmation (the SMS took it); the operator fixed
    the cause and resends it: through the worker, recorded in the ledger and on
    the order, whose flag is lifted. Run twice at once, then again: one mail.
    On the dev server: waiting for a result on the time-skipping one skips a
    day, and with it the order's payment reminder."""
    from starter.cli import UsageError
    from starter.operator import resend

    order = new_order()
    email = order["customer"]["email"]
    fakes.fail_next(email, 400)
    key = key_of(order)
    async with make_harness(dev_env) as h:
        handle = await h.start(order)
        await h.wait_for(handle, lambda v: v.needs_attention)
        outcomes = await asyncio.gather(*(resend(h.client, pool, key, task_queue=h.task_queue) for _ in range(2)))
        assert {o.state for o in outcomes} == {DeliveryState.SENT}
        with pytest.raises(UsageError, match="already sent"):
            await resend(h.client, pool, key, task_queue=h.task_queue)
        view = await h.wait_for(handle, lambda v: not v.needs_attention)
        await handle.terminate("test done")
    assert states_of(view, "order_confirmation") == ["failed", "sent"]
    assert len(fakes.deliveries_to(email)) == 1
    row = await ledger(pool, key)
    assert (row["state"], row["attempts"]) == ("sent", 2)


async def test_resending_a_customers_message_shows_on_their_timeline(dev_env, make_harness, fakes: FakeProviders, pool):
    """SendGrid refused the welcome of the customer's journey; the resend
    sends it and the customer's workflow records it, as an order's does."""
    from starter.operator import resend
    from tests.test_customer_journey import QUICK, Customer, customer_id

    async with make_harness(dev_env, lifecycle=QUICK) as h:
        c = Customer(h, pool, customer_id(holdout=False))
        first = await c.place()
        await c.wait_for(lambda v: v.orders_total == 1)
        fakes.fail_next(await pool.fetchval("SELECT email FROM customers WHERE customer_id = $1", c.cid), 400)
        await c.deliver(first)
        view = await c.wait_for(lambda v: DeliveryState.FAILED in v.messages.values())
        [key] = [k for k, state in view.messages.items() if state is DeliveryState.FAILED]
        assert ":welcome:" in key and key.endswith(":email")
        assert (await resend(h.client, pool, key, task_queue=h.task_queue)).state is DeliveryState.SENT
        view = await c.wait_for(lambda v: v.messages[key] is DeliveryState.SENT)
    assert view.timeline[-1].endswith("welcome by email: sent (resent by an operator)")


async def test_resend_refuses_what_it_cannot_resend(ts_env, pool, provider_config: ProviderConfig):
    from starter.cli import UsageError
    from starter.operator import resend

    order = await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config)
    request = request_for(order)
    await attempt(1).run(messaging.send_message, request)
    with pytest.raises(UsageError, match="no message with ledger key"):
        await resend(ts_env.client, pool, str(LedgerKey.of_order(uuid.uuid4().hex, "order_confirmation", "email")))
    with pytest.raises(UsageError, match="already sent"):
        await resend(ts_env.client, pool, request.key)


async def test_attention_lists_what_needs_an_operator_without_customer_data(
    dev_env, make_harness, fakes: FakeProviders, provider_config: ProviderConfig, pool
):
    """An order flagged by a refused mail, and a mail in doubt for good
    (Email Activity refused): ledger key, order, touchpoint, channel, state
    and age; never the customer's address, number or name."""
    from starter.operator import attention_report

    flagged = new_order()
    fakes.fail_next(flagged["customer"]["email"], 400)
    stranded = await recorded_order(pool)
    messaging = MessagingActivities(pool, provider_config, providers(provider_config, MailLostBeforeRequest(provider_config)))
    await left_in_doubt(pool, messaging, request_for(stranded))
    fakes.refuse_email_activity(403)
    try:
        await attempt(1).run(messaging.send_message, settling(request_for(stranded)))
    finally:
        fakes.refuse_email_activity(None)
    async with make_harness(dev_env) as h:
        handle = await h.start(flagged)
        await h.wait_for(handle, lambda v: v.needs_attention)
        for _ in range(100):  # visibility is eventually consistent
            report = await attention_report(dev_env.client, pool)
            if f"order-{flagged['order_id']}" in report:
                break
            await asyncio.sleep(0.2)
        await handle.terminate("test done")
    lines = report.splitlines()
    [order_line] = [line for line in lines if flagged["order_id"] in line and "order_confirmation" not in line]
    assert "awaiting_payment" in order_line
    [failed] = [line for line in lines if key_of(flagged) in line]
    [in_doubt] = [line for line in lines if key_of(stranded) in line]
    for line, state, order_id in ((failed, "failed", flagged["order_id"]), (in_doubt, "in_doubt", stranded["order_id"])):
        assert {state, order_id, "order_confirmation", "email"} <= set(line.split()), line
    for customer in (flagged["customer"], stranded["customer"]):
        for private in (customer["email"], customer["phone"], customer["name"], "Ada", "Lovelace"):
            # As a word: an order id (A and ten hex digits) may begin "Ada".
            assert not re.search(rf"(?<!\w){re.escape(private)}(?!\w)", report), private
