"""The erasure salt: the secret that erased customers' suppressed addresses
and numbers, and their ids in the erasure log, are hashed with
(store/erasure.py, the send-time check in store/consent.py).

It comes from configuration, never from the database: ERASURE_SALT, or
ERASURE_SALT_FILE naming a file that holds it; at least 16 characters, and
the same for every process that sends or forgets (worker, HTTP service,
`orders forget`). `orders up` makes one in its data dir
(.orders-data/erasure-salt), as it does the codec server's token.
PostgreSQL gets it as a setting of each pooled connection's session
(store/database.py create_pool), so it is in no table, dump or backup: a
dump alone cannot test a guessed phone number against a hash.

Migration 018 kept a random salt in the table `erasure_salt`, beside the
hashes. Those hashes are not lost (re-hashing from the clear value is
impossible: it is gone): the hash is now keyed over the 018 one,
erasure_keyed(erasure_hash_018(kind, value)) (migration 020), so each
stored 018 hash is re-hashed in place, once, by the first start-up that has
ERASURE_SALT (`adopt`, under the migration lock). The 018 salt stays, now
harmless: without ERASURE_SALT it tests nothing. The database keeps a check
value of the salt; a process started with another one refuses to start,
since it would miss an erased customer's STOP.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import asyncpg

from store.erasure import rows_changed

SALT_VARIABLE = "ERASURE_SALT"
SALT_FILE_VARIABLE = "ERASURE_SALT_FILE"
MIN_LENGTH = 16
# The session setting erasure_keyed reads (migration 020).
SETTING = "orders.erasure_salt"

USE = f"SELECT set_config('{SETTING}', $1, false)"

# A hash of migration 018's form: 'erased:' and 64 hex digits.
STORED_018 = "'^erased:[0-9a-f]{64}$'"
REHASH = {
    "suppressions": f"UPDATE suppressions SET recipient = erasure_keyed(recipient) WHERE recipient ~ {STORED_018}",
    "erasures": f"UPDATE erasures SET customer_hash = erasure_keyed(customer_hash) WHERE customer_hash ~ {STORED_018}",
}
# NULL: no salt adopted yet (migration 020 not applied, or no start-up with one since).
MISMATCH = "SELECT salt_check <> erasure_keyed('salt check') FROM erasure_salt"
KEEP_CHECK = "UPDATE erasure_salt SET salt_check = erasure_keyed('salt check') WHERE salt_check IS NULL"


class SaltError(ValueError):
    """The salt is missing, too short, or not the one this database's hashes were made with."""


def erasure_salt_from_env(env: Mapping[str, str]) -> str:
    if env.get(SALT_VARIABLE):
        salt = env[SALT_VARIABLE].strip()
    elif env.get(SALT_FILE_VARIABLE):
        try:
            salt = Path(env[SALT_FILE_VARIABLE]).read_text().strip()
        except OSError as err:
            raise SaltError(f"{SALT_FILE_VARIABLE}: cannot read {env[SALT_FILE_VARIABLE]} ({err.strerror})") from None
    else:
        raise SaltError(
            f"{SALT_VARIABLE} (or {SALT_FILE_VARIABLE}) is required: the secret erased customers' addresses and numbers "
            "are hashed with, the same for the worker, the HTTP service and `orders forget` "
            "(e.g. `openssl rand -hex 32`; `orders up` makes one in its data dir)"
        )
    if len(salt) < MIN_LENGTH:
        raise SaltError(f"{SALT_VARIABLE} must be at least {MIN_LENGTH} characters")
    return salt


async def use(conn: asyncpg.Connection, salt: str) -> None:
    """For this connection's session: what erasure_hash keys its hashes with,
    once checked against the database's. Raises SaltError for another salt."""
    await conn.execute(USE, salt)
    if await conn.fetchval(MISMATCH):
        raise SaltError(
            f"{SALT_VARIABLE} is not the one this database's erased customers were hashed with: "
            "with it, their suppressions (a STOP) would not be found; set the salt the other services use"
        )


async def adopt(conn: asyncpg.Connection, salt: str) -> dict[str, int]:
    """Checks `salt` against the one this database's hashes were made with
    (the first one is recorded) and re-hashes what migration 018 hashed;
    returns the rows re-hashed per table. Raises SaltError for another salt."""
    async with conn.transaction():
        await use(conn, salt)
        await conn.execute(KEEP_CHECK)
        return {table: rows_changed(await conn.execute(statement)) for table, statement in REHASH.items()}
