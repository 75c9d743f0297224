"""CaseWorkflow: one per case, id `case-{order_id}-{n}` (service recovery:
no complaint without an owner).

Opened by a low rating or a complaint (the order's workflow, through the
open_case activity) or a "not helpful" vote with a comment (the HTTP
service), with the `CaseOpening` from store/cases.open_case as its only
input. Its first activity captures the routing (owner by seller, by
category, or the default team; the escalation chain; the SLAs), so a
configuration change never moves a running case. Then:

- the customer hears once that we heard them (`case_acknowledgement`), and
  the owner gets the case by email (`case_assigned`);
- the owner answers with the updates `case_acknowledged` {"by"} and
  `case_resolved` {"resolution", "by"}, whose validators reject an empty
  field or a case in the wrong state with the reason;
- not acknowledged within `sla` (or, acknowledged, not resolved within
  `resolve_within`): escalated to the next in the chain (team lead, then
  the next level), by email, with a new `sla`; past the last level the last
  owner is reminded every `remind_every`. The case never ends unresolved;
- resolved: the customer gets the outcome (`case_outcome`, with "Was this
  resolved?") and may answer "no" (`case_reopen_requested`) within
  `reopen_window`: the first "no" reopens the case once (round 2, the same
  owner, a new SLA), and the comment the customer sends after it (the "what
  was wrong" form) is kept with that round; a "no" after the next resolution
  is noted and changes nothing. The case ends when the window passes;
- its customer erased (signal `customer_erased`, store/erasure.py): the
  case is closed at once, whatever its state: it forgets the customer's
  words (the complaint, the reopen comment, the resolution, which staff
  mail would quote), records status 'closed' with the reason, sends
  nothing more (no escalation, reminder, outcome or acknowledgement) and
  ends; the updates are refused with the reason.

Each transition updates the `cases` row and, in one upsert, the search
attributes CaseStatus and CaseOwner. Customer mail goes through the ledger
as order mail does; staff mail through activities/staff_mail.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from activities.cases import CaseActivities
    from activities.messaging import MessagingActivities
    from workflows import search_attributes as sa
    from workflows import sending
    from workflows.event_rules import format_validation_error
    from workflows.ledger_key import LedgerKey
    from workflows.models import (
        CASE_WORKFLOW_TYPE,
        CUSTOMER_ERASED,
        CaseAcknowledged,
        CaseOpening,
        CaseRecord,
        CaseReopenRequested,
        CaseResolved,
        CaseRouting,
        CaseStatus,
        CaseView,
        Channel,
        DeliveryState,
        MessageOutcome,
        MessageRequest,
        SendMode,
        StaffNotice,
        Touchpoint,
    )
    from workflows.retries import DB_TIMEOUTS, SEND_RETRY, SEND_TIMEOUTS

# Customer mail is acknowledged and resolved in at most this many rounds:
# the first "not resolved" reopens the case, no later one does.
ROUNDS = 2

# Patch: a change that comes while another is being written, or with the SLA
# timer, is recorded, not lost or overwritten by an escalation (cases that ran
# before exited or escalated without it).
CHANGE_PENDING_RECORDED = "case-change-pending-recorded"
# Patch: the comment that follows the "no" which reopened the case is
# recorded (cases that ran before only noted it as a second "no").
REOPEN_COMMENT_RECORDED = "case-reopen-comment-recorded"


class CaseClosed(Exception):
    """Raised out of a wait once the case was closed (its customer erased)."""


def _parsed(model: type[BaseModel], raw: Any) -> Any:
    """The update's payload, or a ValueError saying what is wrong with it."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ValueError(format_validation_error(err)) from None


@workflow.defn(name=CASE_WORKFLOW_TYPE)
class CaseWorkflow:
    @workflow.init
    def __init__(self, opening: CaseOpening) -> None:
        self.opening = opening
        self.routing: CaseRouting | None = None
        self.status = CaseStatus.OPEN
        self.owner = ""
        self.level = 0
        self.escalations = 0
        self.sla_breaches = 0
        # The next deadline: to acknowledge (open, escalated) or to resolve (acknowledged).
        self.deadline: datetime | None = None
        self.acknowledged_at: datetime | None = None
        self.resolved_at: datetime | None = None
        self.resolution: str | None = None
        self.resolved_by: str | None = None
        self.round = 1
        self.reopen_requested = False
        self.reopened_at: datetime | None = None
        self.reopen_comment: str | None = None
        self.closed_reason: str | None = None
        self.timeline: list[str] = []
        # A handler changed the case: the run records it.
        self._changed = False
        self._mail: list[asyncio.Task] = []

    @workflow.run
    async def run(self, opening: CaseOpening) -> CaseView:
        self.routing = await workflow.execute_activity_method(CaseActivities.route_case, opening, **DB_TIMEOUTS)
        self.owner = self.routing.owner_for(opening)
        self.deadline = workflow.now() + self.routing.sla
        attributes = sa.Keeper(sa.CASE, lambda: {sa.CASE_STATUS: self.status.value, sa.CASE_OWNER: self.owner})
        attributes.start()
        self._note(f"opened by {opening.trigger}; owner {self.owner}")
        await self._record()
        self._tell_customer(Touchpoint.CASE_ACKNOWLEDGEMENT, None)
        self._tell_staff(Touchpoint.CASE_ASSIGNED, "round-1")
        with contextlib.suppress(CaseClosed):
            while True:
                await self._until_resolved()
                self._tell_customer(Touchpoint.CASE_OUTCOME, f"round-{self.round}", {"resolution": self.resolution})
                reopen = lambda: (self.reopen_requested and self.status is CaseStatus.RESOLVED) or self._closed()  # noqa: E731
                try:
                    await workflow.wait_condition(reopen, timeout=self.routing.reopen_window)
                except asyncio.TimeoutError:
                    break
                self._stop_if_closed()
                self._reopen()
                await self._record()
                self._tell_staff(Touchpoint.CASE_ASSIGNED, f"round-{self.round}")
        if self._closed():  # also when it closed as the reopen window passed
            await self._record()
        await asyncio.gather(*self._mail)
        await workflow.wait_condition(workflow.all_handlers_finished)
        attributes.stop()
        return self.view()

    async def _until_resolved(self) -> None:
        """Acknowledged, escalated, reminded, until resolved; each change recorded."""
        while self.status is not CaseStatus.RESOLVED:
            try:
                await workflow.wait_condition(
                    lambda: self._changed or self._closed(), timeout=max(self.deadline - workflow.now(), timedelta(0))
                )
            except asyncio.TimeoutError:
                self._stop_if_closed()
                # An answer that came with the timer is in time: it is not overwritten.
                if not (self._changed and workflow.patched(CHANGE_PENDING_RECORDED)):
                    self._escalate()
            self._stop_if_closed()
            self._changed = False
            await self._record()
        # A resolution that came while the last change was being written.
        if self._changed and workflow.patched(CHANGE_PENDING_RECORDED):
            self._changed = False
            await self._record()

    def _escalate(self) -> None:
        chain, routing = self.routing.escalation, self.routing
        self.sla_breaches += 1
        self.escalations += 1
        self.status = CaseStatus.ESCALATED
        if self.level < len(chain):
            self.level += 1
            self.owner = chain[self.level - 1]
            self.deadline = workflow.now() + routing.sla
            self._note(f"not answered in time: escalated to level {self.level}, {self.owner}")
        else:
            self.deadline = workflow.now() + routing.remind_every
            self._note(f"not answered in time: {self.owner} reminded (no level above)")
        self._tell_staff(Touchpoint.CASE_ESCALATED, f"escalation-{self.escalations}", {"level": self.level})

    def _reopen(self) -> None:
        self.round += 1
        self.reopen_requested = False
        self.status = CaseStatus.OPEN
        self.reopened_at = workflow.now()
        self.deadline = workflow.now() + self.routing.sla
        self.resolved_at = self.resolution = self.resolved_by = None
        self._note(f"reopened: the customer says it is not resolved; owner {self.owner}")

    def _closed(self) -> bool:
        return self.status is CaseStatus.CLOSED

    def _stop_if_closed(self) -> None:
        if self._closed():
            raise CaseClosed

    # --- side effects ----------------------------------------------------------

    async def _record(self) -> None:
        customer_erased = await workflow.execute_activity_method(CaseActivities.record_case, self._record_now(), **DB_TIMEOUTS)
        # The signal may never come: a case started after the erasure had no workflow to tell.
        # (None: recorded before the activity said.)
        if customer_erased:
            self._close(CUSTOMER_ERASED)

    def _tell_customer(self, kind: Touchpoint, occasion: str | None, details: dict[str, Any] | None = None) -> None:
        """Through the ledger, as order mail goes (the vote links come with it)."""
        if self._closed():
            return
        o = self.opening
        request = MessageRequest(
            key=str(LedgerKey.of_case(o.case_id, kind, occasion)),
            kind=kind,
            channel=Channel.EMAIL,
            customer_id=o.customer_id,
            order_id=o.order_id,
            details={"case_id": o.case_id, **(details or {})},
        )
        self._mail.append(asyncio.create_task(self._send_to_customer(request)))

    async def _send_to_customer(self, request: MessageRequest) -> None:
        try:
            outcome = await self._customer_send(request)
            outcome = await sending.settle_in_doubt(
                outcome, lambda: self._customer_send(request.model_copy(update={"mode": SendMode.SETTLE})), lambda: False
            )
        except ActivityError:
            self._note(f"{request.kind.value} could not be sent (see the ledger)")
            return
        self._note(f"{request.kind.value} to the customer: {outcome.state.value}")

    @staticmethod
    async def _customer_send(request: MessageRequest) -> MessageOutcome:
        return await workflow.execute_activity_method(
            MessagingActivities.send_message, request, retry_policy=SEND_RETRY, **SEND_TIMEOUTS
        )

    def _tell_staff(self, kind: Touchpoint, occasion: str, details: dict[str, Any] | None = None) -> None:
        if self._closed():
            return
        due = self.deadline.isoformat(timespec="minutes") if self.deadline and self.status is not CaseStatus.ACKNOWLEDGED else None
        notice = StaffNotice(
            key=str(LedgerKey.of_case(self.opening.case_id, kind, occasion)),
            kind=kind,
            to=self.owner,
            opening=self.opening,
            details={"due_at": due, **(details or {})},
        )
        self._mail.append(asyncio.create_task(self._send_to_staff(notice)))

    async def _send_to_staff(self, notice: StaffNotice) -> None:
        try:
            await workflow.execute_activity_method(
                CaseActivities.notify_staff, notice, retry_policy=SEND_RETRY, **SEND_TIMEOUTS
            )
        except ActivityError:
            self._note(f"{notice.kind.value} to {notice.to} could not be sent (see the ledger)")
            return
        self._note(f"{notice.kind.value} mailed to {notice.to}")

    def _note(self, what: str) -> None:
        self.timeline.append(f"{workflow.now().isoformat(timespec='seconds')} {what}")

    # --- updates, signal, query --------------------------------------------------

    @workflow.update
    def case_acknowledged(self, raw: Any) -> CaseView:
        ack = CaseAcknowledged.model_validate(raw)
        self.status = CaseStatus.ACKNOWLEDGED
        self.acknowledged_at = workflow.now()
        self.deadline = workflow.now() + self.routing.resolve_within
        self._changed = True
        self._note(f"acknowledged by {ack.by}")
        return self.view()

    @case_acknowledged.validator
    def _validate_acknowledged(self, raw: Any) -> None:
        _parsed(CaseAcknowledged, raw)
        self._open_for("acknowledged")
        if self.status is CaseStatus.ACKNOWLEDGED:
            raise ValueError(f"case {self.opening.case_id} is already acknowledged")

    @workflow.update
    def case_resolved(self, raw: Any) -> CaseView:
        resolved = CaseResolved.model_validate(raw)
        self.status = CaseStatus.RESOLVED
        self.resolved_at = workflow.now()
        self.resolution, self.resolved_by = resolved.resolution, resolved.by
        self.deadline = None
        self._changed = True
        self._note(f"resolved by {resolved.by}")
        return self.view()

    @case_resolved.validator
    def _validate_resolved(self, raw: Any) -> None:
        _parsed(CaseResolved, raw)
        self._open_for("resolved")

    def _open_for(self, what: str) -> None:
        if self._closed():
            raise ValueError(f"case {self.opening.case_id} is closed ({self.closed_reason}): it cannot be {what}")
        if self.routing is None:
            raise ValueError(f"case {self.opening.case_id} is still being opened: try again in a moment")
        if self.status is CaseStatus.RESOLVED:
            raise ValueError(f"case {self.opening.case_id} is already resolved: it cannot be {what}")

    @workflow.signal
    def case_reopen_requested(self, raw: Any) -> None:
        try:
            request = CaseReopenRequested.model_validate(raw)
        except ValidationError as err:
            workflow.logger.warning("rejected a case_reopen_requested signal: %d error(s)", err.error_count())
            return
        if self._closed():
            return
        if self.status is CaseStatus.RESOLVED and self.round < ROUNDS and not self.reopen_requested:
            self.reopen_requested = True
            self.reopen_comment = request.comment
        elif request.comment is not None and self.reopen_comment is None and self._reopening():
            # The "what was wrong" form, sent after the "no" click: the same "no".
            self.reopen_comment = request.comment
            self._note("the customer said what is not resolved")
            if not self.reopen_requested and workflow.patched(REOPEN_COMMENT_RECORDED):
                self._changed = True  # reopened already: the run records it
        else:
            self._note("the customer says it is not resolved again: noted, the case is not reopened a second time")

    @workflow.signal
    def customer_erased(self, _: Any = None) -> None:
        """The customer was forgotten (store/erasure.py): the case closes now;
        the run records it and ends."""
        self._close(CUSTOMER_ERASED)

    def _close(self, reason: str) -> None:
        """Closed for good, forgetting the customer's words; nothing more is sent."""
        if self._closed():
            return
        self.status = CaseStatus.CLOSED
        self.closed_reason = reason
        self.opening = self.opening.model_copy(update={"text": None})
        self.resolution = self.reopen_comment = None
        self._note(f"closed: {reason}; nothing more is sent")

    def _reopening(self) -> bool:
        """The "no" that reopens the case came, and the round it opened is not resolved yet."""
        return self.reopen_requested or (self.reopened_at is not None and self.status is not CaseStatus.RESOLVED)

    @workflow.query
    def status(self) -> CaseView:
        return self.view()

    def _record_now(self) -> CaseRecord:
        awaits_acknowledgement = self.status in (CaseStatus.OPEN, CaseStatus.ESCALATED)
        return CaseRecord(
            case_id=self.opening.case_id,
            status=self.status,
            owner=self.owner,
            escalation_level=self.level,
            due_at=self.deadline if awaits_acknowledgement else None,
            acknowledged_at=self.acknowledged_at,
            resolved_at=self.resolved_at,
            resolution=self.resolution,
            resolved_by=self.resolved_by,
            reopened_at=self.reopened_at,
            reopen_comment=self.reopen_comment,
            sla_breaches=self.sla_breaches,
            closed_reason=self.closed_reason,
        )

    def view(self) -> CaseView:
        return CaseView(
            **self._record_now().model_dump(),
            order_id=self.opening.order_id,
            trigger=self.opening.trigger,
            reopened=self.reopened_at is not None,
            timeline=self.timeline,
        )
