"""Consent changes told to the customer's workflow, best effort: PostgreSQL
is the truth and consent is read again at send time, so a signal that cannot
be delivered loses nothing."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, Mapping

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from worker import connect_temporal
from workflows.models import customer_workflow_id

log = logging.getLogger(__name__)

SIGNAL = "consent_changed"
# Short: a request must not wait out the SDK's long default retries while
# Temporal is down.
CONNECT_TIMEOUT = 5.0
RPC_TIMEOUT = timedelta(seconds=5)


class ConsentSignals:
    def __init__(self, temporal_env: Mapping[str, str], client: Client | None = None, runtime: Runtime | None = None) -> None:
        self._env = temporal_env
        self._client = client
        self._runtime = runtime
        self._connecting = asyncio.Lock()

    async def _connected(self) -> Client:
        # Lazily, so the service starts and records consent while Temporal is down.
        async with self._connecting:
            if self._client is None:
                self._client = await asyncio.wait_for(connect_temporal(self._env, self._runtime), CONNECT_TIMEOUT)
        return self._client

    async def send(self, customer_id: str, payload: dict[str, Any]) -> None:
        workflow_id = customer_workflow_id(customer_id)
        try:
            client = await self._connected()
            await client.get_workflow_handle(workflow_id).signal(SIGNAL, payload, rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                log.info("%s not signalled: no running workflow (consent is read at send time)", workflow_id)
            else:
                log.warning("%s not signalled: Temporal answered %s", workflow_id, err.status.name)
        except Exception as err:  # noqa: BLE001 - unreachable, refused, timed out: the change is already stored
            log.warning("%s not signalled: Temporal unreachable (%s)", workflow_id, type(err).__name__)
