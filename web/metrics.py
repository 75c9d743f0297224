"""Requests the HTTP service refused (4xx), counted for Prometheus by
endpoint (the route's path, "unmatched" for any other), status and reason.
Labels never carry what was asked: no query string, token or phone number.

The reason follows from the status (403 is always a bad signature here, 422
a field that failed validation, ...) unless the code that refused the request
named it in `request.state.rejection` (e.g. token_signature).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.common import MetricMeter

REJECTED_REQUESTS = "orders_web_rejected_requests"

REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "bad_signature",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
}


class CountRejections:
    """ASGI middleware: sees the response of every request, errors turned
    into responses by the app's exception handlers included."""

    def __init__(self, app: ASGIApp, meter: MetricMeter) -> None:
        self.app = app
        self.rejected = meter.create_counter(REJECTED_REQUESTS, "Requests the HTTP service refused (4xx)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_noting_status)
        if 400 <= status < 500:
            self.rejected.add(1, labels(scope, status))


def labels(scope: Scope, status: int) -> dict[str, Any]:
    # The router puts the route it matched in the scope, and request.state is scope["state"].
    route = scope.get("route")
    named = scope.get("state", {}).get("rejection")
    return {
        "endpoint": getattr(route, "path", "unmatched"),
        "status": str(status),
        "reason": named or REASONS.get(status, "other"),
    }
