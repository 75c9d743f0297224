"""What SendGrid's Event Webhook and Twilio's status callbacks would post
about the messages the fake providers took, posted to the HTTP service the
way they post: signed (SendGrid's ECDSA over timestamp and body, Twilio's
X-Twilio-Signature over URL and form), a while after the send, and posted
again while the service does not answer 2xx, as SendGrid does.

Every mail gets `processed`, then `delivered`, or `bounce` for a recipient
at BOUNCES_LATER_DOMAIN (an address SendGrid took and the receiving server
then refused); every SMS gets `sent`, then `delivered`.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

from tests.fake_providers import AcceptedMessage

BOUNCES_LATER_DOMAIN = "bounces-later.example"
SENDGRID_EVENTS_PATH = "/webhooks/sendgrid/events"
SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def new_key_pair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key, and its public half as SendGrid shows the verification
    key: base64 of the DER SubjectPublicKeyInfo."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode()


def sendgrid_headers(body: bytes, key: ec.EllipticCurvePrivateKey, at: float | None = None) -> dict[str, str]:
    """As SendGrid signs a post: ECDSA P-256 / SHA-256 over the timestamp, then the body."""
    timestamp = str(int(time.time() if at is None else at))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE: base64.b64encode(signature).decode(), TIMESTAMP: timestamp, "Content-Type": "application/json"}


class ProviderReports:
    """Posts the reports on each accepted message (`on_accept`, called from
    the fakes' server thread): the first `delay` seconds after the send
    (drawn between its bounds), the second a moment later, each from a pool
    of threads when it is due."""

    def __init__(
        self,
        web_url: str,
        sendgrid_key: ec.EllipticCurvePrivateKey,
        twilio_token: str,
        *,
        delay: tuple[float, float] = (0.5, 8.0),
        retry_for: float = 120.0,
        seed: int = 11,
    ) -> None:
        self.web_url = web_url.rstrip("/")
        self.sendgrid_key = sendgrid_key
        self.twilio = RequestValidator(twilio_token)
        self.delay, self.retry_for = delay, retry_for
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # (due, tie-breaker, report): posted by the pool once due.
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count()
        self._pending = 0
        self._pool = ThreadPoolExecutor(16, thread_name_prefix="reports")
        self._closed = False
        threading.Thread(target=self._dispatch, daemon=True).start()
        # Reports by what they said; answers by status; posts given up.
        self.posted: Counter[str] = Counter()
        self.answers: Counter[int] = Counter()
        self.gave_up = 0

    def on_accept(self, message: AcceptedMessage) -> None:
        if message.channel == "email":
            outcome = "bounce" if message.recipient.endswith("@" + BOUNCES_LATER_DOMAIN) else "delivered"
            reports = [lambda e=e: self._post_sendgrid(message, e) for e in ("processed", outcome)]
        elif message.status_callback:
            reports = [lambda s=s: self._post_twilio(message, s) for s in ("sent", "delivered")]
        else:
            return
        with self._changed:
            due = time.monotonic() + self._random.uniform(*self.delay)
            for n, report in enumerate(reports):
                heapq.heappush(self._due, (due + 0.2 * n, next(self._ids), report))
            self._pending += len(reports)
            self._changed.notify_all()

    def _dispatch(self) -> None:
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                while self._due and self._due[0][0] <= now:
                    _, _, report = heapq.heappop(self._due)
                    self._pool.submit(self._run, report)
                self._changed.wait(self._due[0][0] - now if self._due else None)

    def _run(self, report: Callable[[], None]) -> None:
        try:
            report()
        finally:
            with self._changed:
                self._pending -= 1
                self._changed.notify_all()

    def _post_sendgrid(self, message: AcceptedMessage, event: str) -> None:
        report = {
            "email": message.recipient,
            "timestamp": int(time.time()),
            "event": event,
            "sg_event_id": base64.b64encode(uuid.uuid4().bytes).decode(),
            "sg_message_id": f"{message.provider_id}.filter0001.1.2.0",
            "message_key": message.key,
        }
        if event == "bounce":
            report.update(type="bounce", reason="550 5.1.1 The email account that you tried to reach does not exist")
        body = json.dumps([report]).encode()
        # Signed anew for each attempt, as SendGrid does: an old timestamp would be refused as a replay.
        self._post(event, f"{self.web_url}{SENDGRID_EVENTS_PATH}", lambda: (body, sendgrid_headers(body, self.sendgrid_key)))

    def _post_twilio(self, message: AcceptedMessage, status: str) -> None:
        params = {
            "MessageSid": message.provider_id, "SmsSid": message.provider_id, "AccountSid": "AC" + "0" * 32,
            "From": message.sender or "", "To": message.recipient, "MessageStatus": status, "SmsStatus": status,
            "ApiVersion": "2010-04-01",
        }
        body = urlencode(params).encode()
        headers = {
            "X-Twilio-Signature": self.twilio.compute_signature(message.status_callback, params),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        self._post(f"sms {status}", message.status_callback, lambda: (body, headers))

    def _post(self, what: str, url: str, signed: object) -> None:
        deadline = time.monotonic() + self.retry_for
        while True:
            body, headers = signed()  # type: ignore[operator]
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                status = 0  # not listening (yet, or any more)
            with self._lock:
                self.answers[status] += 1
            if 200 <= status < 300:
                with self._lock:
                    self.posted[what] += 1
                return
            if time.monotonic() > deadline:
                with self._lock:
                    self.gave_up += 1
                return
            time.sleep(1.0)

    def drain(self, timeout: float = 180.0) -> bool:
        """Until every report is posted or given up; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
