"""Retry policies and timeouts of the activities workflows call."""

from datetime import timedelta

from temporalio.common import RetryPolicy

# Retries are billed per attempt. Doubling from 1 s to at most 15 min apart
# costs about 14 attempts for an hour's outage and 100 for a day (the
# schedule-to-close cap), against 300 a day at 5 min apart; while one channel
# is down the other still goes at once, so the longer wait after recovery
# delays only the channel that was down.
SEND_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=15))
SEND_TIMEOUTS = dict(start_to_close_timeout=timedelta(seconds=60), schedule_to_close_timeout=timedelta(days=1))
# The database is needed to go on at all, so these retry without end, at most
# 6 times an hour once PostgreSQL has been away for 10 minutes.
DB_TIMEOUTS = dict(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=10)),
)
