"""Typed search-attribute keys shared by the workflow, the starter and the
run command that registers them."""

import asyncio
from typing import Any, Callable

from temporalio import workflow
from temporalio.common import SearchAttributeKey

ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
CUSTOMER_PHASE = SearchAttributeKey.for_keyword("CustomerPhase")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
NEEDS_ATTENTION = SearchAttributeKey.for_bool("NeedsAttention")
CASE_STATUS = SearchAttributeKey.for_keyword("CaseStatus")
CASE_OWNER = SearchAttributeKey.for_keyword("CaseOwner")

# Kept by each order's workflow, each customer's, and each case's.
ORDER = (ORDER_STATUS, CUSTOMER_ID, NEEDS_ATTENTION)
CUSTOMER = (CUSTOMER_ID, CUSTOMER_PHASE)
CASE = (CASE_STATUS, CASE_OWNER)
ALL = (*ORDER, CUSTOMER_PHASE, *CASE)


class Keeper:
    """Keeps a workflow's search attributes as `wanted()` says, with one
    upsert for all the changes of a workflow task: each upsert is billed, and
    changes often come together (a flag and a status)."""

    def __init__(self, keys: tuple[SearchAttributeKey, ...], wanted: Callable[[], dict[Any, Any]]) -> None:
        given = workflow.info().typed_search_attributes
        self._upserted: dict[Any, Any] = {key: given.get(key) for key in keys}
        self._wanted = wanted
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Keep them for the life of the run."""
        self._task = asyncio.create_task(self._keep())

    def stop(self) -> None:
        """The run ends: the last changes go now."""
        self._task.cancel()
        self.flush()

    async def _keep(self) -> None:
        while True:
            await workflow.wait_condition(lambda: self._wanted() != self._upserted)
            # Let the task's other coroutines make their changes first.
            await asyncio.sleep(0)
            self.flush()

    def flush(self) -> None:
        wanted = self._wanted()
        changed = [key.value_set(value) for key, value in wanted.items() if self._upserted.get(key) != value]
        if changed:
            workflow.upsert_search_attributes(changed)
        self._upserted = wanted
