"""Typed search-attribute keys shared by the workflow, the starter and the
run command that registers them."""

from temporalio.common import SearchAttributeKey

ORDER_STATUS = SearchAttributeKey.for_keyword("OrderStatus")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
NEEDS_ATTENTION = SearchAttributeKey.for_bool("NeedsAttention")

ALL = (ORDER_STATUS, CUSTOMER_ID, NEEDS_ATTENTION)
