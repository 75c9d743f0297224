"""Timers, waiting and continuing as new, for both workflows.

Every wait ends at a moment kept in the workflow's state, so a run that
continues as new picks up where the last one stood. Each timer is billed,
so none is started for a moment already reached, and a wait that wakes
early keeps its timer:

- `Deadlines` (an order): one timer per deadline, however often the wait
  around it wakes; cancelled together when a stage is over;
- `NextMoment` (a customer): one pending timer, kept while it fires no later
  than the moment waited for; when it fires early the caller waits again, so
  a customer ordering every week costs one timer per lapse period.

A run hands over to the next (`continue_as_new`) long before its history
is large; its lanes hand their messages over with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from temporalio import workflow

if TYPE_CHECKING:
    from pydantic import BaseModel

    from workflows import search_attributes as sa
    from workflows.lanes import Lanes


class ContinueAsNewDue(Exception):
    """Raised out of a wait when this run's history is long enough."""


class CustomerErased(Exception):
    """Raised out of a wait once the customer was forgotten (signal
    `customer_erased`, store/erasure.py): the workflow ends, sending nothing more."""


class Deadlines:
    """One timer per deadline; `cancel` when they no longer matter."""

    def __init__(self) -> None:
        self._timers: dict[datetime, asyncio.Task] = {}

    def timer(self, moment: datetime | None) -> asyncio.Task | None:
        if moment is None:
            return None
        if moment not in self._timers:
            self._timers[moment] = asyncio.create_task(workflow.sleep(moment - workflow.now()))
        return self._timers[moment]

    def cancel(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class NextMoment:
    """One pending timer, kept while it fires no later than the moment asked
    for; a wait without a moment still wakes when it fires."""

    def __init__(self) -> None:
        self._pending: tuple[datetime, asyncio.Task] | None = None

    def timer(self, moment: datetime | None) -> asyncio.Task | None:
        if moment is not None and (self._pending is None or self._pending[1].done() or self._pending[0] > moment):
            self._pending = (moment, asyncio.create_task(workflow.sleep(moment - workflow.now())))
        return self._pending[1] if self._pending and not self._pending[1].done() else None


class Waits:
    """A workflow's waits: for a condition, until a moment, while its lanes
    run and its history stays short enough."""

    def __init__(
        self,
        timer: Callable[[datetime | None], asyncio.Task | None],
        lanes: Lanes,
        continue_as_new_after: Callable[[], int],
    ) -> None:
        self._timer = timer
        self._lanes = lanes
        # Read at each check: tests lower it on a running workflow.
        self._continue_as_new_after = continue_as_new_after
        # Set by the signal `customer_erased`; a history without it waits as before.
        self.customer_erased = False

    def continue_as_new_due(self) -> bool:
        info = workflow.info()
        return info.get_current_history_length() > self._continue_as_new_after() or info.is_continue_as_new_suggested()

    async def until(self, condition: Callable[[], Any], moment: datetime | None = None) -> bool:
        """Wait for `condition`; False once `moment` passes first. Raises
        ContinueAsNewDue when this run's history has grown long,
        CustomerErased once the customer was forgotten, and what a
        lane died of (a bug, an undecodable result), visibly, instead of
        leaving its messages queued for ever."""
        # Already there, or too late: no timer.
        if condition():
            return True
        if moment is not None and moment <= workflow.now():
            return False
        timer = self._timer(moment)
        await workflow.wait_condition(
            lambda: bool(condition())
            or (timer is not None and timer.done())
            or self.continue_as_new_due()
            or self._lanes.failure() is not None
            or self.customer_erased
        )
        self._lanes.raise_failure()
        if self.customer_erased:
            raise CustomerErased
        if condition():
            return True
        if timer is not None and timer.done():
            return False
        raise ContinueAsNewDue


async def pause_until(moment: datetime, withdrawn: Callable[[], bool]) -> None:
    """One durable timer; raises CancelledError if `withdrawn` first."""
    try:
        await workflow.wait_condition(withdrawn, timeout=moment - workflow.now())
    except asyncio.TimeoutError:
        return
    raise asyncio.CancelledError


async def continue_as_new(
    lanes: Lanes, attributes: sa.Keeper, carried: Callable[[], BaseModel], awaited: Sequence[Awaitable[Any]] = ()
) -> NoReturn:
    """Hand the workflow to a fresh run. A send waiting for a retry is
    withdrawn and stays first in its queue; the next run sends it under the
    same ledger key. An attempt already running is let finish. `awaited`
    (signals to other workflows) and the handlers finish first; `carried` is
    the state the next run starts from."""
    await lanes.close()
    await asyncio.gather(*awaited)
    await workflow.wait_condition(workflow.all_handlers_finished)
    attributes.flush()
    workflow.continue_as_new(carried().model_dump(mode="json"))
