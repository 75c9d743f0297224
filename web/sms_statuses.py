"""Twilio posts each status callback once: one lost to a 5xx, a restart or a
proxy that re-encoded its `key` is lost for good. So an SMS Twilio took
(ledger row 'sent') whose final status has not come
TWILIO_STATUS_LOOKUP_AFTER after it was sent is looked up in Twilio
(GET Messages/{Sid}, the official client's async fetch) and a final status
recorded exactly as if Twilio had posted it (store/provider_events.py):
the suppression, the order's `message_undelivered` and the relay follow.

A status not final yet (queued, sent...) is looked up again at doubling
intervals, and given up once the message is GIVE_UP_AFTER old: Twilio
settles a status within minutes, and says one older than 72 hours is
unlikely to change (a carrier that never reports leaves it `sent`).

Replicas claim the rows they look up for a while (as the relay claims
signals), so none looks up a message another one is looking up, and one that
died leaves its rows to the others when the claim runs out. It costs no
Temporal action but the signals the reports owe anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import asyncpg
from temporalio.common import MetricMeter
from twilio.base.exceptions import TwilioRestException

from providers.twilio import TwilioMessages
from store import provider_events
from web.config import WebConfig
from web.signals import OwedSignals

log = logging.getLogger(__name__)

LOOKUPS = "orders_web_sms_status_lookups"
GIVE_UP_AFTER = timedelta(hours=72)
# After these nothing more happens to a message.
FINAL = frozenset({*provider_events.TWILIO_DELIVERY, "canceled"})

# SMS Twilio took, with no final status, due for a look-up (first
# `lookup_after` after they were sent) and not claimed by another replica,
# oldest first; claimed by moving the next look-up past the claim.
CLAIM_DUE = """
UPDATE message_ledger l
SET status_lookup_at = now() + make_interval(secs => $4), status_lookups = l.status_lookups + 1
FROM (
    SELECT key FROM message_ledger
    WHERE provider = 'twilio' AND state = 'sent' AND delivery IS NULL AND provider_message_id IS NOT NULL
      AND sent_at > now() - make_interval(secs => $3)
      AND coalesce(status_lookup_at, sent_at + make_interval(secs => $2)) <= now()
    ORDER BY sent_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) due
WHERE l.key = due.key
RETURNING l.key, l.provider_message_id, l.status_lookups
"""

# Looked up again `$2` seconds from now, unless that is past the horizon:
# then never. True when given up.
LOOK_AGAIN = """
UPDATE message_ledger
SET status_lookup_at = CASE WHEN now() + make_interval(secs => $2) < sent_at + make_interval(secs => $3)
                            THEN now() + make_interval(secs => $2) ELSE 'infinity' END
WHERE key = $1
RETURNING status_lookup_at = 'infinity'
"""

NEVER_AGAIN = "UPDATE message_ledger SET status_lookup_at = 'infinity' WHERE key = $1"


@dataclass(frozen=True)
class LookupTiming:
    """Seconds. Each sweep looks up what is due, `batch` rows at a time,
    `at_once` of them concurrently, each batch claimed for `claim_for`."""

    sweep_every: float = 60.0
    batch: int = 50
    at_once: int = 4
    claim_for: float = 300.0


@dataclass(frozen=True)
class Due:
    key: str
    message_sid: str
    # This one included.
    lookups: int


class SmsStatuses:
    """Looks up the SMS whose final status Twilio's callback did not bring."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        config: WebConfig,
        relay: OwedSignals,
        timing: LookupTiming = LookupTiming(),
        meter: MetricMeter = MetricMeter.noop,
    ) -> None:
        self._pool = pool
        self._config = config
        self._relay = relay
        self._timing = timing
        self._looked_up = meter.create_counter(LOOKUPS, "SMS statuses the HTTP service looked up in Twilio, by result")

    @property
    def off_because(self) -> str | None:
        needed = {"TWILIO_ACCOUNT_SID": self._config.twilio_account_sid, "TWILIO_AUTH_TOKEN": self._config.twilio_auth_token}
        missing = [name for name, value in needed.items() if not value]
        return f"{' and '.join(missing)} not set" if missing else None

    async def run(self) -> None:
        """Until cancelled: a sweep at start, then every `sweep_every`."""
        if self.off_because:
            log.info("SMS status look-ups off: %s, so a lost Twilio status callback stays lost", self.off_because)
            return
        while True:
            try:
                await self.sweep()
            except Exception as err:  # noqa: BLE001 - PostgreSQL away, or a bug: the sweep must go on
                log.warning("SMS status look-ups failed this pass: %s", type(err).__name__)
            await asyncio.sleep(self._timing.sweep_every)

    async def sweep(self) -> int:
        """Look up every SMS due now; how many were looked up."""
        timing, looked_up = self._timing, 0
        twilio: TwilioMessages | None = None
        try:
            while True:
                async with self._pool().acquire() as conn:
                    rows = await conn.fetch(
                        CLAIM_DUE,
                        timing.batch,
                        self._config.twilio_status_lookup_after.total_seconds(),
                        GIVE_UP_AFTER.total_seconds(),
                        timing.claim_for,
                    )
                if not rows:
                    return looked_up
                twilio = twilio or self._twilio()  # most sweeps find nothing to look up
                at_once = asyncio.Semaphore(timing.at_once)

                async def look_up(due: Due) -> None:
                    async with at_once:
                        try:
                            await self._look_up(twilio, due)
                        except Exception as err:  # noqa: BLE001 - PostgreSQL away, or a bug: its claim runs out, and it is tried again
                            log.warning("SMS status of %s not looked up: %s", due.key, type(err).__name__)

                await asyncio.gather(*(look_up(Due(r["key"], r["provider_message_id"], r["status_lookups"])) for r in rows))
                looked_up += len(rows)
                if len(rows) < timing.batch:
                    return looked_up
        finally:
            if twilio:
                await twilio.close()

    def _twilio(self) -> TwilioMessages:
        c = self._config
        return TwilioMessages(c.twilio_account_sid, c.twilio_auth_token, base_url=c.twilio_api_base_url, timeout=c.provider_timeout)

    async def _look_up(self, twilio: TwilioMessages, due: Due) -> None:
        try:
            status, error_code = await twilio.status(due.message_sid)
        except TwilioRestException as err:
            if err.status == 404:  # deleted, or not this account's: nothing will tell
                await self._pool().execute(NEVER_AGAIN, due.key)
                self._count("not_found")
                log.warning("SMS status of %s not looked up again: Twilio does not know %s", due.key, due.message_sid)
                return
            await self._look_again(due, "failed", f"Twilio answered {err.status} ({err.code})")
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            await self._look_again(due, "failed", type(err).__name__)
            return
        if status in FINAL:
            await self._record(due, status, error_code)
        else:
            await self._look_again(due, "not_final", None)

    async def _record(self, due: Due, status: str, error_code: int | None) -> None:
        """As if Twilio had posted it: the same event, so the callback, if it
        comes after all, is a repeat."""
        event = provider_events.from_twilio(ledger_key=due.key, message_sid=due.message_sid, status=status, error_code=error_code)
        async with self._pool().acquire() as conn, conn.transaction():
            recorded = await provider_events.record(conn, event)
            await conn.execute(NEVER_AGAIN, due.key)
        self._count("final")
        log.info("Twilio status %s for %s looked up", status, due.key)
        if recorded.signal is not None:
            await self._relay.tell("twilio", [recorded.event_id])

    async def _look_again(self, due: Due, result: str, why: str | None) -> None:
        """At doubling intervals from `lookup_after`; never, past the horizon."""
        delay = self._config.twilio_status_lookup_after.total_seconds() * 2 ** (due.lookups - 1)
        given_up = await self._pool().fetchval(LOOK_AGAIN, due.key, delay, GIVE_UP_AFTER.total_seconds())
        self._count("gave_up" if given_up else result)
        if why:
            log.warning("SMS status of %s not looked up: %s", due.key, why)
        if given_up:
            log.info("SMS status of %s given up: no final status %g h after it was sent", due.key, GIVE_UP_AFTER / timedelta(hours=1))

    def _count(self, result: str) -> None:
        self._looked_up.add(1, {"result": result})
