"""The right to erasure over HTTP, for a shop's back office, and the one
flow `orders forget` runs too.

`POST /erasures` `{"customer_id", "requested_by"}` (bearer token
ERASURE_API_TOKEN; without it 503) forgets the customer in PostgreSQL at once
(store/erasure.py) and answers 202 with the receipt; the relay then tells
their workflows `customer_erased` (web/signals.py), so it holds while
Temporal is away. Then the customer's Temporal history is crypto-shredded
(`settled`): once every signal is delivered and each of their workflows is
closed (one still open `CLOSE_WITHIN` after the request is terminated,
"customer erased"), their data keys are destroyed (codec/data_keys.py), and
only then is the erasure complete. The relay does that after each pass
(`settle_open`, at least every sweep), so nobody needs to ask; `GET
/erasures/{receipt}` shows the state. A second request for a customer
already forgotten gets the first receipt.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Callable

import asyncpg
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from temporalio.service import RPCError

from codec import data_keys
from store import erasure, provider_events
from web.config import WebConfig
from web.signals import OwedSignals, Signals
from workflows.models import CUSTOMER_ERASED, ErasureRequest

log = logging.getLogger(__name__)

# How long an erased customer's workflows have to end by themselves once
# told (they do within seconds); one still open then is terminated.
CLOSE_WITHIN = timedelta(minutes=2)


async def forget_and_tell(pool: asyncpg.Pool, relay: OwedSignals, customer_id: str, requested_by: str) -> erasure.Receipt:
    """Forget the customer, tell their workflows (what Temporal does not take
    now, the relay delivers later) and return the receipt as it stands."""
    async with pool.acquire() as conn:
        forgotten = await erasure.forget(conn, customer_id, requested_by)
    if forgotten.new:
        await relay.tell(provider_events.CUSTOMER, forgotten.owed_event_ids)
    return await settled(pool, relay.signals, forgotten.receipt.receipt_id)


async def settled(
    pool: asyncpg.Pool, signals: Signals, receipt_id: str, close_within: timedelta = CLOSE_WITHIN
) -> erasure.Receipt | None:
    """The receipt, completed once every `customer_erased` is delivered,
    every workflow of the customer is closed (terminated if still open
    `close_within` after the request) and their data keys are shredded, so
    no workflow task ever meets a shredded payload. Temporal away: the
    receipt as it is, for the relay's next pass."""
    receipt = await erasure.receipt(pool, receipt_id)
    if receipt is None or receipt.completed_at is not None or await erasure.pending_signals(pool, receipt_id):
        return receipt
    workflow_ids = await erasure.workflows(pool, receipt_id)
    # From when they were told, not asked: told late (Temporal away), they
    # still get their time to close by themselves.
    told_at = await erasure.told_at(pool, receipt_id) or receipt.requested_at
    try:
        still_open = [w for w in workflow_ids if await signals.is_open(w)]
        if still_open and datetime.now(timezone.utc) - told_at < close_within:
            return receipt
        for workflow_id in still_open:
            await signals.terminate(workflow_id, CUSTOMER_ERASED)
    except (RPCError, OSError, TimeoutError, RuntimeError) as err:  # no connection: the SDK's is a RuntimeError
        log.warning("erasure %s waits: Temporal did not answer (%s)", receipt_id, type(err).__name__)
        return receipt
    async with pool.acquire() as conn, conn.transaction():
        if await erasure.claim_completion(conn, receipt_id):
            await erasure.close_cases(conn, workflow_ids)
            await erasure.complete(conn, receipt_id, await data_keys.shred(conn, workflow_ids))
    return await erasure.receipt(pool, receipt_id)


async def settle_open(pool: asyncpg.Pool, signals: Signals, close_within: timedelta = CLOSE_WITHIN) -> None:
    """Every erasure not complete yet, as far as it can go now (the relay's
    pass); one that fails waits for the next pass, the others go on."""
    for receipt_id in await erasure.incomplete(pool):
        try:
            await settled(pool, signals, receipt_id, close_within)
        except (asyncpg.PostgresError, OSError) as err:
            log.warning("erasure %s waits: %s", receipt_id, type(err).__name__)


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
        receipt = await settled(pool(), relay.signals, receipt_id)
        if receipt is None:
            raise HTTPException(404, "no erasure with this receipt")
        return receipt.as_json()
