"""Per-workflow data keys, so a customer's Temporal history can be shredded.

Each workflow that holds a customer's data (`order-*`, `customer-*`,
`case-*`, `resend-*`: codec/encryption.py `holds_customer_data`) has its
payloads sealed with its own random AES-256 data key instead of the
namespace's master key. The data key lives in
PostgreSQL (`data_keys`, migration 019) wrapped by the current master key and
naming it, so a master key rotation keeps working: keys wrapped under an
older master key unwrap while that key is configured, and `rewrap` moves them
to the current one so the older key can be retired (`orders
rewrap-data-keys`). An erasure `shred`s the keys of the customer's workflows
once they are closed (web/erasures.py): the histories left on the Temporal
server until its retention can no longer be read by anyone.

Unwrapped keys are cached per process for `CACHE_TTL` seconds (at most
`CACHE_SIZE` of them), so a workflow task costs no round trip to PostgreSQL:
that TTL bounds how long a process that held a key before it was shredded
may still use it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Callable, Generic, TypeVar

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from codec.encryption import (
    DATA_KEY_ID_PREFIX,
    NONCE_BYTES,
    CodecConfigError,
    DataKeyShredded,
    PayloadDecryptionError,
    PayloadKeys,
    payload_keys_from_env,
)

CACHE_TTL = 60.0
CACHE_SIZE = 4096
# The codec's own connections when it is given a URL rather than a pool.
OWN_POOL_SIZE = 2

KEY_OF_WORKFLOW = "SELECT key_id, master_key_id, wrapped_key FROM data_keys WHERE workflow_id = $1"
# The workflow's key, made if it has none, in one round trip. Two processes
# may race to make it: one row wins, and the loser, given no row, reads it
# back. A workflow id that was shredded gets none.
KEY_OF_WORKFLOW_OR_NEW = """
WITH found AS (SELECT key_id, master_key_id, wrapped_key FROM data_keys WHERE workflow_id = $1),
made AS (
    INSERT INTO data_keys (key_id, workflow_id, master_key_id, wrapped_key)
    SELECT $2, $1, $3, $4
    WHERE NOT EXISTS (SELECT 1 FROM found)
      AND NOT EXISTS (SELECT 1 FROM data_keys WHERE workflow_hash = workflow_id_hash($1))
    ON CONFLICT (workflow_id) DO NOTHING
    RETURNING key_id, master_key_id, wrapped_key
)
SELECT * FROM found UNION ALL SELECT * FROM made
"""
KEY_BY_ID = "SELECT workflow_id, master_key_id, wrapped_key FROM data_keys WHERE key_id = $1"
# A tombstone for each workflow, whether or not it ever had a key, so that
# nothing more is written for it under a new one (until an erased customer
# returns: store/orders.py RECORD, `revived`).
SHRED = """
UPDATE data_keys SET wrapped_key = NULL, master_key_id = NULL, workflow_id = NULL,
    workflow_hash = workflow_id_hash(workflow_id), shredded_at = now()
WHERE workflow_id = ANY($1::text[])
"""
TOMBSTONES = """
INSERT INTO data_keys (key_id, workflow_hash, shredded_at)
SELECT 'none-' || gen_random_uuid(), h, now()
FROM (SELECT DISTINCT workflow_id_hash(w) AS h FROM unnest($1::text[]) w) t
WHERE NOT EXISTS (SELECT 1 FROM data_keys d WHERE d.workflow_hash = t.h)
"""
REWRAP_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('data_keys:rewrap'))"
# Under an older master key that is still configured: one no longer given
# is left, for whoever still has it.
UNDER_OLDER_MASTER = """
SELECT key_id, master_key_id, wrapped_key FROM data_keys
WHERE master_key_id = ANY($3::text[]) AND master_key_id <> $1 ORDER BY key_id LIMIT $2
"""
REWRAPPED = "UPDATE data_keys SET master_key_id = $3, wrapped_key = $4 WHERE key_id = $1 AND master_key_id = $2"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """These statements leave no session state, so a returned connection
    skips the pool's default reset: a round trip, and a transaction, each."""


def wrap(master: PayloadKeys, key_id: str, key: bytes) -> tuple[str, bytes]:
    """(master key id, nonce + sealed key); the data key id is bound in as associated data."""
    nonce = os.urandom(NONCE_BYTES)
    return master.encrypting_id, nonce + master.cipher(master.encrypting_id).encrypt(nonce, key, key_id.encode())


def unwrap(master: PayloadKeys, key_id: str, master_key_id: str, wrapped: bytes) -> bytes:
    try:
        return master.cipher(master_key_id).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], key_id.encode())
    except InvalidTag:
        raise PayloadDecryptionError(
            f"data key {key_id!r} does not unwrap with master key {master_key_id!r}: the configured key of that id "
            "is not the one that wrapped it"
        ) from None


V = TypeVar("V")


class _Cache(Generic[V]):
    """Bounded, each entry good for `ttl` seconds."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._ttl, self._size, self._clock = ttl, size, clock

    def has(self, name: str) -> bool:
        entry = self._entries.get(name)
        if entry is not None and entry[0] <= self._clock():
            del self._entries[name]
            return False
        return entry is not None

    def get(self, name: str) -> V | None:
        return self._entries[name][1] if self.has(name) else None

    def put(self, name: str, value: V) -> None:
        self._entries[name] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(name)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


class DataKeys:
    """The data keys of customers' workflows, from PostgreSQL: a pool, or a
    URL for which the codec opens its own small pool when first needed (and
    keeps for the process's life); None for a process that never touches a
    customer's workflow (a payload of one is then a clear error)."""

    def __init__(
        self,
        master: PayloadKeys,
        database: asyncpg.Pool | str | None,
        *,
        ttl: float = CACHE_TTL,
        size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.master = master
        self._pool = database if isinstance(database, asyncpg.Pool) else None
        self._url = database if isinstance(database, str) else None
        self._opening = asyncio.Lock()
        self._by_workflow: _Cache[tuple[str, AESGCM]] = _Cache(ttl, size, clock)
        # None for a key found shredded (for good).
        self._by_id: _Cache[AESGCM | None] = _Cache(ttl, size, clock)

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None and self._url is None:
            raise CodecConfigError(
                "DATABASE_URL is required: customers' workflows' payloads are sealed with data keys kept in PostgreSQL"
            )
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._url, min_size=0, max_size=OWN_POOL_SIZE, reset=_keep_session
                    )
        return self._pool

    async def for_workflow(self, workflow_id: str) -> tuple[str, AESGCM]:
        """The workflow's data key (id, cipher), made on first use."""
        cached = self._by_workflow.get(workflow_id)
        if cached is not None:
            return cached
        pool = await self.pool()
        key_id, key = DATA_KEY_ID_PREFIX + secrets.token_urlsafe(9), AESGCM.generate_key(256)
        row = await pool.fetchrow(KEY_OF_WORKFLOW_OR_NEW, workflow_id, key_id, *wrap(self.master, key_id, key))
        if row is None:
            row = await pool.fetchrow(KEY_OF_WORKFLOW, workflow_id)  # another process made it first
            if row is None:
                raise DataKeyShredded(
                    f"workflow {workflow_id}'s data key was shredded (its customer was erased): nothing more may be "
                    "written for it"
                )
        elif row["key_id"] == key_id:
            return self._remember(workflow_id, key_id, AESGCM(key))
        key = unwrap(self.master, row["key_id"], row["master_key_id"], row["wrapped_key"])
        return self._remember(workflow_id, row["key_id"], AESGCM(key))

    def _remember(self, workflow_id: str, key_id: str, cipher: AESGCM) -> tuple[str, AESGCM]:
        self._by_workflow.put(workflow_id, (key_id, cipher))
        self._by_id.put(key_id, cipher)
        return key_id, cipher

    async def cipher(self, key_id: str) -> AESGCM:
        """The cipher of a data key named in a payload; DataKeyShredded once erased."""
        if self._by_id.has(key_id):
            cipher = self._by_id.get(key_id)
        else:
            row = await (await self.pool()).fetchrow(KEY_BY_ID, key_id)
            if row is None:
                raise PayloadDecryptionError(
                    f"payload sealed with data key {key_id!r}, which is not in this database's data_keys: "
                    "DATABASE_URL is not the database of the workers that wrote it"
                )
            if row["wrapped_key"] is None:
                cipher = None
                self._by_id.put(key_id, None)
            else:
                # A worker reads a workflow's payloads, then writes its own:
                # one round trip serves both.
                cipher = self._remember(row["workflow_id"], key_id, AESGCM(unwrap(self.master, key_id, row["master_key_id"], row["wrapped_key"])))[1]
        if cipher is None:
            raise DataKeyShredded(f"payload sealed with data key {key_id!r}, shredded when its customer was erased")
        return cipher


def data_keys_from_env(env: Mapping[str, str]) -> DataKeys:
    """The master keys (PAYLOAD_ENCRYPTION_KEYS, required) and the database
    that holds the data keys (DATABASE_URL, required once a customer's
    workflow's payload is read or written)."""
    return DataKeys(payload_keys_from_env(env), env.get("DATABASE_URL") or None)


async def shred(conn: asyncpg.Connection, workflow_ids: Sequence[str]) -> int:
    """Destroy the workflows' data keys, leaving tombstones (a workflow that
    never had a key gets one too); how many keys were destroyed."""
    async with conn.transaction():
        destroyed = int((await conn.execute(SHRED, list(workflow_ids))).rsplit(" ", 1)[1])
        await conn.execute(TOMBSTONES, list(workflow_ids))
    return destroyed


async def rewrap(pool: asyncpg.Pool, master: PayloadKeys, batch: int = 500) -> int:
    """Re-wrap every data key under an older (configured) master key with
    the current one, so the older one can be retired; how many were. One
    process at a time: another's call returns 0 at once."""
    done = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(REWRAP_LOCK):
                return done
            rows = await conn.fetch(UNDER_OLDER_MASTER, master.encrypting_id, batch, master.ids)
            for row in rows:
                key = unwrap(master, row["key_id"], row["master_key_id"], row["wrapped_key"])
                await conn.execute(REWRAPPED, row["key_id"], row["master_key_id"], *wrap(master, row["key_id"], key))
        done += len(rows)
        if len(rows) < batch:
            return done
