"""One template per touchpoint, filled with the order's real data, or for
the customer's journey (welcome, loyalty reward, win-back) with the
customer's and the coupon's.

Every value is HTML-escaped in the HTML part; dates are shown in the
customer's timezone. Every SMS names its order, or for the customer's
journey its coupon code (a welcome without a coupon is the customer's only
welcome), and no two touchpoints read alike: an unanswered SMS is looked up
at Twilio by its text. Marketing SMS end with the STOP notice. The caller
passes the signed links (Links): every customer email ends with "Was this
helpful?" yes and no, marketing email with the unsubscribe link, in text and
HTML; the feedback request links to the feedback page (`feedback_url`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Callable

from workflows.clock import zone
from workflows.models import Customer, MessageClass, OrderInput, Touchpoint, message_class

# CTIA: every marketing SMS says how to opt out.
STOP_NOTICE = "Reply STOP to opt out."


@dataclass(frozen=True)
class Content:
    subject: str
    paragraphs: list[str]
    # Plain text short enough for one SMS segment where possible.
    sms: str
    # What the message asks the customer to open: (label, url), a link in HTML.
    link: tuple[str, str] | None = None


def money(amount: Decimal, currency: str) -> str:
    return f"{amount:,.2f} {currency}"


def local_time(value: str | datetime, tz_name: str) -> str:
    """As the workflows reckon it: the pinned tz database, never the machine's."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(zone(tz_name)).strftime("%a %d %b %Y, %H:%M %Z")


def local_date(value: str | date) -> str:
    day = date.fromisoformat(value) if isinstance(value, str) else value
    return day.strftime("%a %d %b %Y")


def item_lines(order: OrderInput) -> list[str]:
    return [
        f"{item.quantity} × {item.name} ({item.sku}) — {money(item.unit_price * item.quantity, order.currency)}"
        for item in order.items
    ]


def _summary(order: OrderInput) -> list[str]:
    return [*item_lines(order), f"Total: {money(order.total, order.currency)}"]


def _where(order: OrderInput) -> str:
    if order.delivery.method == "locker":
        return f"parcel locker {order.delivery.locker_name or order.delivery.locker_id}"
    a = order.delivery.address
    return ", ".join(p for p in (a.line1, a.line2, f"{a.postal_code} {a.city}", a.country) if p)


def _tracking(d: dict[str, Any]) -> str:
    link = f" ({d['tracking_url']})" if d.get("tracking_url") else ""
    return f"{d['carrier']} tracking number {d['tracking_number']}{link}"


def _order_confirmation(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"Order {o.order_id} confirmed",
        [f"Thank you, {o.customer.name}. We have your order from {o.seller.name}:", *_summary(o),
         f"Delivery to {_where(o)}. We will write again when your payment arrives."],
        f"Order {o.order_id} confirmed: {money(o.total, o.currency)}.",
    )


def _payment_reminder(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"Payment pending for order {o.order_id}",
        [f"Hello {o.customer.name}, we have not received payment of {money(o.total, o.currency)} for order "
         f"{o.order_id} yet. Unpaid orders are cancelled after a while, so please complete it soon."],
        f"Order {o.order_id}: payment of {money(o.total, o.currency)} is still pending.",
    )


def _payment_confirmation(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"Payment received for order {o.order_id}",
        [f"We have received your payment of {money(o.total, o.currency)} (reference {d.get('payment_id', '')}).",
         f"{o.seller.name} is preparing your order; we will tell you as soon as it ships, with its tracking number."],
        f"Payment for order {o.order_id} received. We'll tell you when it ships.",
    )


def _order_cancelled(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"Order {o.order_id} cancelled",
        [f"Your order {o.order_id} has been cancelled: {d.get('reason', '')}.",
         "If you paid already, the payment will be refunded."],
        f"Order {o.order_id} was cancelled: {d.get('reason', '')}.",
    )


def _dispatch_delayed(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"Order {o.order_id} is taking longer to ship",
        [f"We are sorry: {o.seller.name} has not shipped order {o.order_id} as soon as promised. "
         "Our team is on it, and we will send the tracking number the moment it leaves."],
        f"Sorry, order {o.order_id} is late to ship. We're on it.",
    )


def _dispatch_notice(o: OrderInput, d: dict[str, Any]) -> Content:
    when = local_date(d["expected_delivery"])
    return Content(
        f"Order {o.order_id} is on its way",
        [f"Your order has shipped with {_tracking(d)}.", f"Expected delivery: {when}, to {_where(o)}.",
         *item_lines(o)],
        f"Order {o.order_id} shipped: {d['carrier']} {d['tracking_number']}, expected {when}.",
    )


def _delivery_day(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"Order {o.order_id} arrives today",
        [f"Your parcel ({_tracking(d)}) is out for delivery today to {_where(o)}."],
        f"Order {o.order_id} is out for delivery today ({d['carrier']} {d['tracking_number']}).",
    )


def _delivery_delayed(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"Order {o.order_id} is delayed",
        [f"Your parcel ({_tracking(d)}) was expected on {local_date(d['expected_delivery'])} and has not arrived "
         "yet. We are sorry, and we are checking with the carrier."],
        f"Order {o.order_id} is delayed. We're checking with {d['carrier']}.",
    )


def _delivery_confirmation(o: OrderInput, d: dict[str, Any]) -> Content:
    tz = o.customer.timezone
    if o.delivery.method == "locker":
        deadline = local_time(d["pickup_deadline"], tz)
        return Content(
            f"Order {o.order_id} is waiting in {_where(o)}",
            [f"Your parcel was delivered to {_where(o)} on {local_time(d['delivered_at'], tz)}.",
             f"Pickup code: {d['locker_pickup_code']}", f"Please collect it before {deadline}."],
            f"Order {o.order_id} is in {_where(o)}. Code {d['locker_pickup_code']}, collect by {deadline}.",
        )
    return Content(
        f"Order {o.order_id} delivered",
        [f"Your order was delivered to {_where(o)} on {local_time(d['delivered_at'], tz)}.", *item_lines(o)],
        f"Order {o.order_id} was delivered.",
    )


def _locker_reminder(o: OrderInput, d: dict[str, Any]) -> Content:
    deadline = local_time(d["pickup_deadline"], o.customer.timezone)
    return Content(
        f"Reminder: collect order {o.order_id}",
        [f"Your parcel is still waiting in {_where(o)}. Please collect it before {deadline}, "
         "after which it goes back to the sender."],
        f"Reminder: order {o.order_id} is waiting in {_where(o)} until {deadline}.",
    )


def _feedback_request(o: OrderInput, d: dict[str, Any]) -> Content:
    names = ", ".join(item.name for item in o.items)
    # No link for a request of a workflow started before links (no `respond_by`)
    # or a worker without UNSUBSCRIBE_SECRET: the shop's own review page, then.
    url = d.get("feedback_url")
    return Content(
        f"How was your order {o.order_id}?",
        [f"Hello {o.customer.name}, how do you like {names}?",
         f"Please rate the items and {o.seller.name}, the seller: it takes a minute and helps other customers."],
        f"How was order {o.order_id}? Rate the items and {o.seller.name}" + (f": {url}" if url else "."),
        link=("Rate your order", url) if url else None,
    )


def _recommendations(o: OrderInput, d: dict[str, Any]) -> Content:
    picks = [f"{p['name']} ({p['category']})" for p in d["products"]]
    return Content(
        "Picked for you",
        [f"Customers who bought what you ordered from {o.seller.name} also liked:", *picks],
        f"Picked for you after order {o.order_id}: " + ", ".join(p["name"] for p in d["products"]),
    )


def _parcel_lost(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"Order {o.order_id} is lost in transit",
        [f"We are sorry: your parcel ({_tracking(d)}) was expected on {local_date(d['expected_delivery'])} and has "
         "not been delivered. We now consider it lost, and our team will contact you to put it right."],
        f"Sorry, order {o.order_id} is lost in transit. We'll contact you to put it right.",
    )


def _case_acknowledgement(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"We hear you: order {o.order_id}",
        [f"Hello {o.customer.name}, thank you for telling us what went wrong with order {o.order_id}.",
         f"Our team has it now (case {d.get('case_id', '')}) and will write to you with what we did about it."],
        f"We hear you about order {o.order_id}: our team has it and will write back.",
    )


def _case_outcome(o: OrderInput, d: dict[str, Any]) -> Content:
    return Content(
        f"What we did about order {o.order_id}",
        [f"Hello {o.customer.name}, about what you told us on order {o.order_id}:", d.get("resolution", ""),
         "If it was not, tell us below, and we will look at it again."],
        f"Order {o.order_id}: {d.get('resolution', '')}",
    )


_TRIGGERS = {"low_rating": "a rating of 2 or less", "not_helpful": "a \"not helpful\" vote with a comment",
             "complaint": "a complaint"}


def _case_for_staff(o: OrderInput, d: dict[str, Any], headline: str) -> Content:
    due = [f"Please acknowledge it by {d['due_at']} (UTC)."] if d.get("due_at") else []
    said = [f"The customer's words: {d['text']}"] if d.get("text") else []
    return Content(
        f"{headline}: case {d.get('case_id', '')} on order {o.order_id}",
        [f"{headline}: case {d.get('case_id', '')}, opened by {_TRIGGERS.get(d.get('trigger', ''), 'a customer')} "
         f"on order {o.order_id} from {o.seller.name}.", *said, *item_lines(o), *due,
         "Acknowledge: orders case ack CASE_ID --by NAME; resolve: orders case resolve CASE_ID --resolution TEXT --by NAME."],
        f"{headline}: order {o.order_id}.",
    )


def _case_assigned(o: OrderInput, d: dict[str, Any]) -> Content:
    return _case_for_staff(o, d, "A case for you")


def _case_escalated(o: OrderInput, d: dict[str, Any]) -> Content:
    return _case_for_staff(o, d, f"Escalated (level {d.get('level', 1)}), not acknowledged in time")


def _offer(d: dict[str, Any]) -> str:
    parts = []
    if d.get("discount_percent"):
        parts.append(f"{d['discount_percent']}% off")
    if d.get("free_shipping"):
        parts.append("free shipping")
    return " and ".join(parts) or "a special offer"


@dataclass(frozen=True)
class _CouponMessage:
    """A message of the customer's journey offering a coupon: {name}, {offer}
    (e.g. "15% off"), {code} and {until} (its expiry, customer's timezone)."""

    subject: str
    paragraphs: tuple[str, ...]
    sms: str

    def __call__(self, c: Customer, d: dict[str, Any]) -> Content:
        values = {"name": c.name, "offer": _offer(d), "code": d["coupon_code"], "until": local_time(d["expires_at"], c.timezone)}
        return Content(
            self.subject.format(**values), [p.format(**values) for p in self.paragraphs], self.sms.format(**values)
        )


_WELCOME_GIFT = _CouponMessage(
    "Welcome, {name}: a gift for your next order",
    ("Thank you for your first order, {name}. We are glad to have you with us.",
     "As a welcome gift, your next order gets {offer} with code {code}, valid until {until}."),
    "Welcome, {name}! Your next order gets {offer} with code {code}, until {until}.",
)


def _welcome(c: Customer, d: dict[str, Any]) -> Content:
    if d.get("coupon_code"):
        return _WELCOME_GIFT(c, d)
    return Content(
        f"Welcome, {c.name}",
        [f"Thank you for your first order, {c.name}. We are glad to have you with us."],
        f"Welcome, {c.name}! Thank you for your first order.",
    )


TEMPLATES: dict[Touchpoint, Callable[[OrderInput, dict[str, Any]], Content]] = {
    Touchpoint.ORDER_CONFIRMATION: _order_confirmation,
    Touchpoint.PAYMENT_REMINDER: _payment_reminder,
    Touchpoint.PAYMENT_CONFIRMATION: _payment_confirmation,
    Touchpoint.ORDER_CANCELLED: _order_cancelled,
    Touchpoint.DISPATCH_DELAYED: _dispatch_delayed,
    Touchpoint.DISPATCH_NOTICE: _dispatch_notice,
    Touchpoint.DELIVERY_DAY: _delivery_day,
    Touchpoint.DELIVERY_DELAYED: _delivery_delayed,
    Touchpoint.DELIVERY_CONFIRMATION: _delivery_confirmation,
    Touchpoint.LOCKER_REMINDER: _locker_reminder,
    Touchpoint.FEEDBACK_REQUEST: _feedback_request,
    Touchpoint.RECOMMENDATIONS: _recommendations,
    Touchpoint.PARCEL_LOST: _parcel_lost,
    Touchpoint.CASE_ACKNOWLEDGEMENT: _case_acknowledgement,
    Touchpoint.CASE_OUTCOME: _case_outcome,
    Touchpoint.CASE_ASSIGNED: _case_assigned,
    Touchpoint.CASE_ESCALATED: _case_escalated,
}


# The customer's journey: rendered from the customer's stored contact details.
CUSTOMER_TEMPLATES: dict[Touchpoint, Callable[[Customer, dict[str, Any]], Content]] = {
    Touchpoint.WELCOME: _welcome,
    Touchpoint.LOYALTY_REWARD: _CouponMessage(
        "Thank you for your loyalty, {name}: {offer}",
        ("Thank you for ordering with us again and again, {name}.",
         "Here is a reward: {offer} with code {code}, valid until {until}."),
        "Thanks for your loyalty! A reward: {offer} with code {code}, until {until}.",
    ),
    Touchpoint.WIN_BACK: _CouponMessage(
        "We miss you, {name}",
        ("It has been a while since your last order, {name}.",
         "Come back and get {offer} with code {code}, valid until {until}."),
        "We miss you, {name}! Come back for {offer} with code {code}, until {until}.",
    ),
    Touchpoint.WIN_BACK_REMINDER: _CouponMessage(
        "Last chance, {name}: your code {code} expires soon",
        ("A reminder, {name}: {offer} with code {code} is still yours until {until}.",
         "After that the code expires."),
        "Reminder: {offer} with code {code} is yours until {until}, then it expires.",
    ),
}


@dataclass(frozen=True)
class Links:
    """The signed links an email carries besides its content."""

    # Marketing email: RFC 8058 one-click unsubscribe.
    unsubscribe: str | None = None
    # Every customer email: "Was this helpful?" yes and no.
    helpful: tuple[str, str] | None = None


NO_LINKS = Links()

# Under a case's outcome, the vote asks whether the case was put right: "no" reopens it.
RESOLUTION_QUESTION = "Was this resolved?"
HELPFUL_QUESTION = "Was this helpful?"


def render(kind: Touchpoint, order: OrderInput, details: dict[str, Any], links: Links = NO_LINKS) -> tuple[Content, str]:
    """The content and its HTML body. A touchpoint of the customer's journey
    is rendered for the order's customer."""
    if kind in CUSTOMER_TEMPLATES:
        return render_for_customer(kind, order.customer, details, links)
    return _finish(kind, TEMPLATES[kind](order, details), links)


def render_for_customer(
    kind: Touchpoint, customer: Customer, details: dict[str, Any], links: Links = NO_LINKS
) -> tuple[Content, str]:
    """A message of the customer's journey, which belongs to no order."""
    return _finish(kind, CUSTOMER_TEMPLATES[kind](customer, details), links)


def _finish(kind: Touchpoint, content: Content, links: Links) -> tuple[Content, str]:
    """The opt-outs marketing needs, the vote links, and the HTML body."""
    body = [f"<p>{html.escape(p)}</p>" for p in content.paragraphs]
    paragraphs = list(content.paragraphs)
    if content.link:
        label, url = content.link
        paragraphs.append(f"{label}: {url}")
        body.append(f'<p><a href="{html.escape(url, quote=True)}">{html.escape(label)}</a></p>')
    if message_class(kind) is MessageClass.MARKETING:
        content = replace(content, sms=f"{content.sms} {STOP_NOTICE}")
    if links.helpful:
        question = RESOLUTION_QUESTION if kind is Touchpoint.CASE_OUTCOME else HELPFUL_QUESTION
        yes, no = (html.escape(url, quote=True) for url in links.helpful)
        paragraphs.append(f"{question} Yes: {links.helpful[0]} No: {links.helpful[1]}")
        body.append(f'<p>{question} <a href="{yes}">Yes</a> · <a href="{no}">No</a></p>')
    if links.unsubscribe:
        paragraphs.append(f"Unsubscribe from these emails: {links.unsubscribe}")
        link = html.escape(links.unsubscribe, quote=True)
        body.append(f'<p>No longer interested? <a href="{link}">Unsubscribe from these emails</a>.</p>')
    content = replace(content, paragraphs=paragraphs)
    return content, f"<!doctype html><html><body>{''.join(body)}</body></html>"
