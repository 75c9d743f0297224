"""Signals from the HTTP service to workflows, sent after PostgreSQL has
the change. A workflow that is not running has nothing to act on it with,
which is no failure: consent is read at send time, and an order that has
finished sends nothing more. Temporal out of reach is told to the caller."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, Mapping

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from worker import connect_temporal

log = logging.getLogger(__name__)

# Short: a request must not wait out the SDK's long default retries while
# Temporal is down.
CONNECT_TIMEOUT = 5.0
RPC_TIMEOUT = timedelta(seconds=5)


class Signals:
    def __init__(self, temporal_env: Mapping[str, str], client: Client | None = None, runtime: Runtime | None = None) -> None:
        self._env = temporal_env
        self._client = client
        self._runtime = runtime
        self._connecting = asyncio.Lock()

    async def _connected(self) -> Client:
        # Lazily, so the service starts and records what it is told while Temporal is down.
        async with self._connecting:
            if self._client is None:
                self._client = await asyncio.wait_for(connect_temporal(self._env, self._runtime), CONNECT_TIMEOUT)
        return self._client

    async def send(self, workflow_id: str, signal: str, payload: dict[str, Any]) -> bool:
        """True once the workflow has the signal or is not running; False
        when Temporal could not take it, so the caller may try again."""
        try:
            client = await self._connected()
            await client.get_workflow_handle(workflow_id).signal(signal, payload, rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                log.info("%s not signalled: no running workflow", workflow_id)
                return True
            log.warning("%s not signalled: Temporal answered %s", workflow_id, err.status.name)
            return False
        except Exception as err:  # noqa: BLE001 - unreachable, refused, timed out: the change is already stored
            log.warning("%s not signalled: Temporal unreachable (%s)", workflow_id, type(err).__name__)
            return False
        return True
