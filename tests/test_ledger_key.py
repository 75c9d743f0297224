"""The ledger key, built and read in one place (workflows/ledger_key.py):
its two shapes stay as the ledger, the providers and operators know them."""

from __future__ import annotations

import pytest

from workflows.ledger_key import LedgerKey
from workflows.models import Channel, Touchpoint


def test_an_orders_key_and_a_customers_key_keep_their_shapes():
    order = LedgerKey.of_order("A1", "dispatch_notice", "sms")
    assert str(order) == "order-A1:dispatch_notice:sms"
    customer = LedgerKey("customer-C1", Touchpoint.WIN_BACK, Channel.EMAIL, occasion="win_back-2")
    assert str(customer) == "customer-C1:win_back:win_back-2:email"
    assert LedgerKey.order_prefix("A1") == "order-A1:"


@pytest.mark.parametrize(
    "key",
    [
        "order-A1:dispatch_notice:sms",
        "order-A.b_c-1:order_confirmation:email",
        "customer-C1:welcome:first-order:email",
        # A customer id from before ids were checked: ':' only splits from the right.
        "customer-a:b:loyalty_reward:loyal:sms",
    ],
)
def test_a_key_read_back_is_the_key_it_was_built_from(key: str):
    parsed = LedgerKey.parse(key)
    assert str(parsed) == key
    assert str(parsed.on(Channel.EMAIL)).rsplit(":", 1) == [key.rsplit(":", 1)[0], "email"]


def test_a_customers_key_names_its_occasion_and_an_orders_none():
    assert LedgerKey.parse("customer-C1:welcome:first-order:email").occasion == "first-order"
    assert LedgerKey.parse("order-A1:welcome:email").occasion is None


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("order-A1:no_such_kind:sms", "no touchpoint 'no_such_kind'"),
        ("order-A1:order_confirmation:fax", "by channel 'fax'"),
        ("order-A1:sms", "expected workflow id:kind:channel"),
        ("customer-C1:welcome:email", "expected workflow id:kind:occasion:channel"),
        ("", "expected workflow id:kind:channel"),
    ],
)
def test_a_key_we_never_build_is_refused_with_what_is_wrong(key: str, says: str):
    with pytest.raises(ValueError, match=f"is not a ledger key: .*{says}"):
        LedgerKey.parse(key)


@pytest.mark.parametrize(
    ("key", "kind", "occasion"),
    [
        ("case-A1-1:case_acknowledgement:email", Touchpoint.CASE_ACKNOWLEDGEMENT, None),
        ("case-A1-1:case_outcome:round-2:email", Touchpoint.CASE_OUTCOME, "round-2"),
        ("case-A-b.c-3:case_escalated:escalation-1:email", Touchpoint.CASE_ESCALATED, "escalation-1"),
    ],
)
def test_a_cases_key_names_the_case_its_touchpoint_and_its_round(key: str, kind: Touchpoint, occasion: str | None):
    """The coordinator's vote links find the case and the message by it."""
    parsed = LedgerKey.parse(key)
    assert (parsed.workflow_id, parsed.kind, parsed.occasion) == (key.split(":")[0], kind, occasion)
    assert str(parsed) == key
    assert LedgerKey.of_case(parsed.workflow_id, kind, occasion) == parsed
