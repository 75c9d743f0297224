"""What per-workflow data keys cost a payload (`python -m bench codec`):
bytes added, and CPU per encode and decode, against the shared master key.
The data key is cached after its first use (codec/data_keys.py), so the hot
path is one dictionary lookup more; the first use of a workflow's key costs a
round trip or two to PostgreSQL, shown apart."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import WorkflowSerializationContext

from bench.driver import bench_order
from codec import DataKeys, EncryptionCodec, new_key_entry, payload_keys_from_env
from starter.embedded import start_postgres, stop_postgres
from store.database import create_pool, migrate


def _per_call_us(seconds: list[float], batch: int) -> str:
    return f"{statistics.median(seconds) / batch * 1e6:.1f} µs"


async def measure(payloads: int) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="olc-"))
    url = start_postgres(state_dir / "pg")
    try:
        await migrate(url)
        pool = await create_pool(url, max_size=2)
        master = payload_keys_from_env({"PAYLOAD_ENCRYPTION_KEYS": new_key_entry("bench")})
        codec = EncryptionCodec(master, DataKeys(master, pool))
        order = pydantic_data_converter.payload_converter.to_payloads([bench_order(1, "codec")])[0]
        shared = codec
        own = codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id="order-bench-1"))
        [under_master] = await shared.encode([order])
        [under_data_key] = await own.encode([order])
        first_use = []
        for n in range(2, 22):
            started = time.perf_counter()
            await codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id=f"order-bench-{n}")).encode([order])
            first_use.append(time.perf_counter() - started)
        print(f"payload (an OrderInput): {order.ByteSize()} bytes plain")
        print(f"  sealed with the master key:   {under_master.ByteSize()} bytes (+{under_master.ByteSize() - order.ByteSize()})")
        print(f"  sealed with its data key:     {under_data_key.ByteSize()} bytes "
              f"(+{under_data_key.ByteSize() - under_master.ByteSize()} over the master key: the key id in the metadata)")
        print(f"  a workflow's first payload (its key made and stored): {statistics.median(first_use) * 1e3:.1f} ms (median of 20)")
        started = time.perf_counter()
        await EncryptionCodec(master, DataKeys(master, pool)).decode([under_data_key])
        print(f"  a process's first decode of a key (read and unwrapped): {(time.perf_counter() - started) * 1e3:.1f} ms")
        for name, sealing, sealed in (("master key", shared, under_master), ("data key", own, under_data_key)):
            encode, decode = [], []
            for _ in range(20):
                started = time.perf_counter()
                await sealing.encode([order] * payloads)
                encode.append(time.perf_counter() - started)
                started = time.perf_counter()
                await sealing.decode([sealed] * payloads)
                decode.append(time.perf_counter() - started)
            print(f"  {name:10}: encode {_per_call_us(encode, payloads)}, decode {_per_call_us(decode, payloads)} per payload (median of 20 x {payloads})")
        await pool.close()
    finally:
        stop_postgres(state_dir / "pg")
        shutil.rmtree(state_dir, ignore_errors=True)


def main(payloads: int) -> None:
    asyncio.run(measure(payloads))
