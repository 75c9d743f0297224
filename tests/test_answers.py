"""Customers answer (web/answers.py): the feedback page a feedback request
links to, and "Was this helpful?" under every email. Links are made as the
messaging activity makes them, and used as a customer's browser would."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html import escape, unescape
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from temporalio.client import WorkflowUpdateFailedError

from activities.messaging import MessagingActivities
from messages import answer_links
from tests.conftest import new_order, payment_for, store, take_owed_signals_away
from tests.fake_providers import FakeProviders
from tests.test_consent_sending import content, mails_to, order_message, send
from tests.test_web import FakeTemporal, service_config
from web.app import create_app
from web.config import WebConfig
from workflows.ledger_key import LedgerKey
from workflows.models import TASK_QUEUE, Channel, Touchpoint, case_workflow_id

NOW = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
async def nothing_left_owed(pool: asyncpg.Pool):
    """The relay of every later test sweeps what is owed, oldest first:
    a test that leaves a signal owed holds theirs up while Temporal is away."""
    yield
    owed = "SELECT count(*) FROM provider_events WHERE provider = 'customer' AND signal IS NOT NULL AND signalled_at IS NULL"
    assert await pool.fetchval(owed) == 0


@pytest.fixture
def messaging(pool: asyncpg.Pool, provider_config) -> MessagingActivities:
    return MessagingActivities(pool, provider_config)


@pytest.fixture
def config(database_url: str, provider_config) -> WebConfig:
    # The secret the worker signs links with.
    return service_config(database_url, unsubscribe_secret=provider_config.unsubscribe_secret, public_url=provider_config.web_public_url)


@dataclass
class Temporal(FakeTemporal):
    """Records signals, and the workflows the relay starts."""

    started: list[tuple[str, str, Any]] = field(default_factory=list)

    async def start_workflow(self, workflow: str, arg: Any, *, id: str, **kwargs: Any) -> None:
        self.started.append((workflow, id, arg))


@pytest.fixture
def temporal() -> Temporal:
    return Temporal()


@pytest.fixture
async def browser(config: WebConfig, pool: asyncpg.Pool, temporal: FakeTemporal):
    app = create_app(config, pool=pool, temporal_client=temporal)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as http:
        yield http


async def an_order(pool: asyncpg.Pool) -> dict[str, Any]:
    order = new_order()
    order["items"] = [
        {"sku": "MUG-1", "name": "Blue mug", "category": "kitchen", "quantity": 2, "unit_price": "9.50"},
        {"sku": "TEA-2", "name": "Green tea", "category": "food", "quantity": 1, "unit_price": "6.00"},
    ]
    order["total"] = "25.00"
    await store(pool, order)
    return order


def links_in(body: str, path: str) -> list[str]:
    """The links to `path` in a mail's HTML (its hrefs) or text, as a browser
    would follow them (path and query)."""
    found = re.findall(r'href="([^"]+)"', body) or re.findall(r"https?://\S+", body)
    urls = [urlsplit(unescape(u)) for u in found]
    return [f"{u.path}?{u.query}" for u in urls if u.path == path]


def stars_form(**fields: str) -> dict[str, str]:
    return {"item-0": "5", "item-1": "2", "seller": "4", "comment": "The tea was stale.", **fields}


async def mail_of(fakes: FakeProviders, order: dict[str, Any]) -> str:
    [mail] = mails_to(fakes, order["customer"]["email"])
    return content(mail, "text/html")


# --- the feedback page -------------------------------------------------------------


async def feedback_link(messaging, fakes, order, respond_by: datetime = NOW + timedelta(days=14)) -> str:
    request = order_message(order, Touchpoint.FEEDBACK_REQUEST, respond_by=respond_by.isoformat())
    await send(messaging, request)
    [link] = links_in(await mail_of(fakes, order), "/feedback")
    return link


async def test_the_feedback_request_links_to_a_page_rating_each_item_and_the_seller(pool, messaging, fakes, browser):
    order = await an_order(pool)
    page = await browser.get(await feedback_link(messaging, fakes, order))
    assert page.status_code == 200
    assert "Blue mug" in page.text and "Green tea" in page.text and escape(order["seller"]["name"]) in page.text
    assert page.text.count('type="radio"') == 15  # five stars for each item and the seller
    assert "<script" not in page.text


async def test_a_submitted_rating_reaches_the_order_once_and_a_second_submission_shows_the_first(
    pool, messaging, fakes, browser, temporal: FakeTemporal
):
    order = await an_order(pool)
    link = await feedback_link(messaging, fakes, order)
    first = await browser.post(link, data=stars_form())
    assert first.status_code == 200 and "Thank you for your rating" in first.text
    second = await browser.post(link, data=stars_form(**{"item-0": "1", "seller": "1"}))
    assert "already rated" in second.text and "★★★★★" in second.text  # the first, five stars for the mug

    [(workflow_id, name, payload)] = temporal.sent
    assert (workflow_id, name) == (f"order-{order['order_id']}", "feedback_submitted")
    assert payload == {
        "item_rating": 4,  # (5 + 2) / 2, rounded half up
        "seller_rating": 4,
        "comment": "The tea was stale.",
        "item_ratings": {"MUG-1": 5, "TEA-2": 2},
    }
    again = await browser.get(link)
    assert "already rated" in again.text


async def test_a_rating_submitted_while_temporal_is_away_is_delivered_by_the_relay_when_it_is_back(
    pool, messaging, fakes, config, database_url
):
    order = await an_order(pool)
    link = await feedback_link(messaging, fakes, order)
    away = create_app(config, pool=pool)  # Temporal at a closed port
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=away), base_url=config.public_url) as http:
        assert (await http.post(link, data=stars_form())).status_code == 200
    owed = [f"feedback:{order['order_id']}", f"case:order-{order['order_id']}:low_rating"]  # the 2-star tea opens a case
    assert await pool.fetchval("SELECT count(*) FROM provider_events WHERE event_id = ANY($1) AND signalled_at IS NULL", owed) == 2

    back = Temporal()
    await create_app(config, pool=pool, temporal_client=back).state.owed_signals.deliver("customer", owed)  # type: ignore[arg-type]
    assert [(w, n) for w, n, _ in back.sent] == [(f"order-{order['order_id']}", "feedback_submitted")]
    assert [w for w, _, _ in back.started] == ["CaseWorkflow"]


async def test_a_form_missing_stars_is_shown_again_saying_what_is_missing_and_records_nothing(
    pool, messaging, fakes, browser, temporal
):
    order = await an_order(pool)
    link = await feedback_link(messaging, fakes, order)
    answer = await browser.post(link, data={"item-0": "5", "seller": "9", "comment": "ok"})
    assert answer.status_code == 422
    assert "Green tea" in answer.text and "the seller" in answer.text.split("Please give stars to")[1].split("</p>")[0]
    assert temporal.sent == []
    assert await pool.fetchval("SELECT count(*) FROM provider_events WHERE event_id = $1", f"feedback:{order['order_id']}") == 0


@pytest.mark.parametrize(
    "mangle, status, says",
    [
        (lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"), 403, "not one of ours"),
        (lambda t: t.replace(".", ""), 400, "incomplete"),
    ],
)
async def test_a_forged_or_broken_feedback_link_gets_a_page_saying_so(pool, browser, config, mangle, status, says):
    order = await an_order(pool)
    token = answer_links.feedback_token(order["order_id"], NOW + timedelta(days=1), config.unsubscribe_secret)
    for method in (browser.get, browser.post):
        page = await method(f"/feedback?token={mangle(token)}")
        assert page.status_code == status and says in page.text and "Traceback" not in page.text


async def test_a_feedback_link_past_its_window_is_refused_as_expired(pool, messaging, fakes, browser, temporal):
    order = await an_order(pool)
    link = await feedback_link(messaging, fakes, order, respond_by=NOW - timedelta(minutes=1))
    for answer in (await browser.get(link), await browser.post(link, data=stars_form())):
        assert answer.status_code == 410 and "expired" in answer.text
    assert temporal.sent == []


async def test_a_feedback_link_for_another_order_cannot_be_made_without_the_secret(pool, browser):
    order = await an_order(pool)
    token = answer_links.feedback_token(order["order_id"], NOW + timedelta(days=1), "not-our-secret")
    assert (await browser.get(f"/feedback?token={token}")).status_code == 403


# --- "Was this helpful?" ---------------------------------------------------------------


async def vote_links(messaging, fakes, order, kind: Touchpoint = Touchpoint.ORDER_CONFIRMATION) -> tuple[str, str, str]:
    request = order_message(order, kind)
    await send(messaging, request)
    yes, no = links_in(await mail_of(fakes, order), "/helpful")
    return request.key, yes, no


async def votes(pool: asyncpg.Pool, key: str) -> list[tuple[bool, str | None]]:
    return [tuple(r) for r in await pool.fetch("SELECT helpful, comment FROM message_votes WHERE ledger_key = $1", key)]


async def test_every_email_asks_was_this_helpful_and_a_get_records_nothing(pool, messaging, fakes, browser):
    order = await an_order(pool)
    key, yes, no = await vote_links(messaging, fakes, order)
    [mail] = mails_to(fakes, order["customer"]["email"])
    assert "Was this helpful?" in content(mail, "text/html") and "Was this helpful? Yes: https://" in content(mail, "text/plain")
    for link in (yes, no, yes):  # a link scanner fetching both
        page = await browser.get(link)
        assert page.status_code == 200 and 'method="post"' in page.text
    assert await votes(pool, key) == []


async def test_a_vote_is_recorded_once_per_message_and_a_second_click_changes_nothing(pool, messaging, fakes, browser):
    order = await an_order(pool)
    key, yes, no = await vote_links(messaging, fakes, order)
    assert (await browser.post(yes)).status_code == 200
    again = await browser.post(no)
    assert "already have your answer" in again.text
    assert await votes(pool, key) == [(True, None)]
    row = await pool.fetchrow("SELECT order_id, kind, channel FROM message_votes WHERE ledger_key = $1", key)
    assert tuple(row) == (order["order_id"], "order_confirmation", "email")


async def test_no_leads_to_a_short_form_and_the_comment_is_kept_with_the_vote_once(pool, messaging, fakes, browser):
    order = await an_order(pool)
    key, yes, no = await vote_links(messaging, fakes, order)
    answer = await browser.post(no)
    assert "What was wrong?" in answer.text
    [action] = [unescape(a) for a in re.findall(r'action="([^"]+)"', answer.text)]
    comment_path = f"{urlsplit(action).path}?{urlsplit(action).query}"
    assert (await browser.post(comment_path, data={"comment": "  It did not say when it ships.  "})).status_code == 200
    await browser.post(comment_path, data={"comment": "something else"})
    assert await votes(pool, key) == [(False, "It did not say when it ships.")]


async def comment_on(browser: httpx.AsyncClient, no: str, text: str) -> str:
    """Clicks no, and says what was wrong in the form it leads to; the form's address."""
    answer = await browser.post(no)
    [action] = [unescape(a) for a in re.findall(r'action="([^"]+)"', answer.text)]
    form = f"{urlsplit(action).path}?{urlsplit(action).query}"
    assert (await browser.post(form, data={"comment": text})).status_code == 200
    return form


async def test_a_not_helpful_comment_on_an_orders_mail_opens_a_case_once(pool, messaging, fakes, browser, temporal: Temporal):
    order = await an_order(pool)
    key, _, no = await vote_links(messaging, fakes, order)
    form = await comment_on(browser, no, "It did not say when it ships.")
    assert (await browser.post(form, data={"comment": "Still nothing."})).status_code == 200
    [case] = await pool.fetch("SELECT case_id, trigger, trigger_key, text FROM cases WHERE order_id = $1", order["order_id"])
    assert tuple(case) == (f"case-{order['order_id']}-1", "not_helpful", f"vote:{key}", "It did not say when it ships.")
    [(workflow, workflow_id, opening)] = temporal.started
    assert (workflow, workflow_id) == ("CaseWorkflow", case["case_id"])
    assert opening["trigger"] == "not_helpful" and opening["text"] == "It did not say when it ships."


async def test_no_to_was_this_resolved_reopens_the_case_and_its_comment_follows(pool, messaging, fakes, browser, temporal: Temporal):
    order = await an_order(pool)
    case_id = case_workflow_id(order["order_id"], 1)
    key = str(LedgerKey.of_case(case_id, Touchpoint.CASE_OUTCOME, "round-1"))
    request = order_message(order, Touchpoint.CASE_OUTCOME, resolution="We refunded the tea.").model_copy(update={"key": key})
    await send(messaging, request)
    mail = await mail_of(fakes, order)
    assert "Was this resolved?" in mail and "Was this helpful?" not in mail
    _, no = links_in(mail, "/helpful")
    assert "Was this resolved?" in (await browser.get(no)).text
    await comment_on(browser, no, "The refund never came.")
    assert temporal.sent == [
        (case_id, "case_reopen_requested", {"comment": None}),
        (case_id, "case_reopen_requested", {"comment": "The refund never came."}),
    ]
    assert temporal.started == []  # the comment goes to the case it reopened, not to a new one


@pytest.mark.parametrize("expired", [False, True])
async def test_a_forged_or_expired_vote_link_is_refused_and_records_nothing(pool, messaging, fakes, browser, config, expired):
    order = await an_order(pool)
    key, yes, _ = await vote_links(messaging, fakes, order)
    if expired:
        link = "/helpful?token=" + answer_links.vote_token(key, True, NOW - answer_links.VOTE_LIFETIME, config.unsubscribe_secret)
        status = 410
    else:
        link = "/helpful?token=" + answer_links.vote_token(key, True, NOW, "not-our-secret")
        status = 403
    assert (await browser.get(link)).status_code == status
    assert (await browser.post(link)).status_code == status
    assert await votes(pool, key) == []


async def test_a_vote_on_a_message_we_never_sent_gets_not_found(browser, config):
    token = answer_links.vote_token(f"order-{uuid.uuid4().hex}:order_confirmation:email", True, NOW, config.unsubscribe_secret)
    assert (await browser.post(f"/helpful?token={token}")).status_code == 404


async def test_an_sms_carries_the_feedback_link_but_no_votes(pool, messaging, fakes, browser):
    order = await an_order(pool)
    request = order_message(order, Touchpoint.FEEDBACK_REQUEST, respond_by=(NOW + timedelta(days=1)).isoformat())
    await send(messaging, request.model_copy(update={"channel": Channel.SMS, "key": request.key.replace(":email", ":sms")}))
    text = await pool.fetchval("SELECT body_text FROM message_ledger WHERE key = $1", request.key.replace(":email", ":sms"))
    assert "/feedback?token=" in text and "/helpful" not in text


# --- through the order's workflow ------------------------------------------------------


async def deliver(h, handle, order: dict[str, Any]) -> None:
    await handle.signal("payment_received", payment_for(order))
    await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "TRK9", "expected_delivery": await h.tomorrow()})
    await handle.signal("order_delivered", {"delivered_at": await h.now_iso()})
    await h.wait_touchpoint(handle, "delivery_confirmation")


async def test_a_customer_rates_each_item_through_the_page_and_the_order_stores_every_star(
    ts_env, make_harness, fakes: FakeProviders, pool, config
):
    order = await an_order(pool)
    # The queue the HTTP service starts cases on: the 2-star item opens one.
    async with make_harness(ts_env, task_queue=TASK_QUEUE) as h:
        handle = await h.start(order)
        await deliver(h, handle, order)
        await ts_env.sleep(timedelta(days=3, hours=1))
        await h.wait_touchpoint(handle, "feedback_request")
        request = next(m for m in fakes.deliveries_to(order["customer"]["email"]) if "How was your order" in m)
        [link] = links_in(request, "/feedback")

        app = create_app(config, pool=pool, temporal_client=ts_env.client)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as browser:
            assert (await browser.post(link, data=stars_form())).status_code == 200
        result = await h.result(handle)

    assert result.status == "completed"
    # The items' mean is 4, but one item got 2 stars: an unhappy customer.
    assert "low_rating" in result.attention_reasons
    # Opened by the page and by the order under one key: one case.
    assert await pool.fetchval("SELECT count(*) FROM cases WHERE order_id = $1", order["order_id"]) == 1
    stars = await pool.fetch("SELECT sku, rating FROM item_ratings WHERE order_id = $1 ORDER BY sku", order["order_id"])
    assert [tuple(r) for r in stars] == [("MUG-1", 5), ("TEA-2", 2)]
    assert await pool.fetchval("SELECT item_rating FROM feedback WHERE order_id = $1", order["order_id"]) == 4


async def test_a_backend_rating_items_the_order_does_not_have_is_told_which(ts_env, make_harness, pool):
    order = await an_order(pool)
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await deliver(h, handle, order)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "apply_event",
                {"event": "feedback_submitted", "payload": {"item_rating": 4, "seller_rating": 4, "item_ratings": {"SOCK-9": 1}}},
            )
        assert "item_ratings names items not in the order: SOCK-9" in str(refused.value.cause)


async def test_the_comment_is_optional_and_a_too_long_one_gets_a_page_not_an_error(pool, messaging, fakes, browser, temporal):
    order = await an_order(pool)
    key, _, no = await vote_links(messaging, fakes, order)
    answer = await browser.post(no)
    [action] = [unescape(a) for a in re.findall(r'action="([^"]+)"', answer.text)]
    form = f"{urlsplit(action).path}?{urlsplit(action).query}"
    too_long = await browser.post(form, data={"comment": "x" * 2001})
    assert too_long.status_code == 422 and "<h1>" in too_long.text and "x" * 50 not in too_long.text
    empty = await browser.post(form, data={"comment": ""})
    assert empty.status_code == 200 and "Thank you" in empty.text
    assert await votes(pool, key) == [(False, None)]
    assert temporal.started == []  # nothing said, nothing to open a case about


async def test_a_low_rating_is_stored_and_opens_its_case_even_if_the_order_never_hears_of_it(
    pool, messaging, fakes, config, database_url
):
    """Temporal away until the order is over: the rating and its case do not
    wait for the order's workflow."""
    order = await an_order(pool)
    link = await feedback_link(messaging, fakes, order)
    away = create_app(config, pool=pool)  # Temporal at a closed port
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=away), base_url=config.public_url) as http:
        assert (await http.post(link, data=stars_form(seller="1", comment="Rude courier."))).status_code == 200
    stored = await pool.fetchrow("SELECT item_rating, seller_rating, comment FROM feedback WHERE order_id = $1", order["order_id"])
    assert tuple(stored) == (4, 1, "Rude courier.")
    stars = await pool.fetch("SELECT sku, rating FROM item_ratings WHERE order_id = $1 ORDER BY sku", order["order_id"])
    assert [tuple(r) for r in stars] == [("MUG-1", 5), ("TEA-2", 2)]
    [case] = await pool.fetch("SELECT case_id, trigger, trigger_key FROM cases WHERE order_id = $1", order["order_id"])
    assert tuple(case) == (f"case-{order['order_id']}-1", "low_rating", f"order-{order['order_id']}:low_rating")

    back = Temporal()
    relay = create_app(config, pool=pool, temporal_client=back).state.owed_signals  # type: ignore[arg-type]
    await relay.deliver("customer", [f"feedback:{order['order_id']}", f"case:order-{order['order_id']}:low_rating"])
    assert [(w, i) for w, i, _ in back.started] == [("CaseWorkflow", case["case_id"])]
    assert [n for _, n, _ in back.sent] == ["feedback_submitted"]


async def test_a_not_helpful_comment_on_a_cases_own_mail_opens_no_second_case(pool, messaging, fakes, browser, temporal: Temporal):
    order = await an_order(pool)
    key = str(LedgerKey.of_case(case_workflow_id(order["order_id"], 1), Touchpoint.CASE_ACKNOWLEDGEMENT))
    await send(messaging, order_message(order, Touchpoint.CASE_ACKNOWLEDGEMENT).model_copy(update={"key": key}))
    _, no = links_in(await mail_of(fakes, order), "/helpful")
    await comment_on(browser, no, "Automatic answers are useless.")
    assert await votes(pool, key) == [(False, "Automatic answers are useless.")]
    assert temporal.started == [] and temporal.sent == []


async def test_an_erased_customer_s_old_links_record_nothing_and_open_no_case(pool, messaging, fakes, browser, temporal: Temporal):
    """Links in mails sent before the erasure: the pages say the link no
    longer works, and no rating, vote, comment or case keeps their words."""
    from store import erasure

    order = await an_order(pool)
    request = order_message(order, Touchpoint.FEEDBACK_REQUEST, respond_by=(NOW + timedelta(days=14)).isoformat())
    await send(messaging, request)
    mail = await mail_of(fakes, order)
    [feedback], (_, no), key = links_in(mail, "/feedback"), links_in(mail, "/helpful"), request.key
    answer = await browser.post(no)
    [action] = [unescape(a) for a in re.findall(r'action="([^"]+)"', answer.text)]
    comment_form = f"{urlsplit(action).path}?{urlsplit(action).query}"
    await pool.execute("DELETE FROM message_votes WHERE ledger_key = $1", key)
    async with pool.acquire() as conn:
        await erasure.forget(conn, order["customer"]["customer_id"], "dpo")
    await take_owed_signals_away(pool)

    for refused in (await browser.get(feedback), await browser.post(feedback, data=stars_form(comment="Call me on my mobile")),
                    await browser.get(no), await browser.post(no),
                    await browser.post(comment_form, data={"comment": "Call me on my mobile"})):
        assert refused.status_code == 410 and "no longer works" in refused.text
    assert await pool.fetchval("SELECT count(*) FROM feedback WHERE order_id = $1", order["order_id"]) == 0
    assert await votes(pool, key) == []
    assert await pool.fetchval("SELECT count(*) FROM cases WHERE order_id = $1", order["order_id"]) == 0
    assert temporal.sent == [] and temporal.started == []
