"""The codec server: `POST /encode` and `POST /decode` as Temporal's Web UI and
CLI call them (`{"payloads": [...]}`, protobuf JSON), so an operator can read
encrypted payloads without the keys ever reaching the Temporal server.

Customers' workflows' payloads are sealed with their own data keys, read
from PostgreSQL (DATABASE_URL, codec/data_keys.py); one whose key was
shredded when its customer was erased comes back as the JSON string "erased
customer data", so the Web UI and `temporal workflow show` show that.

An operator tool, kept apart from the customer-facing service in `web/`: its
own app and port (`orders codec-server`, `CODEC_HOST`:`CODEC_PORT`, default
127.0.0.1:8089). Every request needs `Authorization: Bearer
<CODEC_SERVER_TOKEN>` (the CLI's `--codec-auth`), and any request a browser
makes from an origin other than `CODEC_CORS_ORIGIN` is refused.

The Web UI cannot send that token: its "pass access token" option forwards the
UI's own OIDC login token (the dev server's UI has no login), and only to an
https endpoint; its other option sends cookies. So, with
`CODEC_TRUST_UI_ORIGIN=true`, allowed only while the server listens on a
loopback address, requests from `CODEC_CORS_ORIGIN` need no token. A browser
cannot forge its Origin, so no other web page can use this; a program on the
same machine can, which is why it is off by default and refused off loopback
(see README, "PII protection").
"""

from __future__ import annotations

import asyncio
import hmac
import json
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import WorkflowSerializationContext

from codec.data_keys import DataKeys
from codec.encryption import CodecConfigError, DataKeyShredded, EncryptionCodec, PayloadDecryptionError

ORIGIN_PATTERN = re.compile(r"https?://[^/\s]+")
# What the Web UI sends with each call; Authorization for other browser clients.
ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"
# Set by proxies: a request carrying one did not come straight from a local browser.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
log = logging.getLogger(__name__)
ERASED_CUSTOMER_DATA = "erased customer data"


@dataclass(frozen=True)
class CodecServerConfig:
    token: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8089
    # The Web UI's origin, e.g. http://localhost:8233; None refuses every browser.
    cors_origin: str | None = None
    # Requests from cors_origin need no token (loopback only, see above).
    trust_ui_origin: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CodecServerConfig:
        token = env.get("CODEC_SERVER_TOKEN", "")
        if len(token) < 16:
            raise CodecConfigError(
                "CODEC_SERVER_TOKEN is required, at least 16 characters: the bearer token callers of the codec "
                "server send (e.g. `openssl rand -hex 32`)"
            )
        origin = (env.get("CODEC_CORS_ORIGIN") or "").rstrip("/") or None
        if origin and not ORIGIN_PATTERN.fullmatch(origin):
            raise CodecConfigError(f"CODEC_CORS_ORIGIN must be an origin like http://localhost:8233, not {origin!r}")
        try:
            port = int(env.get("CODEC_PORT") or cls.port)
        except ValueError:
            raise CodecConfigError("CODEC_PORT must be a whole number") from None
        trust = (env.get("CODEC_TRUST_UI_ORIGIN") or "").lower()
        if trust not in ("", "true", "false", "1", "0"):
            raise CodecConfigError("CODEC_TRUST_UI_ORIGIN must be true or false")
        config = cls(
            token=token, host=env.get("CODEC_HOST") or cls.host, port=port, cors_origin=origin,
            trust_ui_origin=trust in ("true", "1"),
        )
        if config.trust_ui_origin and not origin:
            raise CodecConfigError("CODEC_TRUST_UI_ORIGIN needs CODEC_CORS_ORIGIN, the Web UI's origin")
        if config.trust_ui_origin and not is_loopback(config.host):
            raise CodecConfigError(
                f"CODEC_TRUST_UI_ORIGIN lets requests from the UI's origin in without a token, so only on a "
                f"loopback address; CODEC_HOST is {config.host}"
            )
        return config

    def refusal(self, authorization: str | None, origin: str | None, headers: Mapping[str, str]) -> tuple[int, str] | None:
        """Why a request is refused (status, reason), or None to serve it."""
        if origin is not None and origin != self.cors_origin:
            return 403, f"origin {origin} is not allowed"
        if authorization is None:
            if self.trust_ui_origin and origin is not None and came_directly_from_this_machine(headers):
                return None
            return 401, "Authorization: Bearer <CODEC_SERVER_TOKEN> is required"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            return 403, "wrong codec server token"
        return None


def came_directly_from_this_machine(headers: Mapping[str, str]) -> bool:
    """Whether a request looks like the operator's browser calling this
    loopback server itself: a proxy or tunnel in between would let a remote
    caller borrow the trusted origin, so a forwarded request, or one addressed
    to another host name, must bring the token."""
    if any(name in headers for name in FORWARDING_HEADERS):
        return False
    host = headers.get("host", "")
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return is_loopback(name.strip("[]"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def erased_payload() -> Payload:
    """What a payload of an erased customer shows as: a JSON string."""
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(ERASED_CUSTOMER_DATA).encode())


def create_app(config: CodecServerConfig, data_keys: DataKeys) -> FastAPI:
    codec = EncryptionCodec(data_keys.master, data_keys)
    app = FastAPI(title="order-lifecycle codec server", openapi_url=None, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        origin = request.headers.get("origin")
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin and origin == config.cors_origin else {}
        if request.method == "OPTIONS" and origin is not None:
            # A browser's preflight carries no credentials: only the origin is checked.
            if not cors:
                return JSONResponse({"detail": f"origin {origin} is not allowed"}, status_code=403)
            return Response(
                status_code=204,
                headers={
                    **cors,
                    "Access-Control-Allow-Methods": "POST",
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": "600",
                },
            )
        refused = config.refusal(request.headers.get("authorization"), origin, request.headers)
        if refused:
            status, reason = refused
            challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
            return JSONResponse({"detail": reason}, status_code=status, headers={**cors, **challenge})
        response = await call_next(request)
        response.headers.update(cors)
        return response

    async def convert(request: Request, step: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]) -> Response:
        try:
            payloads = json_format.Parse(await request.body(), Payloads(), ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError):
            return JSONResponse({"detail": 'the body must be {"payloads": [...]}, Payloads as protobuf JSON'}, status_code=400)
        converted = await step(payloads.payloads)
        return Response(
            json_format.MessageToJson(Payloads(payloads=converted), always_print_fields_with_no_presence=True),
            media_type="application/json",
        )

    async def decode_each(payloads: Sequence[Payload]) -> list[Payload]:
        """The Web UI shows whatever comes back and checks no status: a payload
        that does not decrypt (a key not configured here) is returned as it
        came, so it shows as ciphertext, and the rest of the batch decoded;
        one whose data key was shredded shows as "erased customer data"."""
        decoded = []
        for payload in payloads:
            try:
                decoded.extend(await codec.decode([payload]))
            except DataKeyShredded:
                decoded.append(erased_payload())
            except PayloadDecryptionError as err:
                log.warning("left a payload encrypted: %s", err)
                decoded.append(payload)
        return decoded

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        """`X-Workflow-Id` (optional, not sent by the `temporal` CLI) seals the
        payloads with that workflow's data key, as the SDK's clients do, so
        a backend that encodes here can still be shredded."""
        workflow_id = request.headers.get("x-workflow-id")
        if not workflow_id:
            return await convert(request, codec.encode)
        context = WorkflowSerializationContext(namespace=request.headers.get("x-namespace", ""), workflow_id=workflow_id)
        return await convert(request, codec.with_context(context).encode)

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        return await convert(request, decode_each)

    return app


def start(config: CodecServerConfig, data_keys: DataKeys, stop: asyncio.Event) -> asyncio.Task[None]:
    """Serve until `stop` is set (`orders up` runs it next to the rest)."""
    from web.server import start_app  # the uvicorn runner only, not the service's app

    return start_app(create_app(config, data_keys), config.host, config.port, stop, name="the codec server", address_settings="CODEC_HOST or CODEC_PORT")


async def serve(config: CodecServerConfig, data_keys: DataKeys) -> None:
    """`orders codec-server`: serve until SIGINT or SIGTERM."""
    from web.server import stop_on_signals

    await start(config, data_keys, stop_on_signals())
