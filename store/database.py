"""Connection pool and schema migrations."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources

import asyncpg

from store.erasure_salt import adopt as adopt_erasure_salt
from store.erasure_salt import use as use_erasure_salt

log = logging.getLogger(__name__)

# Any constant shared by every worker: pg_advisory_lock serialises concurrent
# start-ups so only one applies each migration.
MIGRATION_LOCK_ID = 0x0D_E7_11_FE


async def create_pool(
    database_url: str,
    *,
    erasure_salt: str | None = None,
    max_size: int = 10,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    """`erasure_salt` (store/erasure_salt.py) is needed by every pool that
    sends or forgets: without it, the hashing of an erased customer's
    address fails, loudly. `init`: also run on each new connection (a
    test's query logger)."""

    async def each_new_connection(conn: asyncpg.Connection) -> None:
        if erasure_salt is not None:
            await use_erasure_salt(conn, erasure_salt)
        if init is not None:
            await init(conn)

    return await asyncpg.create_pool(
        database_url, min_size=1, max_size=max_size, init=each_new_connection, reset=_keep_session
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Our queries leave no session state behind (no SET, LISTEN, cursors or
    advisory locks on pooled connections), so a returned connection skips the
    default RESET ALL round trip, which would also clear the erasure salt set
    once per connection. The pool still rolls back an open transaction."""


async def migrate(database_url: str, erasure_salt: str | None = None) -> list[str]:
    """Apply pending migrations in order; returns the names applied. With
    `erasure_salt`, then adopt it (store/erasure_salt.py: checked against the
    database's, migration 018's hashes re-hashed) under the same lock."""
    scripts = sorted(
        (f for f in resources.files("store").joinpath("migrations").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    conn = await asyncpg.connect(database_url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for script in scripts:
            if script.name in done:
                continue
            async with conn.transaction():
                await conn.execute(script.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", script.name)
            log.info("applied migration %s", script.name)
            applied.append(script.name)
        if erasure_salt is not None:
            rehashed = await adopt_erasure_salt(conn, erasure_salt)
            if any(rehashed.values()):
                log.info("erasure hashes re-hashed with ERASURE_SALT: %s", rehashed)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        await conn.close()
    return applied
