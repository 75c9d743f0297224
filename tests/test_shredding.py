"""Crypto-shredding of Temporal history (codec/data_keys.py, web/erasures.py):
each customer's workflow seals its payloads with its own data key; an
erasure closes the customer's workflows (terminating one that does not end
by itself), then destroys their keys, and only then is complete; what the
Temporal server keeps of them can then be read by nobody, the codec server
showing "erased customer data"; master key rotation keeps working."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from datetime import timedelta

import asyncpg
import httpx
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.converter import WorkflowSerializationContext

from activities.messaging import MessagingActivities
from bench.history import payloads_in
from codec import KEYS_VARIABLE, DataKeys, DataKeyShredded, EncryptionCodec, PayloadKeys, payload_keys_from_env
from codec.data_keys import rewrap, shred, unwrap
from codec.encryption import decompress
from codec.server import CodecServerConfig, create_app
from store import consent, erasure
from store.cases import open_case
from tests.conftest import TEST_KEY_ENV, TEST_PAYLOAD_KEYS, new_order, store
from tests.test_cases import start_as_the_relay_does
from tests.test_consent_sending import order_message, send, sms_posts_to
from tests.test_exactly_once import logging_statements
from web.erasures import forget_and_tell, settle_open, settled
from web.signals import OwedSignals, RelayTiming, SignalOutcome, Signals
from workflows.models import CUSTOMER_ERASED, CaseView, Channel, DeliveryState, Touchpoint

pytestmark = pytest.mark.usefixtures("no_owed_signals_before", "no_owed_signals_left")

TOKEN = "codec-token-" + "y" * 20


async def every_key_still_held(pool: asyncpg.Pool, master: PayloadKeys) -> list[AESGCM]:
    """All master keys and every data key not shredded."""
    rows = await pool.fetch("SELECT key_id, master_key_id, wrapped_key FROM data_keys WHERE wrapped_key IS NOT NULL")
    return [master.cipher(i) for i in master.ids] + [
        AESGCM(unwrap(master, r["key_id"], r["master_key_id"], r["wrapped_key"])) for r in rows
    ]


def opened_with_any(payload: Payload, keys: list[AESGCM]) -> bytes | None:
    """The payload as its codec sealed it, inflated: what a key opens."""
    for key in keys:
        try:
            plain = key.decrypt(payload.data[:12], payload.data[12:], None)
        except (InvalidTag, ValueError):
            continue
        return decompress(plain, "any")
    return None


def readable_with(history: History, keys: list[AESGCM]) -> list[bytes]:
    """Everything of a raw history these keys can read."""
    readable = [history.SerializeToString()]
    for _, payload in payloads_in(history):
        if payload.metadata.get("encoding") == b"binary/encrypted":
            readable.append(opened_with_any(payload, keys) or b"")
    return readable


async def completed(pool: asyncpg.Pool, receipt_id: str) -> erasure.Receipt | None:
    receipt = await erasure.receipt(pool, receipt_id)
    return receipt if receipt and receipt.completed_at else None


async def wait_until(check, timeout: float = 60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return found


class LosingOneSignal(Signals):
    """Signals that never reach one workflow: a signal lost."""

    def __init__(self, lost_to: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lost_to = lost_to

    async def deliver(self, signal):
        if signal.workflow_id == self._lost_to:
            return SignalOutcome.NOT_RUNNING
        return await super().deliver(signal)


async def test_a_forgotten_customer_s_raw_history_holds_none_of_their_data_with_any_key_still_held(
    dev_env, make_harness, pool, fakes, provider_config
):
    """The erasure completes by itself (the relay's passes, no GET), after
    every workflow of the customer is closed: the order and the customer
    workflow end when told, the case (its signal lost here, as if it had
    been found over) is terminated once CLOSE_WITHIN is over. A second
    customer is unaffected; a STOP survives."""
    uid = uuid.uuid4().hex[:8]
    erased, kept = new_order(), new_order()
    erased["customer"]["name"] = f"Ada Shredded{uid}"
    erased["delivery"]["address"]["line1"] = f"Shredding Lane {uid}"
    complaint = f"My keyboard from {uid} arrived crushed, call me"
    customer_id = erased["customer"]["customer_id"]
    async with make_harness(dev_env) as h:
        a, b = await h.start(erased), await h.start(kept)
        await h.wait_touchpoint(a, "order_confirmation")
        await h.wait_touchpoint(b, "order_confirmation")
        async with pool.acquire() as conn:
            opening = await open_case(conn, order_id=erased["order_id"], trigger="complaint", trigger_key=uid, text=complaint)
            await consent.suppress(conn, Channel.SMS, erased["customer"]["phone"], reason="STOP keyword", source="sms_keyword")
        case = await start_as_the_relay_does(h, opening)
        await h.wait_for(case, lambda view: any("case_assigned mailed" in line for line in view.timeline), view_type=CaseView)

        signals = LosingOneSignal(case.id, {}, h.client)
        relay = OwedSignals(
            lambda: pool, signals, RelayTiming(sweep_every=0.2),
            after_each_pass=lambda: settle_open(pool, signals, close_within=timedelta(seconds=3)),
        )
        receipt = await forget_and_tell(pool, relay, customer_id, "dpo@shop.example")
        assert receipt.completed_at is None  # told, not closed yet
        sweeping = asyncio.create_task(relay.run())
        try:
            done = await wait_until(lambda: completed(pool, receipt.receipt_id))
        finally:
            sweeping.cancel()
        statuses = {w: (await h.client.get_workflow_handle(w).describe()).status for w in (a.id, f"customer-{customer_id}", case.id)}
        assert statuses == {
            a.id: WorkflowExecutionStatus.COMPLETED,
            f"customer-{customer_id}": WorkflowExecutionStatus.COMPLETED,
            case.id: WorkflowExecutionStatus.TERMINATED,
        }
        raw = await Client.connect(dev_env.client.service_client.config.target_host, namespace=dev_env.client.namespace)
        keys = await every_key_still_held(pool, TEST_PAYLOAD_KEYS)
        needles = [erased["customer"]["email"], erased["customer"]["phone"], erased["customer"]["name"],
                   erased["delivery"]["address"]["line1"], complaint]
        sealed = 0
        for workflow_id in (a.id, f"customer-{customer_id}", case.id):
            history = History(events=(await raw.get_workflow_handle(workflow_id).fetch_history()).events)
            sealed += sum(p.metadata.get("encoding") == b"binary/encrypted" for _, p in payloads_in(history))
            readable = readable_with(history, keys)
            assert [n for n in needles if any(n.encode() in r for r in readable)] == [], workflow_id
        assert sealed > 10
        # The same reading finds the second customer's data in theirs.
        kept_history = History(events=(await raw.get_workflow_handle(b.id).fetch_history()).events)
        assert any(kept["customer"]["email"].encode() in r for r in readable_with(kept_history, keys))
        # A terminated case is recorded closed too (not overdue in every report).
        assert tuple(await pool.fetchrow("SELECT status, closed_reason FROM cases WHERE case_id = $1", case.id)) == (
            "closed", CUSTOMER_ERASED)
        assert done.erased["data_keys"] == 3
        assert await pool.fetchval("SELECT count(*) FROM data_keys WHERE workflow_id = ANY($1)", [a.id, f"customer-{customer_id}", case.id]) == 0

        # The second customer's order runs on, its payloads still decode.
        assert (await h.wait_touchpoint(b, "order_confirmation")).status
        history = History(events=(await raw.get_workflow_handle(b.id).fetch_history()).events)
        opened = await h.client.data_converter.payload_codec.decode([p for _, p in payloads_in(history)])
        assert any(kept["customer"]["email"].encode() in p.data for p in opened)

    # STOP survives the erasure: a newcomer at that number gets no SMS.
    newcomer = new_order()
    newcomer["customer"]["phone"] = erased["customer"]["phone"]
    await store(pool, newcomer)
    request = order_message(newcomer, Touchpoint.DISPATCH_NOTICE, Channel.SMS, carrier="DHL", tracking_number="T1", expected_delivery="2026-12-01")
    outcome = await send(MessagingActivities(pool, provider_config), request)
    assert outcome.state is DeliveryState.NOT_PERMITTED and sms_posts_to(fakes, erased["customer"]["phone"]) == []


# --- the codec: shredded payloads, the codec server, rotation -----------------


def in_workflow(codec: EncryptionCodec, workflow_id: str) -> EncryptionCodec:
    return codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id=workflow_id))


def a_payload(value: object) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


async def test_a_shredded_payload_is_erased_customer_data_on_the_codec_server_and_a_clear_error_in_the_worker(pool):
    workflow_id = f"order-S{uuid.uuid4().hex[:10]}"
    codec = EncryptionCodec(TEST_PAYLOAD_KEYS, DataKeys(TEST_PAYLOAD_KEYS, pool))
    [sealed] = await in_workflow(codec, workflow_id).encode([a_payload({"email": "ada@example.com"})])
    key_id = sealed.metadata["encryption-key-id"].decode()
    assert key_id.startswith("dk:") and b"ada@example.com" not in sealed.data
    # Neither the master key nor another workflow's data key opens it.
    [elsewhere] = await in_workflow(codec, f"customer-S{uuid.uuid4().hex[:10]}").encode([a_payload(1)])
    assert elsewhere.metadata["encryption-key-id"] not in (sealed.metadata["encryption-key-id"], b"test-1")
    assert opened_with_any(sealed, [TEST_PAYLOAD_KEYS.cipher("test-1")]) is None
    config = CodecServerConfig(token=TOKEN)

    async def decode_on_the_codec_server(*payloads: Payload) -> list[Payload]:
        app = create_app(config, DataKeys(TEST_PAYLOAD_KEYS, pool))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8089") as http:
            answer = await http.post("/decode", content=json_format.MessageToJson(Payloads(payloads=payloads)),
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200
        return list(json_format.Parse(answer.text, Payloads()).payloads)

    assert await decode_on_the_codec_server(sealed) == [a_payload({"email": "ada@example.com"})]
    async with pool.acquire() as conn:
        assert await shred(conn, [workflow_id]) == 1
    [shown, untouched] = await decode_on_the_codec_server(sealed, elsewhere)
    assert json.loads(shown.data) == "erased customer data" and shown.metadata["encoding"] == b"json/plain"
    assert untouched == a_payload(1)
    # The worker's codec (a process that did not hold the key) says what happened.
    worker = EncryptionCodec(TEST_PAYLOAD_KEYS, DataKeys(TEST_PAYLOAD_KEYS, pool))
    with pytest.raises(DataKeyShredded, match=f"data key '{key_id}', shredded when its customer was erased"):
        await worker.decode([sealed])
    # Nothing more is written for that workflow.
    with pytest.raises(DataKeyShredded, match=f"workflow {workflow_id}'s data key was shredded"):
        await in_workflow(worker, workflow_id).encode([a_payload(2)])
    # No workflow id, so no customer id, is left in clear.
    assert await pool.fetchval("SELECT count(*) FROM data_keys WHERE workflow_id = $1 OR key_id = $2 AND wrapped_key IS NOT NULL",
                               workflow_id, key_id) == 0


async def test_a_backend_encoding_on_the_codec_server_names_the_workflow_to_seal_with_its_data_key(pool):
    workflow_id = f"order-X{uuid.uuid4().hex[:10]}"
    app = create_app(CodecServerConfig(token=TOKEN), DataKeys(TEST_PAYLOAD_KEYS, pool))

    async def encode(**headers: str) -> Payload:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8089") as http:
            answer = await http.post("/encode", content=json_format.MessageToJson(Payloads(payloads=[a_payload({"name": "Ada"})])),
                                     headers={"Authorization": f"Bearer {TOKEN}", **headers})
        assert answer.status_code == 200
        [sealed] = json_format.Parse(answer.text, Payloads()).payloads
        return sealed

    key_id, _ = await DataKeys(TEST_PAYLOAD_KEYS, pool).for_workflow(workflow_id)
    assert (await encode(**{"X-Workflow-Id": workflow_id})).metadata["encryption-key-id"].decode() == key_id
    assert (await encode()).metadata["encryption-key-id"] == b"test-1"  # what the temporal CLI gets


async def test_other_workflows_and_payloads_without_a_workflow_keep_the_master_key(pool):
    codec = EncryptionCodec(TEST_PAYLOAD_KEYS, DataKeys(TEST_PAYLOAD_KEYS, pool))
    for sealed in [
        *(await in_workflow(codec, "wocas-report-2026-12-01T06:00:00Z").encode([a_payload(1)])),
        *(await in_workflow(codec, "floor-customer-C1").encode([a_payload(1)])),
        *(await codec.encode([a_payload(1)])),
    ]:
        assert sealed.metadata["encryption-key-id"] == b"test-1"


async def test_two_processes_making_a_workflow_s_key_at_once_agree_on_one(pool):
    workflow_id = f"case-R{uuid.uuid4().hex[:10]}-1"
    made = await asyncio.gather(*(DataKeys(TEST_PAYLOAD_KEYS, pool).for_workflow(workflow_id) for _ in range(4)))
    assert len({key_id for key_id, _ in made}) == 1


async def test_data_keys_survive_a_master_key_rotation_and_are_rewrapped_so_the_old_key_can_go(pool):
    old, new = "rot-old:" + base64.b64encode(os.urandom(32)).decode(), "rot-new:" + base64.b64encode(os.urandom(32)).decode()
    workflow_id = f"order-R{uuid.uuid4().hex[:10]}"
    before = EncryptionCodec(payload_keys_from_env({"PAYLOAD_ENCRYPTION_KEYS": old}), DataKeys(payload_keys_from_env({"PAYLOAD_ENCRYPTION_KEYS": old}), pool))
    [sealed] = await in_workflow(before, workflow_id).encode([a_payload("under the old master key")])
    assert await pool.fetchval("SELECT master_key_id FROM data_keys WHERE workflow_id = $1", workflow_id) == "rot-old"

    # The tests' own key stays too: other tests' data keys share this database.
    rotated = payload_keys_from_env({KEYS_VARIABLE: f"{new},{old},{TEST_KEY_ENV[KEYS_VARIABLE]}"})
    assert await EncryptionCodec(rotated, DataKeys(rotated, pool)).decode([sealed]) == [a_payload("under the old master key")]
    assert await rewrap(pool, rotated) >= 1
    assert await pool.fetchval("SELECT master_key_id FROM data_keys WHERE workflow_id = $1", workflow_id) == "rot-new"
    assert await pool.fetchval("SELECT count(*) FROM data_keys WHERE master_key_id = ANY($1)", ["rot-old", "test-1"]) == 0

    retired = payload_keys_from_env({"PAYLOAD_ENCRYPTION_KEYS": new})
    assert await EncryptionCodec(retired, DataKeys(retired, pool)).decode([sealed]) == [a_payload("under the old master key")]
    # Put back under the tests' key, for the tests after this one.
    assert await rewrap(pool, payload_keys_from_env({KEYS_VARIABLE: f"{TEST_KEY_ENV[KEYS_VARIABLE]},{new}"})) >= 1



async def test_a_report_for_a_shredded_workflow_is_owed_no_more(dev_env, pool):
    """A provider's late report for an erased customer's order: its signal
    cannot be sealed, and the order is over, so the relay is done with it."""
    workflow_id = f"order-L{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await shred(conn, [workflow_id])
    outcome = await Signals({}, dev_env.client).send(workflow_id, "message_settled", {"key": "k", "channel": "email", "state": "sent"})
    assert outcome is SignalOutcome.NOT_RUNNING


async def test_an_erased_customer_who_returns_gets_a_customer_workflow_under_a_new_key(pool):
    order = new_order()
    customer_workflow = f"customer-{order['customer']['customer_id']}"
    await store(pool, order)
    keys = DataKeys(TEST_PAYLOAD_KEYS, pool)
    first, _ = await keys.for_workflow(customer_workflow)
    async with pool.acquire() as conn:
        await erasure.forget(conn, order["customer"]["customer_id"], "test")
        await shred(conn, [customer_workflow])
    with pytest.raises(DataKeyShredded):
        await DataKeys(TEST_PAYLOAD_KEYS, pool).for_workflow(customer_workflow)
    await store(pool, new_order(customer=order["customer"]))  # their next order
    again, _ = await DataKeys(TEST_PAYLOAD_KEYS, pool).for_workflow(customer_workflow)
    assert again != first


async def test_a_process_that_held_a_key_may_use_it_at_most_the_cache_ttl_after_it_is_shredded(pool):
    now = [0.0]
    keys = DataKeys(TEST_PAYLOAD_KEYS, pool, ttl=60, clock=lambda: now[0])
    codec = EncryptionCodec(TEST_PAYLOAD_KEYS, keys)
    workflow_id = f"order-T{uuid.uuid4().hex[:10]}"
    [sealed] = await in_workflow(codec, workflow_id).encode([a_payload("cached")])
    async with pool.acquire() as conn:
        await shred(conn, [workflow_id])
    now[0] = 59.9
    assert await codec.decode([sealed]) == [a_payload("cached")]
    now[0] = 60.0
    with pytest.raises(DataKeyShredded):
        await codec.decode([sealed])
    with pytest.raises(DataKeyShredded):
        await in_workflow(codec, workflow_id).encode([a_payload("more")])


async def test_a_process_that_read_a_workflow_s_payload_writes_the_next_without_another_round_trip(pool, database_url):
    """The worker's first act for a workflow another process started: decode
    its input, then encode its commands; one read of data_keys serves both."""
    workflow_id = f"order-Q{uuid.uuid4().hex[:10]}"
    [started] = await in_workflow(EncryptionCodec(TEST_PAYLOAD_KEYS, DataKeys(TEST_PAYLOAD_KEYS, pool)), workflow_id).encode([a_payload(1)])
    async with logging_statements(database_url) as (workers_pool, statements):
        worker = EncryptionCodec(TEST_PAYLOAD_KEYS, DataKeys(TEST_PAYLOAD_KEYS, workers_pool))
        assert await worker.decode([started]) == [a_payload(1)]
        [written] = await in_workflow(worker, workflow_id).encode([a_payload(2)])
    assert written.metadata["encryption-key-id"] == started.metadata["encryption-key-id"]
    assert len(statements) == 1 and "FROM data_keys WHERE key_id" in statements[0], statements


async def test_a_worker_making_a_new_workflow_s_key_on_its_own_pool_needs_one_round_trip(database_url, monkeypatch):
    """The worker's codec keeps its own pool (DATABASE_URL): the key of a
    workflow it starts is looked for and made in one statement, and handing
    the connection back sends no reset (a round trip and a transaction)."""
    statements: list[str] = []
    create_pool = asyncpg.create_pool

    def logging_every_statement(*args, **kwargs):
        async def log_statements(conn: asyncpg.Connection) -> None:
            conn.add_query_logger(lambda logged: statements.append(logged.query))

        return create_pool(*args, **kwargs, init=log_statements)

    monkeypatch.setattr(asyncpg, "create_pool", logging_every_statement)
    keys = DataKeys(TEST_PAYLOAD_KEYS, database_url)
    try:
        key_id, _ = await keys.for_workflow(f"customer-N{uuid.uuid4().hex[:10]}")
    finally:
        await (await keys.pool()).close()
    assert len(statements) == 1 and "INSERT INTO data_keys" in statements[0], statements
    assert key_id.startswith("dk:")


async def test_a_data_key_under_a_master_key_no_longer_given_is_left_and_the_rest_rewrapped(pool):
    """The worker re-wraps at start: a key it cannot unwrap must not stop it."""
    gone = payload_keys_from_env({KEYS_VARIABLE: "gone-1:" + base64.b64encode(os.urandom(32)).decode()})
    await DataKeys(gone, pool).for_workflow(f"order-G{uuid.uuid4().hex[:10]}")
    await DataKeys(TEST_PAYLOAD_KEYS, pool).for_workflow(f"order-G{uuid.uuid4().hex[:10]}")
    current = payload_keys_from_env({KEYS_VARIABLE: f"{TEST_KEY_ENV[KEYS_VARIABLE]}"})
    assert await rewrap(pool, current) == 0  # nothing under an older key it has
    assert await pool.fetchval("SELECT count(*) FROM data_keys WHERE master_key_id = 'gone-1'") == 1


class WorkflowsThatStayOpen(Signals):
    """A Temporal where every workflow runs on until terminated."""

    def __init__(self) -> None:
        super().__init__({}, None)
        self.terminated: list[str] = []

    async def is_open(self, workflow_id: str) -> bool:
        return workflow_id not in self.terminated

    async def terminate(self, workflow_id: str, reason: str) -> None:
        self.terminated.append(workflow_id)


async def test_workflows_told_late_still_get_their_time_to_close_before_they_are_terminated(pool):
    """Asked an hour ago, told just now (Temporal was away): nothing is
    terminated until CLOSE_WITHIN after they were told."""
    order = new_order()
    await store(pool, order)
    async with pool.acquire() as conn:
        forgotten = await erasure.forget(conn, order["customer"]["customer_id"], "dpo")
    receipt_id = forgotten.receipt.receipt_id
    await pool.execute("UPDATE erasures SET requested_at = now() - interval '1 hour' WHERE receipt_id = $1", receipt_id)
    told = "UPDATE provider_events SET signalled_at = now() - $2::interval WHERE event_id LIKE $1"
    await pool.execute(told, f"erasure:{receipt_id}:%", timedelta(seconds=5))
    temporal = WorkflowsThatStayOpen()

    assert (await settled(pool, temporal, receipt_id, close_within=timedelta(minutes=2))).completed_at is None
    assert temporal.terminated == []
    await pool.execute(told, f"erasure:{receipt_id}:%", timedelta(minutes=3))
    assert (await settled(pool, temporal, receipt_id, close_within=timedelta(minutes=2))).completed_at is not None
    assert sorted(temporal.terminated) == sorted(await erasure.workflows(pool, receipt_id))
