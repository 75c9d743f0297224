"""Local stand-ins for SendGrid and Twilio on loopback.

They answer like the real APIs (202 + X-Message-Id for mail, 201 + a Message
resource for SMS), record every request for the spec checks, and inject the
faults a test asks for.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

# Recipients the fakes refuse for good, the way the real APIs do.
BOUNCING_EMAIL_DOMAIN = "bounce.invalid"
UNSUBSCRIBED_PHONE = "+15005550009"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class FakeProviders:
    requests: list[RecordedRequest] = field(default_factory=list)
    # Status codes to answer with before behaving normally, per recipient.
    faults: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, recipient: str, *statuses: int) -> None:
        with self.lock:
            self.faults.setdefault(recipient, []).extend(statuses)

    def delivered(self) -> list[tuple[str, str]]:
        """(recipient, text) of every accepted message."""
        with self.lock:
            return [m for m in self._accepted]

    def deliveries_to(self, recipient: str) -> list[str]:
        return [text for to, text in self.delivered() if to == recipient]

    def duplicates(self) -> dict[tuple[str, str], int]:
        return {k: n for k, n in Counter(self.delivered()).items() if n > 1}

    def __post_init__(self) -> None:
        self._accepted: list[tuple[str, str]] = []

    def _next_fault(self, recipient: str) -> int | None:
        with self.lock:
            queue = self.faults.get(recipient)
            return queue.pop(0) if queue else None

    def handle(self, req: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests.append(req)
            n = next(self._ids)
        if req.path == "/v3/mail/send":
            mail = req.json
            to = mail["personalizations"][0]["to"][0]["email"]
            fault = self._next_fault(to)
            if fault:
                return fault, {"Content-Type": "application/json"}, b'{"errors":[{"message":"try later"}]}'
            if to.endswith("@" + BOUNCING_EMAIL_DOMAIN):
                body = {"errors": [{"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email"}]}
                return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()
            text = next(c["value"] for c in mail["content"] if c["type"] == "text/plain")
            with self.lock:
                self._accepted.append((to, mail["subject"] + "\n" + text))
            return 202, {"X-Message-Id": f"sg-{n}"}, b""
        if req.path.startswith("/2010-04-01/Accounts/") and req.path.endswith("/Messages.json"):
            form = req.form
            to = form["To"]
            fault = self._next_fault(to)
            if fault:
                return fault, {"Content-Type": "application/json"}, json.dumps(
                    {"code": 20429, "message": "Too Many Requests", "status": fault}
                ).encode()
            if to == UNSUBSCRIBED_PHONE:
                body = {"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}
                return 400, {"Content-Type": "application/json"}, json.dumps(body).encode()
            with self.lock:
                self._accepted.append((to, form["Body"]))
            sid = f"SM{n:032x}"
            body = {"sid": sid, "to": to, "from": form.get("From"), "body": form["Body"], "status": "queued"}
            return 201, {"Content-Type": "application/json"}, json.dumps(body).encode()
        return 404, {}, b'{"message":"not found"}'


class _Handler(BaseHTTPRequestHandler):
    providers: FakeProviders

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        req = RecordedRequest("POST", self.path.split("?")[0], dict(self.headers.items()), self.rfile.read(length))
        status, headers, body = self.providers.handle(req)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve() -> tuple[FakeProviders, ThreadingHTTPServer]:
    providers = FakeProviders()
    handler = type("Handler", (_Handler,), {"providers": providers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return providers, server
