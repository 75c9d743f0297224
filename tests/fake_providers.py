"""Local stand-ins for SendGrid and Twilio on loopback.

They answer like the real APIs (202 + X-Message-Id for mail, 201 + a Message
resource for SMS, Twilio's paged Message list for GET and a Message resource,
with its delivery status, for GET by SID, SendGrid's Email
Activity search by custom arg, from the mails actually accepted and only once
they are `email_activity_lag` seconds old), record every request for the spec
checks, and inject the faults a test or a benchmark asks for:
scripted status codes per recipient, a random share of 429/5xx answers,
requests that are accepted but answered only after the client gave up,
revoked credentials, failing message look-ups, an Email Activity API the
account has not bought (403), Twilio errors in the RFC 9457 format, and
numbers that replied STOP (Twilio's 21610).

429, 500 and 503 are answered before the message is accepted, as a provider
that is overloaded or down does. 502 and 504 are answered after it was
accepted, as a gateway that gave up waiting for the service behind it does.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

# Recipients the fakes refuse for good, the way the real APIs do.
BOUNCING_EMAIL_DOMAIN = "bounce.invalid"
UNSUBSCRIBED_PHONE = "+15005550009"

# `fail_next(EMAIL_ACTIVITY, ...)` scripts the answers to Email Activity searches.
EMAIL_ACTIVITY = "email activity"
# The one search the fake understands (SendGrid's query language has more).
EMAIL_ACTIVITY_BY_CUSTOM_ARG = re.compile(r"""^unique_args\['(?P<arg>[\w.-]+)'\]="(?P<value>[^"]*)"$""")

# GET of one Message resource.
TWILIO_MESSAGE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$")

TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
# Gateway errors: the service behind the gateway accepted the message.
ANSWERED_AFTER_ACCEPTING = (502, 504)


SENDGRID_UNAUTHORIZED = {
    "errors": [{"field": None, "message": "The provided authorization grant is invalid, expired, or revoked", "help": None}]
}
TWILIO_UNAUTHORIZED = {
    "code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401
}
# What Twilio answers a send to a number that replied STOP.
TWILIO_OPTED_OUT = {
    "code": 21610,
    "message": "Attempt to send to unsubscribed recipient",
    "more_info": "https://www.twilio.com/docs/errors/21610",
    "status": 400,
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.query).items()}

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass(frozen=True)
class AcceptedMessage:
    channel: str
    recipient: str
    sender: str | None
    text: str
    # The ledger key for mail (SendGrid custom_args); SMS carry none, so an
    # SMS is identified by recipient and body, which name order and touchpoint.
    key: str | None
    provider_id: str
    at: float
    # Wall clock, shown as the Message's date_sent.
    sent_at: datetime
    subject: str | None = None
    # SMS: where Twilio would post this message's status callbacks.
    status_callback: str | None = None

    @property
    def identity(self) -> tuple[str, str]:
        return ("key", self.key) if self.key else (self.recipient, self.text)


@dataclass
class FakeProviders:
    requests: list[RecordedRequest] = field(default_factory=list)
    # Status codes to answer with before behaving normally, per recipient.
    faults: dict[str, list[int]] = field(default_factory=dict)
    # Share of sends answered with a random 429/5xx, and share accepted but
    # answered `hang_seconds` later (past the client's timeout).
    fault_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 0.0
    # How long an accepted mail takes to show in Email Activity searches.
    email_activity_lag: float = 0.0
    # Called from the server thread for every accepted message.
    on_accept: Callable[[AcceptedMessage], None] | None = None
    # Called from the server thread for every request, before it is answered.
    on_request: Callable[[RecordedRequest], None] | None = None
    keep_requests: bool = True
    seed: int = 7
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.accepted: list[AcceptedMessage] = []
        self.answered: Counter[int] = Counter()
        self.hung = 0
        self._scripted_hangs: dict[str, float] = {}
        self._random = random.Random(self.seed)
        # Channels ("email", "sms") answering every send with a status, as a
        # provider in outage does, until `end_outage`.
        self._outages: dict[str, int] = {}
        self._lookup_faults: dict[str, list[int]] = {}
        self._revoked: set[str] = set()
        self._problem_format: set[str] = set()
        self._opted_out: set[str] = {UNSUBSCRIBED_PHONE}
        # The status every Email Activity search gets (403: the add-on was not bought).
        self._email_activity_refusal: int | None = None
        # What each Message resource says of its delivery, by SID: (status, error code).
        self._sms_statuses: dict[str, tuple[str, int | None]] = {}
        # Email Activity searches answered 200, by whether they found the mail.
        self.email_activity_searches: Counter[str] = Counter()
        # Each of them: (the ledger key searched for, when, whether found).
        self.email_activity_log: list[tuple[str, float, bool]] = []

    def start_outage(self, channel: str, status: int = 503) -> None:
        with self.lock:
            self._outages[channel] = status

    def end_outage(self, channel: str) -> None:
        with self.lock:
            self._outages.pop(channel, None)

    def _outage(self, channel: str) -> int | None:
        with self.lock:
            return self._outages.get(channel)

    def fail_next(self, recipient: str, *statuses: int) -> None:
        with self.lock:
            self.faults.setdefault(recipient, []).extend(statuses)

    def fail_next_lookup(self, phone: str, *statuses: int) -> None:
        """Answer the next Message list requests for `phone` with these statuses."""
        with self.lock:
            self._lookup_faults.setdefault(phone, []).extend(statuses)

    def end_lookup_faults(self, phone: str) -> None:
        """Answer Message list requests for `phone` normally again."""
        with self.lock:
            self._lookup_faults.pop(phone, None)

    def revoke(self, credential: str) -> None:
        """Answer 401 to every request made with this API key or auth token."""
        with self.lock:
            self._revoked.add(credential)

    def restore(self, credential: str) -> None:
        """Accept this API key or auth token again."""
        with self.lock:
            self._revoked.discard(credential)

    def answer_in_problem_format(self, phone: str) -> None:
        """Twilio errors for `phone` in the RFC 9457 format (type, title, status, code, detail)."""
        with self.lock:
            self._problem_format.add(phone)

    def opt_out(self, phone: str) -> None:
        """`phone` replied STOP: every send to it is answered with Twilio's 21610."""
        with self.lock:
            self._opted_out.add(phone)

    def set_sms_status(self, sid: str, status: str, error_code: int | None = None) -> None:
        """What the Message resource `sid` says from now on; an accepted SMS
        says `delivered` otherwise, as nearly every one does minutes later."""
        with self.lock:
            self._sms_statuses[sid] = (status, error_code)

    def refuse_email_activity(self, status: int | None) -> None:
        """Answer every Email Activity search with `status` (None: answer normally)."""
        with self.lock:
            self._email_activity_refusal = status

    def hang_next(self, recipient: str, seconds: float) -> None:
        """Accept the next message to `recipient`, then answer only after `seconds`."""
        with self.lock:
            self._scripted_hangs[recipient] = seconds

    def delivered(self) -> list[tuple[str, str]]:
        """(recipient, text) of every accepted message."""
        with self.lock:
            return [(m.recipient, m.text) for m in self.accepted]

    def deliveries_to(self, recipient: str) -> list[str]:
        return [text for to, text in self.delivered() if to == recipient]

    def duplicates(self, key_prefix: str | None = None) -> dict[tuple[str, str], int]:
        """Messages taken more than once; with `key_prefix`, only mail whose
        ledger key starts with it (a test's own, on fakes other tests share)."""
        with self.lock:
            taken = [m for m in self.accepted if key_prefix is None or (m.key or "").startswith(key_prefix)]
        counts = Counter(m.identity for m in taken)
        return {k: n for k, n in counts.items() if n > 1}

    def _fault_for(self, recipient: str) -> int | None:
        with self.lock:
            queue = self.faults.get(recipient)
            if queue:
                return queue.pop(0)
            if self.fault_rate and self._random.random() < self.fault_rate:
                return self._random.choice(TRANSIENT_STATUSES)
            return None

    def _hang(self, recipient: str) -> None:
        with self.lock:
            seconds = self._scripted_hangs.pop(recipient, None)
            if seconds is None and self.hang_rate and self._random.random() < self.hang_rate:
                seconds = self.hang_seconds
            self.hung += seconds is not None
        if seconds:
            time.sleep(seconds)

    def _is_revoked(self, req: RecordedRequest) -> bool:
        auth = next((v for k, v in req.headers.items() if k.lower() == "authorization"), "")
        if auth.startswith("Basic "):
            auth = base64.b64decode(auth[len("Basic "):]).decode()
        with self.lock:
            return any(secret in auth for secret in self._revoked)

    def _accept(
        self,
        channel: str,
        recipient: str,
        sender: str | None,
        text: str,
        key: str | None,
        provider_id: str,
        *,
        subject: str | None = None,
        status_callback: str | None = None,
    ) -> None:
        message = AcceptedMessage(
            channel, recipient, sender, text, key, provider_id, time.monotonic(), datetime.now(timezone.utc), subject, status_callback
        )
        with self.lock:
            self.accepted.append(message)
        if self.on_accept:
            self.on_accept(message)

    def handle(self, req: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            if self.keep_requests:
                self.requests.append(req)
            n = next(self._ids)
        if self.on_request:
            self.on_request(req)
        status, headers, body = self._answer(req, n)
        with self.lock:
            self.answered[status] += 1
        return status, headers, body

    def _answer(self, req: RecordedRequest, n: int) -> tuple[int, dict[str, str], bytes]:
        twilio_messages = req.path.startswith("/2010-04-01/Accounts/") and req.path.endswith("/Messages.json")
        twilio_message = TWILIO_MESSAGE.match(req.path)
        if req.method == "POST" and req.path == "/v3/mail/send":
            if self._is_revoked(req):
                return 401, {"Content-Type": "application/json"}, json.dumps(SENDGRID_UNAUTHORIZED).encode()
            mail = req.json
            personalization = mail["personalizations"][0]
            to = personalization["to"][0]["email"]
            fault = self._outage("email") or self._fault_for(to)
            if fault and fault not in ANSWERED_AFTER_ACCEPTING:
                return fault, {"Content-Type": "application/json"}, b'{"errors":[{"message":"try later"}]}'
            if to.endswith("@" + BOUNCING_EMAIL_DOMAIN):
                body = {"errors": [{"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email"}]}
                return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()
            text = next(c["value"] for c in mail["content"] if c["type"] == "text/plain")
            key = personalization.get("custom_args", {}).get("message_key")
            self._accept("email", to, mail["from"]["email"], mail["subject"] + "\n" + text, key, f"sg-{n}", subject=mail["subject"])
            if fault:
                return fault, {"Content-Type": "text/html"}, b"<html><body>Bad gateway</body></html>"
            self._hang(to)
            return 202, {"X-Message-Id": f"sg-{n}"}, b""
        if req.method == "GET" and req.path == "/v3/messages":
            return self._email_activity(req)
        if (twilio_messages or twilio_message) and self._is_revoked(req):
            return 401, {"Content-Type": "application/json"}, json.dumps(TWILIO_UNAUTHORIZED).encode()
        if req.method == "POST" and twilio_messages:
            form = req.form
            to = form["To"]
            fault = self._outage("sms") or self._fault_for(to)
            if fault and fault not in ANSWERED_AFTER_ACCEPTING:
                return self._twilio_error(to, fault)
            with self.lock:
                opted_out = to in self._opted_out
            if opted_out:
                return 400, {"Content-Type": "application/json"}, json.dumps(TWILIO_OPTED_OUT).encode()
            sid = f"SM{n:032x}"
            self._accept("sms", to, form.get("From"), form["Body"], None, sid, status_callback=form.get("StatusCallback"))
            if fault:
                return self._twilio_error(to, fault)
            self._hang(to)
            message = self._twilio_message(sid, to, form.get("From"), form["Body"], datetime.now(timezone.utc))
            return 201, {"Content-Type": "application/json"}, json.dumps(message).encode()
        if req.method == "GET" and twilio_messages:
            with self.lock:
                faults = self._lookup_faults.get(req.params.get("To", ""))
                fault = faults.pop(0) if faults else None
            if fault:
                return self._twilio_error(req.params["To"], fault)
            return self._twilio_list(req)
        if req.method == "GET" and twilio_message:
            return self._twilio_fetch(req, twilio_message["account"], twilio_message["sid"])
        return 404, {}, b'{"message":"not found"}'

    def _email_activity(self, req: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        """GET /v3/messages?query=unique_args['message_key']="...": the mails
        accepted with that custom arg, once `email_activity_lag` old."""
        if self._is_revoked(req):
            return 401, {"Content-Type": "application/json"}, json.dumps(SENDGRID_UNAUTHORIZED).encode()
        with self.lock:
            refusal = self._email_activity_refusal
        status = refusal or self._fault_for(EMAIL_ACTIVITY)
        if status:
            body = {"errors": [{"message": "access forbidden" if status == 403 else "try later"}]}
            return status, {"Content-Type": "application/json"}, json.dumps(body).encode()
        search = EMAIL_ACTIVITY_BY_CUSTOM_ARG.match(req.params.get("query", ""))
        if not search or search["arg"] != "message_key":
            body = {"errors": [{"message": f"invalid syntax: {req.params.get('query', '')!r}"}]}
            return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()
        visible_before = time.monotonic() - self.email_activity_lag
        with self.lock:
            found = [
                m for m in self.accepted
                if m.channel == "email" and m.key == search["value"] and m.at <= visible_before
            ][: int(req.params.get("limit", 10))]
            self.email_activity_searches["found" if found else "not found"] += 1
            self.email_activity_log.append((search["value"], time.monotonic(), bool(found)))
        messages = [
            {
                "from_email": m.sender, "msg_id": m.provider_id, "subject": m.subject, "to_email": m.recipient,
                "status": "processed", "opens_count": 0, "clicks_count": 0,
                "last_event_time": m.sent_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            }
            for m in found
        ]
        return 200, {"Content-Type": "application/json"}, json.dumps({"messages": messages}).encode()

    def _twilio_error(self, to: str, status: int) -> tuple[int, dict[str, str], bytes]:
        """Twilio's legacy error body, or the RFC 9457 one, which like the real
        API echoes the number."""
        with self.lock:
            problem = to in self._problem_format
        if problem:
            code = 21211 if status == 400 else 20500
            body = {
                "type": f"https://www.twilio.com/docs/errors/{code}",
                "title": "Invalid 'To' Phone Number" if status == 400 else "Service unavailable",
                "status": status,
                "code": code,
                "detail": f"The 'To' number {to} is not a valid phone number." if status == 400 else "Try again later",
            }
            return status, {"Content-Type": "application/problem+json"}, json.dumps(body).encode()
        body = {"code": 20429 if status == 429 else 20500, "message": "Try again later", "status": status}
        return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

    @staticmethod
    def _twilio_message(sid: str, to: str, sender: str | None, body: str, sent_at: datetime) -> dict:
        return {
            "sid": sid, "to": to, "from": sender, "body": body, "status": "queued",
            "date_sent": format_datetime(sent_at, usegmt=True),
        }

    def _twilio_fetch(self, req: RecordedRequest, account: str, sid: str) -> tuple[int, dict[str, str], bytes]:
        """One Message resource, with its delivery status and error code;
        failing as `fail_next_lookup` scripts for its recipient."""
        with self.lock:
            message = next((m for m in self.accepted if m.channel == "sms" and m.provider_id == sid), None)
            faults = self._lookup_faults.get(message.recipient) if message else None
            fault = faults.pop(0) if faults else None
            status, error_code = self._sms_statuses.get(sid, ("delivered", None))
        if message is None:
            body = {
                "code": 20404, "message": f"The requested resource {req.path} was not found",
                "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404,
            }
            return 404, {"Content-Type": "application/json"}, json.dumps(body).encode()
        if fault:
            return self._twilio_error(message.recipient, fault)
        resource = {
            **self._twilio_message(sid, message.recipient, message.sender, message.text, message.sent_at),
            "account_sid": account, "api_version": "2010-04-01", "direction": "outbound-api", "num_segments": "1",
            "status": status, "error_code": error_code, "error_message": None, "uri": req.path,
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(resource).encode()

    def _twilio_list(self, req: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        """Messages newest first, filtered by To and From, one page."""
        params = req.params
        page_size = int(params.get("PageSize", 50))
        with self.lock:
            found = [
                m for m in reversed(self.accepted)
                if m.channel == "sms"
                and m.recipient == params.get("To", m.recipient)
                and m.sender == params.get("From", m.sender)
            ][:page_size]
        body = {
            "messages": [self._twilio_message(m.provider_id, m.recipient, m.sender, m.text, m.sent_at) for m in found],
            "page": 0, "page_size": page_size, "start": 0, "end": max(len(found) - 1, 0),
            "uri": req.path, "first_page_uri": req.path, "next_page_uri": None, "previous_page_uri": None,
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    providers: FakeProviders
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        path, _, query = self.path.partition("?")
        req = RecordedRequest(self.command, path, dict(self.headers.items()), self.rfile.read(length), query)
        status, headers, body = self.providers.handle(req)
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting, as it should after a hang

    do_GET = do_POST = _serve

    def log_message(self, *args: object) -> None:
        pass


def serve(providers: FakeProviders | None = None) -> tuple[FakeProviders, ThreadingHTTPServer]:
    providers = providers or FakeProviders()
    handler = type("Handler", (_Handler,), {"providers": providers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    providers.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    return providers, server
