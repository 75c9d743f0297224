"""The ledger key: the one name of a message in the ledger
(`message_ledger.key`), at the providers (SendGrid's custom arg
`message_key`, Twilio's status callback URL) and in an operator's `orders
resend`. Built and read here only; pure, so the workflows, the HTTP service,
the CLI, the benchmarks and the tests all use it.

- an order's message: `<workflow id>:<kind>:<channel>`,
  e.g. `order-A1:dispatch_notice:sms`, once per order, kind and channel;
- the customer's journey's: `<workflow id>:<kind>:<occasion>:<channel>`,
  e.g. `customer-C1:win_back:win_back-2:email`, once per occasion;
- a case's (workflows/case_handling.py): `<case id>:<kind>:<channel>` for
  what goes once per case (`case-A1-1:case_acknowledgement:email`), and
  `<case id>:<kind>:<occasion>:<channel>` for what goes once per round or
  escalation (`case-A1-1:case_outcome:round-2:email`,
  `case-A1-1:case_escalated:escalation-1:email`);
- the WOCAS report's mail to a lead (workflows/wocas_report.py):
  `wocas-report:<period end>:<days>d:lead-<digest of the address>:email`,
  once per period and lead (report_mail_key), no address in the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from workflows.models import Channel, Touchpoint, customer_workflow_id, workflow_id_for

CUSTOMER_PREFIX = customer_workflow_id("")
CASE_PREFIX = "case-"


@dataclass(frozen=True)
class LedgerKey:
    workflow_id: str
    kind: Touchpoint
    channel: Channel
    # What makes a customer's message one of a kind ("loyal", "win_back-2");
    # None for an order's messages.
    occasion: str | None = None

    @classmethod
    def of_order(cls, order_id: str, kind: Touchpoint | str, channel: Channel | str) -> LedgerKey:
        return cls(workflow_id_for(order_id), Touchpoint(kind), Channel(channel))

    @classmethod
    def of_case(cls, case_id: str, kind: Touchpoint, occasion: str | None = None) -> LedgerKey:
        """A case's message: email only, to the customer or to staff."""
        return cls(case_id, kind, Channel.EMAIL, occasion)

    @staticmethod
    def order_prefix(order_id: str) -> str:
        """What every key of the order's messages starts with."""
        return f"{workflow_id_for(order_id)}:"

    @classmethod
    def parse(cls, key: str) -> LedgerKey:
        """Raises ValueError, naming what is wrong, for a key we never build."""
        head, _, channel = key.rpartition(":")
        of_customer, of_case = head.startswith(CUSTOMER_PREFIX), head.startswith(CASE_PREFIX)
        parts = head.rsplit(":", 1 if not (of_customer or of_case) else 2)
        shapes = {3} if of_customer else {2, 3} if of_case else {2}
        if len(parts) not in shapes or not all(parts):
            shape = "workflow id:kind:occasion:channel" if of_customer else "workflow id:kind:channel"
            if of_case:
                shape += " or case id:kind:occasion:channel"
            raise ValueError(f"{key!r} is not a ledger key: expected {shape}")
        workflow_id, kind, occasion = parts if len(parts) == 3 else (*parts, None)
        try:
            return cls(workflow_id, Touchpoint(kind), Channel(channel), occasion)
        except ValueError:
            raise ValueError(f"{key!r} is not a ledger key: no touchpoint {kind!r} by channel {channel!r}") from None

    def on(self, channel: Channel) -> LedgerKey:
        """The same message's key on another channel."""
        return LedgerKey(self.workflow_id, self.kind, channel, self.occasion)

    def __str__(self) -> str:
        parts = [self.workflow_id, self.kind.value, *([self.occasion] if self.occasion is not None else []), self.channel.value]
        return ":".join(parts)


def report_mail_key(period_end: datetime, days: int, lead_email: str) -> str:
    """The WOCAS report's mail to one lead for one period: a staff mail, no
    order's, so not a LedgerKey. The address is digested: keys go in logs."""
    lead = hashlib.sha256(lead_email.strip().lower().encode()).hexdigest()[:12]
    return f"wocas-report:{period_end:%Y-%m-%d}:{days}d:lead-{lead}:email"
