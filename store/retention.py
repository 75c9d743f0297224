"""Retention: what PostgreSQL keeps, for how long, and the statements that
remove the rest (applied daily by the retention schedule, workflows/retention.py;
`orders retention [--dry-run]`).

Each rule has a setting (a duration such as 90d, or `never`):

- RETENTION_LEDGER_RENDERINGS (90d): a ledger row's subject, bodies, headers
  and recipient are blanked (NULL, blanked_at set) once the row has not changed
  for that long. The row stays: its key's uniqueness keeps a late retry from
  sending twice. Rows still 'pending' or 'sending' are never blanked.
- RETENTION_PROVIDER_EVENTS (180d): provider reports and customers' answers
  are deleted once received that long ago, unless a workflow is still owed
  their signal.
- RETENTION_OUTBOX (30d): messages kept locally when no provider is configured.
- RETENTION_SMS_KEYWORDS (30d): the ids of inbound STOP/START messages
  already acted on. Twilio retries within hours; a signed request replayed
  after its id is gone would act again.

Every batch is one short transaction of at most `batch_size` rows, taken
oldest first through an index, `FOR UPDATE SKIP LOCKED`: a row a send or the
relay holds is left for the next batch or run, never waited for. One run at a
time: a session advisory lock, held by the connection running the batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from workflows.clock import parse_duration
from workflows.models import RetentionRequest, RetentionRule, RetentionTable

# Any constant no other advisory lock uses (store/database.py has the migrations').
RETENTION_LOCK_ID = 0x0D_E7_E7_10
DEFAULT_BATCH_SIZE = 1000
NEVER = "never"


@dataclass(frozen=True)
class Rule:
    table: RetentionTable
    setting: str
    default: timedelta
    removes: str  # what a run does to each row, for people
    # The rows past the cut-off ($1); the same words count them for a dry run.
    due: str
    # The statement applied to one batch: $1 the cut-off, $2 the batch size.
    batch: str


def _rule(table: RetentionTable, setting: str, days: int, removes: str, name: str, at: str, due: str, change: str) -> Rule:
    # The batch is found oldest first by `at`'s index, locked, then reached by
    # its rows' physical ids (a TID scan): `IN (subquery)` let the planner
    # join it against a scan of the whole table.
    chosen = f"SELECT ctid FROM {name} WHERE {due} ORDER BY {at} LIMIT $2 FOR UPDATE SKIP LOCKED"
    return Rule(table, setting, timedelta(days=days), removes, f"SELECT count(*) FROM {name} WHERE {due}",
                f"{change} WHERE ctid = ANY(ARRAY({chosen}))")


RULES = {
    rule.table: rule
    for rule in (
        _rule(
            RetentionTable.LEDGER_RENDERINGS, "RETENTION_LEDGER_RENDERINGS", 90,
            "message_ledger: subject, bodies, headers and recipient blanked (the row stays)",
            "message_ledger", "updated_at",
            "updated_at < $1 AND blanked_at IS NULL AND state NOT IN ('pending', 'sending')",
            "UPDATE message_ledger SET recipient = NULL, subject = NULL, body_text = NULL, body_html = NULL, "
            "headers = NULL, blanked_at = now()",
        ),
        _rule(
            RetentionTable.PROVIDER_EVENTS, "RETENTION_PROVIDER_EVENTS", 180,
            "provider_events: deleted, unless a workflow is still owed their signal",
            "provider_events", "received_at",
            "received_at < $1 AND (signal IS NULL OR signalled_at IS NOT NULL)",
            "DELETE FROM provider_events",
        ),
        _rule(
            RetentionTable.OUTBOX, "RETENTION_OUTBOX", 30, "outbox: deleted",
            "outbox", "created_at", "created_at < $1", "DELETE FROM outbox",
        ),
        _rule(
            RetentionTable.SMS_KEYWORDS, "RETENTION_SMS_KEYWORDS", 30, "sms_keywords_seen: deleted",
            "sms_keywords_seen", "received_at", "received_at < $1", "DELETE FROM sms_keywords_seen",
        ),
    )
}


class RetentionConfigError(ValueError):
    pass


def policy_from_env(env: Mapping[str, str]) -> RetentionRequest:
    """The rules as configured (a rule set to `never` is left out) and RETENTION_BATCH_SIZE."""
    rules = []
    for rule in RULES.values():
        raw = (env.get(rule.setting) or "").strip()
        if raw.lower() == NEVER:
            continue
        try:
            keep = parse_duration(raw) if raw else rule.default
        except ValueError:
            raise RetentionConfigError(f"{rule.setting}={raw!r} is neither a duration (e.g. 90d) nor 'never'") from None
        if keep < timedelta(days=1):
            raise RetentionConfigError(f"{rule.setting}={raw!r}: rows are kept at least a day (e.g. 1d), or 'never' removed")
        rules.append(RetentionRule(table=rule.table, keep=keep))
    raw_batch = (env.get("RETENTION_BATCH_SIZE") or str(DEFAULT_BATCH_SIZE)).strip()
    if not raw_batch.isdigit() or not 1 <= int(raw_batch) <= 100_000:
        raise RetentionConfigError(f"RETENTION_BATCH_SIZE={raw_batch!r} is not a whole number of rows from 1 to 100000")
    return RetentionRequest(rules=rules, batch_size=int(raw_batch))


async def due(db: asyncpg.Pool | asyncpg.Connection, table: RetentionTable, cutoff: datetime) -> int:
    """How many rows the rule would remove or blank now (a dry run: changes nothing)."""
    return await db.fetchval(RULES[table].due, cutoff)


class RetentionBusy(Exception):
    """Another run holds the retention lock."""


async def apply(
    pool: asyncpg.Pool, table: RetentionTable, cutoff: datetime, batch_size: int, progress: Callable[[int], None] = lambda n: None
) -> int:
    """Every row of the rule past `cutoff`, `batch_size` at a time, each batch
    its own transaction; `progress` hears the rows done after each. Returns
    the rows removed or blanked; raises RetentionBusy while another run applies."""
    statement, done = RULES[table].batch, 0
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_ID):
            raise RetentionBusy("another retention run is applying the policy")
        try:
            while True:
                changed = int((await conn.execute(statement, cutoff, batch_size)).split()[-1])
                done += changed
                progress(done)
                if changed < batch_size:
                    return done
        finally:
            # The pool keeps session state (store/database.py): the lock must not outlive the run.
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_ID)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()


async def dry_run(db: asyncpg.Pool | asyncpg.Connection, policy: RetentionRequest, now: datetime) -> list[str]:
    """What a run now would do, a line per rule: the cut-off and how many rows."""
    keep = {r.table: r.keep for r in policy.rules}
    lines = [f"Retention as of {now:%Y-%m-%d %H:%M:%S} UTC, in batches of {policy.batch_size}:"]
    for rule in RULES.values():
        if rule.table not in keep:
            lines.append(f"  {rule.table.value:<18} kept for ever ({rule.setting}=never)")
            continue
        cutoff = now - keep[rule.table]
        verb = "blank" if rule.table is RetentionTable.LEDGER_RENDERINGS else "delete"
        count = await due(db, rule.table, cutoff)
        lines.append(
            f"  {rule.table.value:<18} kept {keep[rule.table].days}d, before {cutoff:%Y-%m-%d %H:%M:%S}: "
            f"would {verb} {count} ({rule.removes})"
        )
    return lines
