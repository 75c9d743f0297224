"""MessageResend: an operator's `orders resend KEY` (starter/operator.py).

The send runs as any other: the send_message activity on the worker, which
holds the providers' credentials, through the ledger (mode RESEND: a failed
or in-doubt row is claimed and sent once; an in-doubt one is first looked up
where the provider can tell). One workflow per ledger key at a time, so an
operator's double run attaches to the same send. The order's workflow, if it
still runs, is told the outcome, so its status and flags follow; a finished
order's view stays as it ended, and the ledger has the outcome.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.messaging import MessagingActivities
    from workflows import sending
    from workflows.models import MessageOutcome, MessageRequest, SendMode, workflow_id_for
    from workflows.retries import SEND_RETRY, SEND_TIMEOUTS

RESEND_WORKFLOW_TYPE = "MessageResend"


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
            order = workflow.get_external_workflow_handle(workflow_id_for(request.order_id))
            try:
                await order.signal("message_resent", outcome)
            except FailureError:
                workflow.logger.info("the order's workflow is over; the ledger holds the resend's outcome")
        return outcome

    @staticmethod
    async def _send(request: MessageRequest) -> MessageOutcome:
        return await workflow.execute_activity_method(
            MessagingActivities.send_message, request, retry_policy=SEND_RETRY, **SEND_TIMEOUTS
        )
