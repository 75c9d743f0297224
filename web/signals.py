"""Signals from the HTTP service to workflows, sent after PostgreSQL has
the change. A workflow that is not running has nothing to act on it with,
which is no failure: consent is read at send time, and an order that has
finished sends nothing more. Temporal out of reach is told to the caller.

The signals provider reports owe orders, and those what customers submit
owes (feedback, a case a vote opens), are kept in PostgreSQL with the
report (store/provider_events.py) and delivered by OwedSignals: at
once, and again, with backoff, while Temporal is away, and by whichever
replica starts or sweeps next when the process stopped in between. So a
report that was answered 200 always reaches its order; a repeat is harmless
to the order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any, Mapping

import asyncpg
from temporalio.api.enums.v1 import ResourceExhaustedCause, ResourceExhaustedScope
from temporalio.api.errordetails.v1 import ResourceExhaustedFailure
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import MetricMeter, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from codec import DataKeyShredded
from store import provider_events
from worker import connect_temporal
from workflows.models import TASK_QUEUE

log = logging.getLogger(__name__)

SIGNALS_SENT = "orders_web_signals"
OWED_SIGNALS = "orders_web_owed_signals"

# Short: a request must not wait out the SDK's long default retries while
# Temporal is down.
CONNECT_TIMEOUT = 5.0
RPC_TIMEOUT = timedelta(seconds=5)


class SignalOutcome(Enum):
    """How a signal to a workflow went; its value labels orders_web_signals."""

    DELIVERED = "delivered"
    # Over (or never started): nothing to act on the signal.
    NOT_RUNNING = "not_running"
    # Temporal could not take it now (down, restarting, over the namespace's
    # limits): the relay waits, then tries this and the rest again.
    UNREACHABLE = "unreachable"
    # Temporal refused this signal, or this one workflow could not take it
    # now (over its own limits), or it could not be sent: the others go on,
    # and this one is tried again once its claim runs out.
    REFUSED = "refused"


# The answers of a Temporal that is away rather than refusing.
AWAY = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED})

# RESOURCE_EXHAUSTED for everyone: the namespace's or the cluster's limits.
# Any other (a busy workflow, one over its own limits) is about that workflow.
SHARED_SCOPES = frozenset({ResourceExhaustedScope.RESOURCE_EXHAUSTED_SCOPE_NAMESPACE, ResourceExhaustedScope.RESOURCE_EXHAUSTED_SCOPE_SYSTEM})
ONE_WORKFLOWS_CAUSES = frozenset(
    {ResourceExhaustedCause.RESOURCE_EXHAUSTED_CAUSE_UNSPECIFIED, ResourceExhaustedCause.RESOURCE_EXHAUSTED_CAUSE_BUSY_WORKFLOW}
)


def _temporal_away(err: RPCError) -> bool:
    if err.status is not RPCStatusCode.RESOURCE_EXHAUSTED:
        return err.status in AWAY
    for detail in err.grpc_status.details:
        failure = ResourceExhaustedFailure()
        if detail.Unpack(failure):
            return failure.scope in SHARED_SCOPES or failure.cause not in ONE_WORKFLOWS_CAUSES
    return False


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

    async def send(self, workflow_id: str, signal: str, payload: dict[str, Any]) -> SignalOutcome:
        return await self.deliver(provider_events.Signal(workflow_id, signal, payload))

    async def deliver(self, signal: provider_events.Signal) -> SignalOutcome:
        """Signals the running workflow, or starts the one it opens (its
        input the payload; an id already used, the workflow's own business)."""
        workflow_id = signal.workflow_id
        try:
            client = await self._connected()
            if signal.start_workflow:
                await client.start_workflow(
                    signal.start_workflow,
                    signal.payload,
                    id=workflow_id,
                    task_queue=TASK_QUEUE,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    rpc_timeout=RPC_TIMEOUT,
                )
            else:
                await client.get_workflow_handle(workflow_id).signal(signal.name, signal.payload, rpc_timeout=RPC_TIMEOUT)
        except WorkflowAlreadyStartedError:
            log.info("%s not started: it ran and is over", workflow_id)
            return SignalOutcome.NOT_RUNNING
        except DataKeyShredded:
            log.info("%s not signalled: its customer was erased and it is over", workflow_id)
            return SignalOutcome.NOT_RUNNING
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                log.info("%s not signalled: no running workflow", workflow_id)
                return SignalOutcome.NOT_RUNNING
            log.warning("%s not signalled: Temporal answered %s", workflow_id, err.status.name)
            return SignalOutcome.UNREACHABLE if _temporal_away(err) else SignalOutcome.REFUSED
        except (OSError, TimeoutError, RuntimeError) as err:  # no connection (the SDK's is a RuntimeError)
            log.warning("%s not signalled: Temporal unreachable (%s)", workflow_id, type(err).__name__)
            return SignalOutcome.UNREACHABLE
        except Exception as err:  # noqa: BLE001 - whatever it is, the report is stored and retried
            log.warning("%s not signalled: %s", workflow_id, type(err).__name__)
            return SignalOutcome.REFUSED
        return SignalOutcome.DELIVERED

    async def is_open(self, workflow_id: str) -> bool:
        """Whether the workflow's latest run is still running (a describe,
        no billed action); errors as Temporal gives them, NOT_FOUND aside."""
        try:
            description = await (await self._connected()).get_workflow_handle(workflow_id).describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status is WorkflowExecutionStatus.RUNNING

    async def terminate(self, workflow_id: str, reason: str) -> None:
        try:
            await (await self._connected()).get_workflow_handle(workflow_id).terminate(reason=reason, rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if err.status is not RPCStatusCode.NOT_FOUND:  # ended meanwhile
                raise


@dataclass(frozen=True)
class RelayTiming:
    """Seconds. Retries double from `first_retry` to `max_retry` while
    Temporal is away; `sweep_every` finds what another replica left owed."""

    first_retry: float = 1.0
    max_retry: float = 60.0
    sweep_every: float = 60.0
    batch: int = 100
    # How long a relay keeps what it took to deliver: a replica that died
    # with some leaves them to the others after this; a refused one waits it.
    claim_for: float = 60.0


class OwedSignals:
    """Delivers the signals recorded provider reports owe, oldest first."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        signals: Signals,
        timing: RelayTiming = RelayTiming(),
        meter: MetricMeter = MetricMeter.noop,
        after_each_pass: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self.signals = signals
        self._timing = timing
        # What else each pass does once the owed signals are out (erasures settle: web/erasures.py).
        self._after_each_pass = after_each_pass
        self._sent = meter.create_counter(SIGNALS_SENT, "Signals the HTTP service sent workflows for provider reports")
        self._still_owed = meter.create_gauge(OWED_SIGNALS, "Signals recorded provider reports still owe workflows")
        self._owed = asyncio.Event()
        # Temporal did not take the last one: posts leave theirs to the relay
        # rather than each waiting out the timeouts.
        self.temporal_away = False

    async def deliver(self, provider: str | None = None, event_ids: Sequence[str] | None = None) -> bool:
        """Deliver what is owed (of `event_ids` only, when given); False if
        Temporal was away, which leaves the rest to the relay. The rows are
        claimed, not locked, while Temporal is called."""
        timing = self._timing
        while True:
            async with self._pool().acquire() as conn:
                owed = await provider_events.claim_owed(conn, timing.batch, timing.claim_for, provider, event_ids)
            delivered, ended, left = [], [], []
            for n, item in enumerate(owed):
                outcome = await self.signals.deliver(item.signal)
                self._sent.add(1, {"signal": item.signal.name, "outcome": outcome.value})
                if outcome is SignalOutcome.UNREACHABLE:
                    left = owed[n:]
                    break
                if outcome is not SignalOutcome.REFUSED:
                    (ended if outcome is SignalOutcome.NOT_RUNNING else delivered).append(item)
            async with self._pool().acquire() as conn, conn.transaction():
                await provider_events.mark_signalled(conn, delivered, ended)
                await provider_events.release(conn, left)
            self.temporal_away = bool(left)
            if self.temporal_away:
                self._owed.set()
                return False
            if len(owed) < timing.batch:
                return True

    async def tell(self, provider: str, event_ids: Sequence[str]) -> None:
        """The orders of reports just committed: at once, unless Temporal is
        known to be away; what this cannot deliver, the relay does."""
        if self.temporal_away:
            self.leave_to_relay()
            return
        try:
            await self.deliver(provider, event_ids)
        except (OSError, asyncpg.PostgresError) as err:  # the reports are committed; the relay has them
            log.warning("owed signals left to the relay: %s", type(err).__name__)
            self.leave_to_relay()

    def leave_to_relay(self) -> None:
        self._owed.set()

    async def run(self) -> None:
        """Until cancelled: at start (a stopped process may have left some),
        when a delivery failed, and every sweep."""
        delay = self._timing.first_retry
        while True:
            self._owed.clear()
            try:
                delivered = await self.deliver()
                self._still_owed.set(await provider_events.count_owed(self._pool()))
            except Exception as err:  # noqa: BLE001 - PostgreSQL away, or a bug: the relay must go on
                log.warning("owed signals not delivered this pass: %s", type(err).__name__)
                delivered = False
            if delivered and self._after_each_pass:
                try:
                    await self._after_each_pass()
                except Exception as err:  # noqa: BLE001 - as above; the next pass tries again
                    log.warning("what follows the relay's pass failed: %s", type(err).__name__)
            if delivered:
                delay = self._timing.first_retry
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._owed.wait(), self._timing.sweep_every)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._timing.max_retry)
