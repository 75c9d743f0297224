"""MessageResend: an operator's `orders resend KEY` (starter/operator.py).

The send runs as any other: the send_message activity on the worker, which
holds the providers' credentials, through the ledger (mode RESEND: a failed
or in-doubt row is claimed and sent once; an in-doubt one is first looked up
where the provider can tell). One workflow per ledger key at a time, so an
operator's double run attaches to the same send. The order's workflow (or,
for a message of the customer's journey, the customer's), if it still runs,
is told the outcome, so its status, flags and timeline follow; a finished
order's view stays as it ended, and the ledger has the outcome.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.messaging import MessagingActivities
    from workflows import sending
    from workflows.models import MessageOutcome, MessageRequest, SendMode, customer_workflow_id, workflow_id_for
    from workflows.retries import SEND_RETRY, SEND_TIMEOUTS

RESEND_WORKFLOW_TYPE = "MessageResend"
TELL_THE_CUSTOMER = "resend-tells-the-customer"


def resend_workflow_id(key: str) -> str:
    return f"resend-{key}"


@workflow.defn(name=RESEND_WORKFLOW_TYPE)
class MessageResend:
    @workflow.run
    async def run(self, request: MessageRequest) -> MessageOutcome:
        outcome = await self._send(request.model_copy(update={"mode": SendMode.RESEND}))
        # The resend itself got no answer: settled like any mail in doubt.
        outcome = await sending.settle_in_doubt(
            outcome, lambda: self._send(request.model_copy(update={"mode": SendMode.SETTLE})), lambda: False
        )
        if request.order_id is not None:
            await self._tell(workflow_id_for(request.order_id), outcome)
        # Patched: a resend that finished before customers were told replays as it ran.
        elif request.customer_id is not None and workflow.patched(TELL_THE_CUSTOMER):
            await self._tell(customer_workflow_id(request.customer_id), outcome)
        return outcome

    @staticmethod
    async def _tell(workflow_id: str, outcome: MessageOutcome) -> None:
        try:
            await workflow.get_external_workflow_handle(workflow_id).signal("message_resent", outcome)
        except FailureError:
            workflow.logger.info("the message's workflow is over; the ledger holds the resend's outcome")

    @staticmethod
    async def _send(request: MessageRequest) -> MessageOutcome:
        return await workflow.execute_activity_method(
            MessagingActivities.send_message, request, retry_policy=SEND_RETRY, **SEND_TIMEOUTS
        )
