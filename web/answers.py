"""The pages customers answer on, reached by the signed links in our emails
(messages/answer_links.py):

- GET /feedback shows the order's items and seller, stars for each, and a
  comment box. POST records the answer once per order and owes the order
  `feedback_submitted`, which the relay delivers (web/signals.py), so it
  survives Temporal being away. A second submission shows what was recorded.
- GET /helpful asks to confirm, and changes nothing: link scanners fetch
  every link. POST records the message's one vote. After a "no", a short form
  asks what was wrong (POST /helpful/comment), kept with the vote; about an
  order's message, it opens a case (workflow started by the relay). "No"
  under a case's outcome reopens the case.

Forged, expired and broken links get a page that says so. Nothing here logs
a rating, a comment or a token.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import quote

import asyncpg
from fastapi import BackgroundTasks, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from messages import answer_links
from messages.signed_tokens import InvalidToken
from store import answers, cases, provider_events
from store import orders as order_store
from store.provider_events import CUSTOMER, Signal
from web.config import WebConfig
from web.pages import link_refused, page
from web.signals import OwedSignals
from workflows.ledger_key import CASE_PREFIX, LedgerKey
from workflows.models import CASE_WORKFLOW_TYPE, FeedbackRecord, FeedbackSubmitted, Touchpoint, workflow_id_for

Token = Annotated[str, Query(description="the signed token from the link in the email")]
COMMENT_LENGTH = 2000
STARS = range(1, 6)
REOPEN_SIGNAL = "case_reopen_requested"
QUESTION = {True: "Was this resolved?", False: "Was this helpful?"}
ANSWER = {True: "Yes", False: "No"}


def add_answer_pages(app: FastAPI, config: WebConfig, relay: OwedSignals) -> None:
    secret = config.unsubscribe_secret

    def now() -> datetime:
        return datetime.now(timezone.utc)

    def tell(background: BackgroundTasks, event_id: str) -> None:
        # After the answer: the relay delivers what this cannot.
        background.add_task(relay.tell, CUSTOMER, [event_id])

    @app.get("/feedback", response_class=HTMLResponse)
    async def feedback_page(request: Request, token: Token) -> HTMLResponse:
        """The feedback link: a form, or what was recorded."""
        try:
            claim = answer_links.verify_feedback(token, secret, now())
        except InvalidToken as err:
            return link_refused(request, err)
        async with app.state.pool.acquire() as conn:
            order = await answers.order_to_rate(conn, claim.order_id)
            if order and await answers.customer_erased(conn, order.customer_id):
                return _erased()
            recorded = await answers.stored_feedback(conn, claim.order_id) if order else None
        if order is None:
            return _not_found("order")
        if recorded:
            return _feedback_recorded(order, recorded, again=True)
        return _feedback_form(order)

    @app.post("/feedback", response_class=HTMLResponse)
    async def submit_feedback(request: Request, background: BackgroundTasks, token: Token) -> HTMLResponse:
        """Records the stars and comment once per order, and owes the order
        `feedback_submitted`."""
        try:
            claim = answer_links.verify_feedback(token, secret, now())
        except InvalidToken as err:
            return link_refused(request, err)
        form = await request.form()
        async with app.state.pool.acquire() as conn, conn.transaction():
            order = await answers.order_to_rate(conn, claim.order_id)
            if order is None:
                return _not_found("order")
            if await answers.customer_erased(conn, order.customer_id):
                return _erased()
            recorded = await answers.stored_feedback(conn, order.order_id)
            if recorded:
                return _feedback_recorded(order, recorded, again=True)
            try:
                feedback = _read_feedback(order, form)
            except ValueError as err:
                request.state.rejection = "invalid_field"
                return _feedback_form(order, problem=str(err), form=form)
            signal = Signal(workflow_id_for(order.order_id), "feedback_submitted", feedback.model_dump(mode="json", exclude_none=True))
            new, signal = await provider_events.owe(conn, f"feedback:{order.order_id}", signal)
            owed = [f"feedback:{order.order_id}", *await _keep_feedback(conn, order, feedback)] if new else []
        for event_id in owed:
            tell(background, event_id)
        return _feedback_recorded(order, signal.payload, again=not new)

    @app.get("/helpful", response_class=HTMLResponse)
    async def vote_page(request: Request, token: Token) -> HTMLResponse:
        """A vote link: asks to confirm, or shows the vote recorded."""
        try:
            claim = answer_links.verify_vote(token, secret, now())
        except InvalidToken as err:
            return link_refused(request, err)
        async with app.state.pool.acquire() as conn:
            message = await answers.voted_message(conn, claim.ledger_key)
            erased = message is not None and await answers.customer_erased(conn, message.customer_id)
        if message is None:
            return _not_found("message")
        if erased:
            return _erased()
        if message.helpful is not None:
            return _vote_recorded(config, token, message, message.helpful, again=True)
        question = QUESTION[message.kind == Touchpoint.CASE_OUTCOME]
        return page(
            question,
            f"<h1>{question}</h1><p>You answered <strong>{ANSWER[claim.helpful]}</strong>.</p>"
            f'<form method="post"><button type="submit">Send my answer</button></form>',
        )

    @app.post("/helpful", response_class=HTMLResponse)
    async def vote(request: Request, background: BackgroundTasks, token: Token) -> HTMLResponse:
        """The message's one vote; a second changes nothing."""
        try:
            claim = answer_links.verify_vote(token, secret, now())
        except InvalidToken as err:
            return link_refused(request, err)
        reopen = None
        async with app.state.pool.acquire() as conn, conn.transaction():
            message = await answers.voted_message(conn, claim.ledger_key, for_update=True)
            if message is None:
                return _not_found("message")
            if await answers.customer_erased(conn, message.customer_id):
                return _erased()
            if not await answers.record_vote(conn, message, claim.helpful):
                return _vote_recorded(config, token, message, message.helpful, again=True)
            if not claim.helpful and message.kind == Touchpoint.CASE_OUTCOME:
                reopen = await _reopen(conn, message, None)
        if reopen:
            tell(background, reopen)
        return _vote_recorded(config, token, message, claim.helpful, again=False)

    @app.post("/helpful/comment", response_class=HTMLResponse)
    async def comment(
        request: Request,
        background: BackgroundTasks,
        token: Token,
        text: Annotated[str, Form(alias="comment", description="what was wrong; may be empty")] = "",
    ) -> HTMLResponse:
        """What was wrong, kept with a "no" vote, once. About an order's
        message, it opens a case; under a case's outcome, it goes to the case
        the "no" reopened."""
        try:
            claim = answer_links.verify_vote(token, secret, now())
        except InvalidToken as err:
            return link_refused(request, err)
        async with app.state.pool.acquire() as conn, conn.transaction():
            message = await answers.voted_message(conn, claim.ledger_key, for_update=True)
            if message is None:
                return _not_found("message")
            if await answers.customer_erased(conn, message.customer_id):
                return _erased()
            if message.helpful is not False:
                request.state.rejection = "no_vote"
                return page("No answer to comment on", "<h1>Please answer the question first</h1>", 409)
            if len(text) > COMMENT_LENGTH:
                request.state.rejection = "invalid_field"
                return page("Too long", f"<h1>That is a little long</h1><p>Please go back and say it in under {COMMENT_LENGTH:,} characters.</p>", 422)
            owed = None
            if text.strip() and await answers.record_comment(conn, message.ledger_key, text.strip()):
                owed = await _act_on_comment(conn, message, text.strip())
        if owed:
            tell(background, owed)
        return page("Thank you", "<h1>Thank you</h1><p>We read every answer, and this one goes to the people who can put it right.</p>")


def _erased() -> HTMLResponse:
    """A link in a mail sent before its customer was forgotten."""
    return page("Link no longer works", "<h1>This link no longer works</h1><p>The details it was about have been erased.</p>", 410)


async def _reopen(conn: asyncpg.Connection, message: answers.VotedMessage, comment: str | None) -> str:
    """Owes the case `case_reopen_requested`: the first reopens it, a later
    one (the comment after the "no") is noted in its timeline."""
    event_id = f"{'reopen' if comment is None else 'reopen-comment'}:{message.ledger_key}"
    case_id = LedgerKey.parse(message.ledger_key).workflow_id
    await provider_events.owe(conn, event_id, Signal(case_id, REOPEN_SIGNAL, {"comment": comment}))
    return event_id


async def _act_on_comment(conn: asyncpg.Connection, message: answers.VotedMessage, comment: str) -> str | None:
    """What a "not helpful" comment owes a workflow: the case it reopened, or
    a case of its own about the order. None for the customer's journey's
    messages and a case's other ones: the comment is kept, for the WOCAS
    report."""
    if message.kind == Touchpoint.CASE_OUTCOME:
        return await _reopen(conn, message, comment)
    if message.order_id is None or message.ledger_key.startswith(CASE_PREFIX):
        return None  # about no order, or a case's own message: that case has an owner
    return await _open_case(conn, message.order_id, "not_helpful", f"vote:{message.ledger_key}", comment)


async def _keep_feedback(conn: asyncpg.Connection, order: answers.OrderToRate, feedback: FeedbackSubmitted) -> list[str]:
    """Stored now, and a low rating's case opened now (under the key the
    order's workflow opens it with: one case), so that neither hangs on the
    order hearing of it: its workflow may be over, or refuse feedback that
    Temporal's absence delayed past the window. Returns what it owes."""
    skus = [sku for sku, _ in order.items]
    await order_store.store_feedback(conn, FeedbackRecord(
        order_id=order.order_id, customer_id=order.customer_id, seller_id=order.seller_id, skus=skus, feedback=feedback
    ))
    if feedback.lowest_rating > 2:
        return []
    return [await _open_case(conn, order.order_id, "low_rating", f"{workflow_id_for(order.order_id)}:low_rating", feedback.comment)]


async def _open_case(conn: asyncpg.Connection, order_id: str, trigger: str, trigger_key: str, text: str | None) -> str:
    """Opens the case and owes its start (the relay starts the workflow)."""
    opening = await cases.open_case(conn, order_id=order_id, trigger=trigger, trigger_key=trigger_key, text=text)
    event_id = f"case:{trigger_key}"
    start = Signal(opening.case_id, "case_opened", opening.model_dump(mode="json"), start_workflow=CASE_WORKFLOW_TYPE)
    await provider_events.owe(conn, event_id, start)
    return event_id


def _read_feedback(order: answers.OrderToRate, form: Any) -> FeedbackSubmitted:
    """The form's stars and comment; ValueError says what is missing or wrong."""

    def stars(field: str) -> int | None:
        value = form.get(field)
        return int(value) if value in {str(n) for n in STARS} else None

    per_item = {sku: stars(f"item-{i}") for i, (sku, _) in enumerate(order.items)}
    missing = [name for (sku, name) in order.items if per_item[sku] is None]
    if stars("seller") is None:
        missing.append(f"the seller, {order.seller_name}")
    if missing:
        raise ValueError("Please give stars to " + ", ".join(missing) + ".")
    ratings = list(per_item.values())
    try:
        return FeedbackSubmitted(
            # The items as one: their mean, rounded half up.
            item_rating=int(sum(ratings) / len(ratings) + 0.5),
            seller_rating=stars("seller"),
            comment=(form.get("comment") or "").strip() or None,
            item_ratings=per_item,
        )
    except ValidationError as err:
        raise ValueError("Your comment is too long: please keep it under 5,000 characters.") from err


def _star_choice(field: str, label: str, chosen: Any = None) -> str:
    options = "".join(
        f'<label style="margin-right: .8em; white-space: nowrap"><input type="radio" name="{field}" value="{n}" required'
        f'{" checked" if str(n) == chosen else ""}> {"★" * n}</label>'
        for n in STARS
    )
    return f'<fieldset style="margin: 1em 0; border: 1px solid #ccc"><legend>{html.escape(label)}</legend>{options}</fieldset>'


def _feedback_form(order: answers.OrderToRate, problem: str | None = None, form: Any = None) -> HTMLResponse:
    form = form or {}
    items = "".join(_star_choice(f"item-{i}", name, form.get(f"item-{i}")) for i, (_, name) in enumerate(order.items))
    seller = _star_choice("seller", f"{order.seller_name}, the seller", form.get("seller"))
    warning = f'<p role="alert" style="color: #a00">{html.escape(problem)}</p>' if problem else ""
    comment = html.escape(form.get("comment") or "")
    return page(
        "Rate your order",
        f"<h1>How was order {html.escape(order.order_id)}?</h1>{warning}"
        f'<form method="post">{items}{seller}'
        f'<p><label>Anything else? (optional)<br><textarea name="comment" rows="4" style="width: 100%" maxlength="5000">'
        f"{comment}</textarea></label></p>"
        f'<button type="submit">Send</button></form>',
        422 if problem else 200,
    )


def _feedback_recorded(order: answers.OrderToRate, feedback: dict[str, Any], *, again: bool) -> HTMLResponse:
    per_item = feedback.get("item_ratings") or {}
    lines = [
        f"<li>{html.escape(name)}: {'★' * per_item.get(sku, feedback['item_rating'])}</li>" for sku, name in order.items
    ]
    lines.append(f"<li>{html.escape(order.seller_name)}, the seller: {'★' * feedback['seller_rating']}</li>")
    comment = f"<p>Your comment: {html.escape(feedback['comment'])}</p>" if feedback.get("comment") else ""
    heading = "You have already rated this order" if again else "Thank you for your rating"
    return page("Thank you", f"<h1>{heading}</h1><ul>{''.join(lines)}</ul>{comment}")


def _vote_recorded(config: WebConfig, token: str, message: answers.VotedMessage, helpful: bool | None, *, again: bool) -> HTMLResponse:
    already = "<p>We already have your answer to this message.</p>" if again else ""
    if helpful:
        return page("Thank you", f"<h1>Thank you</h1>{already}<p>You told us: yes.</p>")
    if message.comment is not None:
        return page("Thank you", f"<h1>Thank you</h1>{already}<p>You told us: no, and what was wrong.</p>")
    action = html.escape(f"{config.public_url}/helpful/comment?token={quote(token)}", quote=True)
    return page(
        "What was wrong?",
        f"<h1>Sorry about that</h1>{already}<p>What was wrong? A few words help us put it right (optional).</p>"
        f'<form method="post" action="{action}"><textarea name="comment" rows="4" style="width: 100%" '
        f'maxlength="{COMMENT_LENGTH}"></textarea><br><button type="submit">Send</button></form>',
    )


def _not_found(what: str) -> HTMLResponse:
    return page("Not found", f"<h1>We cannot find this {what}</h1><p>It may have been removed.</p>", 404)
