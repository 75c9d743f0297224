"""Every request the real clients sent to the fakes during this session must
conform to the providers' official OpenAPI descriptions in ../shared."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest

from providers import RenderedMessage
from providers.sendgrid import SendGridEmail
from providers.twilio import TwilioMessages, TwilioSms
from starter.embedded import start_time_skipping_server
from tests.conftest import new_order, payment_for
from tests.fake_providers import TWILIO_MESSAGE, FakeProviders, RecordedRequest
from workflows.ledger_key import LedgerKey

SPECS = Path(os.environ.get("PROVIDER_SPECS_DIR", Path(__file__).resolve().parents[2] / "shared" / "provider-specs"))
if not SPECS.exists() and os.environ.get("CI"):
    raise RuntimeError(f"provider specs not found at {SPECS}")
pytestmark = [
    pytest.mark.may_skip("the specs live outside the repository, so a fresh clone has none; CI fails without them"),
    pytest.mark.skipif(not SPECS.exists(), reason=f"provider specs not found at {SPECS}; set PROVIDER_SPECS_DIR"),
]
SPEC_FOR = {
    "/v3/mail/send": ("sendgrid_mail_v3.json", "https://api.sendgrid.com"),
    "/v3/messages": ("sendgrid_email_activity_v3.json", "https://api.sendgrid.com"),
    "/2010-04-01/Accounts/": ("twilio_api_v2010.json", "https://api.twilio.com"),
}


@cache
def spec(name: str) -> OpenAPI:
    # Parsed as JSON: the YAML loader openapi-core defaults to rejects escapes in the Twilio file.
    return OpenAPI.from_dict(json.loads((SPECS / name).read_text()))


def validate(req: RecordedRequest) -> None:
    name, server = next(v for prefix, v in SPEC_FOR.items() if req.path.startswith(prefix))
    headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")}
    url = server + req.path + (f"?{req.query}" if req.query else "")
    prepared = requests.Request(req.method, url, headers=headers, data=req.body or None)
    spec(name).validate_request(RequestsOpenAPIRequest(prepared))


@pytest.fixture(scope="module")
async def sent_requests(make_harness, fakes: FakeProviders, provider_config, data_keys) -> list[RecordedRequest]:
    """A journey that exercises email and SMS, a Twilio message lookup and a
    SendGrid Email Activity search, on top of whatever ran before."""
    order = new_order()
    ts_env = await start_time_skipping_server(data_keys)
    async with make_harness(ts_env) as h:
        handle = await h.start(order)
        await handle.signal("payment_received", payment_for(order))
        # The dispatch must not overtake the payment confirmation's send (see Harness.wait_queues_empty).
        await h.wait_touchpoint(handle, "payment_confirmation")
        await handle.signal(
            "order_dispatched",
            {"carrier": "DHL", "tracking_number": "SPEC1", "expected_delivery": await h.tomorrow(), "tracking_url": "https://t.example/SPEC1"},
        )
        await h.wait_touchpoint(handle, "dispatch_notice", "sms")
        await handle.terminate("test done")
    await ts_env.shutdown()
    phone = order["customer"]["phone"]
    sms = RenderedMessage(key="k", recipient=phone, subject="", text=fakes.deliveries_to(phone)[0], html="")
    mail = RenderedMessage(key=str(LedgerKey.of_order(order["order_id"], "order_confirmation", "email")), recipient="", subject="", text="", html="")
    for provider, message in ((TwilioSms(provider_config), sms), (SendGridEmail(provider_config), mail)):
        try:
            assert await provider.look_up(message)
        finally:
            await provider.close()
    # The HTTP service's look-up of an SMS whose status callback did not come.
    messages = TwilioMessages(
        provider_config.twilio_account_sid,
        provider_config.twilio_auth_token,
        base_url=provider_config.twilio_api_base_url,
        timeout=provider_config.request_timeout,
    )
    try:
        sms_sid = next(m.provider_id for m in fakes.accepted if m.recipient == phone)
        assert (await messages.status(sms_sid))[0] == "delivered"
    finally:
        await messages.close()
    return list(fakes.requests)


def test_requests_conform_to_official_specs(sent_requests: list[RecordedRequest]):
    mail = [r for r in sent_requests if r.path == "/v3/mail/send"]
    sms = [r for r in sent_requests if r.path.endswith("/Messages.json")]
    fetched = [r for r in sent_requests if TWILIO_MESSAGE.match(r.path)]
    searches = [r for r in sent_requests if r.path == "/v3/messages"]
    assert mail and {r.method for r in sms} == {"GET", "POST"} and fetched and searches
    for req in mail + sms + fetched + searches:
        validate(req)


def test_validator_catches_a_broken_request(sent_requests: list[RecordedRequest]):
    """The check above can fail: drop a field the spec requires."""
    sms = next(r for r in sent_requests if r.method == "POST" and r.path.endswith("/Messages.json"))
    broken = RecordedRequest(sms.method, sms.path, sms.headers, b"Body=hello")
    with pytest.raises(Exception, match="To"):
        validate(broken)
    mail = next(r for r in sent_requests if r.path == "/v3/mail/send")
    broken_mail = RecordedRequest(mail.method, mail.path, mail.headers, b'{"subject": "no recipients"}')
    with pytest.raises(Exception):
        validate(broken_mail)
    fetch = next(r for r in sent_requests if TWILIO_MESSAGE.match(r.path))
    with pytest.raises(Exception):  # a SID Twilio never gives
        validate(RecordedRequest(fetch.method, fetch.path.replace("/Messages/SM", "/Messages/XX"), fetch.headers, b""))
    search = next(r for r in sent_requests if r.path == "/v3/messages")
    for query in ("limit=1", search.query.replace("limit=1", "limit=0")):  # no query; a limit out of range
        with pytest.raises(Exception, match="query|limit"):
            validate(RecordedRequest(search.method, search.path, search.headers, b"", query))


async def test_unsubscribe_headers_conform_to_the_mail_send_spec(pool, fakes: FakeProviders, provider_config):
    """A marketing mail's List-Unsubscribe headers go in the top-level
    `headers` object, which the spec types as an object; a list is refused."""
    from activities.messaging import MessagingActivities
    from tests.test_consent_sending import customer, journey_message, mails_to, send
    from workflows.models import Touchpoint

    order = await customer(pool, marketing={"email": True})
    await send(MessagingActivities(pool, provider_config), journey_message(order, Touchpoint.WIN_BACK))
    [mail] = mails_to(fakes, order["customer"]["email"])
    assert set(mail.json["headers"]) == {"List-Unsubscribe", "List-Unsubscribe-Post"}
    assert all(isinstance(v, str) for v in mail.json["headers"].values())
    validate(mail)
    listed = {**mail.json, "headers": [{k: v} for k, v in mail.json["headers"].items()]}
    with pytest.raises(Exception, match="headers"):
        validate(RecordedRequest(mail.method, mail.path, mail.headers, json.dumps(listed).encode()))


async def test_the_report_mail_conforms_to_the_mail_send_spec(pool, fakes: FakeProviders, provider_config):
    """The WOCAS report's mail to a lead: the charts as inline attachments
    (disposition inline, content_id) and the figures as a CSV attachment."""
    from temporalio.testing import ActivityEnvironment

    from activities.messaging import MessagingActivities
    from activities.staff_mail import StaffMailer
    from activities.wocas import WocasActivities
    from reports.config import Lead
    from reports.metrics import targets_from_env
    from workflows.models import Channel, WocasLead, WocasMail, WocasPeriod

    lead = Lead("Dana", f"dana.{uuid.uuid4().hex[:8]}@shop.example", ("delivery", "customer_service"))
    mailer = StaffMailer(pool, MessagingActivities(pool, provider_config).provider(Channel.EMAIL))
    activities = WocasActivities(pool, mailer, [lead], targets_from_env({}), {})
    period = WocasPeriod(end=datetime(2030, 1, 15, tzinfo=timezone.utc), days=7)
    mail = WocasMail(period=period, lead=WocasLead(name=lead.name, email=lead.email, sections=list(lead.sections)))
    await ActivityEnvironment().run(activities.mail_wocas_report, mail)
    [sent] = [r for r in fakes.requests if r.path == "/v3/mail/send" and lead.email in r.body.decode()]
    dispositions = sorted({a["disposition"] for a in sent.json["attachments"]})
    assert dispositions == ["attachment", "inline"] and all(a.get("content_id") for a in sent.json["attachments"] if a["disposition"] == "inline")
    validate(sent)
    wrong = {**sent.json, "attachments": [{**a, "disposition": "embedded"} for a in sent.json["attachments"]]}
    with pytest.raises(Exception, match="disposition"):
        validate(RecordedRequest(sent.method, sent.path, sent.headers, json.dumps(wrong).encode()))
