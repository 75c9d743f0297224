"""The right to erasure over HTTP, for a shop's back office, and the one
flow `orders forget` runs too.

`POST /erasures` `{"customer_id", "requested_by"}` (bearer token
ERASURE_API_TOKEN; without it 503) forgets the customer in PostgreSQL at once
(store/erasure.py) and answers 202 with the receipt; the relay then tells
their workflows `customer_erased` (web/signals.py), so it holds while
Temporal is away. `GET /erasures/{receipt}` shows the state: complete once
every workflow was told or found over. A second request for a customer
already forgotten gets the first receipt.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Callable

import asyncpg
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse

from store import erasure, provider_events
from web.config import WebConfig
from web.signals import OwedSignals
from workflows.models import ErasureRequest


async def forget_and_tell(pool: asyncpg.Pool, relay: OwedSignals, customer_id: str, requested_by: str) -> erasure.Receipt:
    """Forget the customer, tell their workflows (what Temporal does not take
    now, the relay delivers later) and return the receipt as it stands."""
    async with pool.acquire() as conn:
        forgotten = await erasure.forget(conn, customer_id, requested_by)
    if forgotten.new:
        await relay.tell(provider_events.CUSTOMER, forgotten.owed_event_ids)
    return await settled(pool, forgotten.receipt.receipt_id)


async def settled(pool: asyncpg.Pool, receipt_id: str) -> erasure.Receipt | None:
    """The receipt, completed once every `customer_erased` is delivered (or
    its workflow found over). Crypto-shredding of Temporal history plugs in
    here: the customer's data keys are destroyed once their workflows have
    been told to close, before the erasure is complete."""
    receipt = await erasure.receipt(pool, receipt_id)
    if receipt is not None and receipt.completed_at is None and not await erasure.pending_signals(pool, receipt_id):
        await erasure.complete(pool, receipt_id)
        receipt = await erasure.receipt(pool, receipt_id)
    return receipt


Authorization = Annotated[str | None, Header(description="Bearer <ERASURE_API_TOKEN>")]


def add_erasure_endpoints(app: FastAPI, config: WebConfig, relay: OwedSignals) -> None:
    def authorised(authorization: str | None) -> None:
        if not config.erasure_api_token:
            raise HTTPException(503, "erasure endpoint not configured: set ERASURE_API_TOKEN")
        if not authorization:
            raise HTTPException(401, "missing Authorization: Bearer <ERASURE_API_TOKEN>", {"WWW-Authenticate": "Bearer"})
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), config.erasure_api_token.encode()):
            raise HTTPException(403, "wrong erasure token")

    pool: Callable[[], asyncpg.Pool] = lambda: app.state.pool  # noqa: E731
    refused: dict[int | str, dict[str, Any]] = {
        401: {"description": "no bearer token"},
        403: {"description": "wrong token"},
        503: {"description": "ERASURE_API_TOKEN not set"},
    }

    @app.post("/erasures", status_code=202, responses=refused)
    async def request_erasure(body: ErasureRequest, authorization: Authorization = None) -> JSONResponse:
        """Forget a customer: their data in PostgreSQL at once, their
        workflows told; the receipt id answers `GET /erasures/{receipt}`."""
        authorised(authorization)
        receipt = await forget_and_tell(pool(), relay, body.customer_id, body.requested_by)
        return JSONResponse(receipt.as_json(), status_code=202)

    @app.get("/erasures/{receipt_id}", responses={**refused, 404: {"description": "no such receipt"}})
    async def erasure_state(receipt_id: str, authorization: Authorization = None) -> dict[str, Any]:
        authorised(authorization)
        receipt = await settled(pool(), receipt_id)
        if receipt is None:
            raise HTTPException(404, "no erasure with this receipt")
        return receipt.as_json()
