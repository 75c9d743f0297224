"""Payload encryption (codec/): keys and their rotation, payloads written
before encryption, failures, the codec server's protocol and who it lets in,
and the processes that refuse to start without keys."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from codec import (
    CodecConfigError,
    DataKeys,
    EncryptionCodec,
    PayloadDecryptionError,
    PayloadKeys,
    encrypted_data_converter,
    new_key_entry,
    payload_keys_from_env,
)
from codec.encryption import NONCE_BYTES, TAG_BYTES
from codec.server import CodecServerConfig, create_app
from tests.conftest import HISTORIES, TEST_KEY_ENV, TEST_PAYLOAD_KEYS, new_order
from workflows.models import OrderInput

REPO = Path(__file__).resolve().parents[1]
UI = "http://localhost:8233"
TOKEN = "codec-token-" + "x" * 20
# Payloads outside any customer's workflow: the data keys' database is never opened.
MASTER_KEY_ONLY = DataKeys(TEST_PAYLOAD_KEYS, "postgresql://never-opened.invalid/")


def keys(*entries: str) -> PayloadKeys:
    return payload_keys_from_env({"PAYLOAD_ENCRYPTION_KEYS": ",".join(entries)})


def a_payload(value: object) -> Payload:
    return pydantic_data_converter.payload_converter.to_payloads([value])[0]


# --- keys, rotation and legacy payloads ---------------------------------------


async def test_encrypted_payload_names_its_key_and_holds_no_plain_text():
    order = new_order()
    [sealed] = await EncryptionCodec(TEST_PAYLOAD_KEYS).encode([a_payload(order)])
    assert sealed.metadata["encoding"] == b"binary/encrypted" and sealed.metadata["encryption-key-id"] == b"test-1"
    assert order["customer"]["email"].encode() not in sealed.SerializeToString()
    [opened] = await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([sealed])
    assert opened == a_payload(order)


async def test_rotation_new_key_encrypts_old_key_still_decrypts():
    old, new = new_key_entry("old"), "new-2:" + base64.b64encode(os.urandom(32)).decode()
    [under_old] = await EncryptionCodec(keys(old)).encode([a_payload({"email": "ada@example.com"})])
    rotated = EncryptionCodec(keys(new, old))
    [under_new] = await rotated.encode([a_payload({"email": "ada@example.com"})])
    assert under_new.metadata["encryption-key-id"] == b"new-2"
    assert await rotated.decode([under_old, under_new]) == [a_payload({"email": "ada@example.com"})] * 2


async def test_unknown_key_id_or_a_different_key_is_a_clear_error():
    [sealed] = await EncryptionCodec(keys("gone-1:" + base64.b64encode(os.urandom(32)).decode())).encode([a_payload(1)])
    with pytest.raises(PayloadDecryptionError, match=r"key id 'gone-1', which is not among the configured keys \(test-1\)"):
        await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([sealed])
    # Same id, other key bytes: authentication fails, said as such.
    impostor = keys("gone-1:" + base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(PayloadDecryptionError, match="does not decrypt: the configured key of that id is not the one"):
        await EncryptionCodec(impostor).decode([sealed])


async def test_plain_payloads_written_before_encryption_pass_through():
    order = new_order()
    plain = a_payload(order)
    assert await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([plain]) == [plain]
    converter = encrypted_data_converter(MASTER_KEY_ONLY)
    decoded = await converter.decode([plain], [OrderInput])
    assert decoded[0].customer.email == order["customer"]["email"]
    # A failure recorded before encryption: its message is plain, and stays readable.
    legacy = Failure()
    await pydantic_data_converter.encode_failure(ApplicationError("refused"), legacy)
    assert (await converter.decode_failure(legacy)).message == "refused"


def test_the_recorded_histories_are_such_plain_payloads():
    """tests/test_replay.py replays them through the encrypting converter: they
    stand for the orders that were running when encryption was turned on."""
    happy_path = json.loads((HISTORIES / "happy_path.json").read_text())
    started = happy_path["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    assert base64.b64decode(started["metadata"]["encoding"]) == b"json/plain"


# --- compression before encryption ---------------------------------------------


async def test_payloads_are_compressed_before_they_are_sealed():
    """History bytes: an order sealed takes well under half its plain size
    (deflate with the codec's dictionary of this project's payloads)."""
    plain = a_payload(new_order())
    [sealed] = await EncryptionCodec(TEST_PAYLOAD_KEYS).encode([plain])
    assert len(sealed.data) < len(plain.SerializeToString()) / 2
    assert await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([sealed]) == [plain]


async def test_a_payload_compression_would_not_shrink_is_sealed_as_it_is():
    plain = Payload(metadata={"encoding": b"binary/plain"}, data=os.urandom(600))
    [sealed] = await EncryptionCodec(TEST_PAYLOAD_KEYS).encode([plain])
    assert len(sealed.data) == NONCE_BYTES + len(plain.SerializeToString()) + TAG_BYTES
    assert await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([sealed]) == [plain]


async def test_an_activity_that_returns_nothing_leaves_a_plain_null():
    """Nothing to hide in None (the event says as much), and sealed it takes
    four times the bytes: record_delivery, store_feedback, record_phase..."""
    null = a_payload(None)
    assert null.metadata["encoding"] == b"binary/null" and not null.data
    assert await EncryptionCodec(TEST_PAYLOAD_KEYS).encode([null]) == [null]
    assert await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([null]) == [null]


def sealed_by_hand(plain_bytes: bytes) -> Payload:
    """A payload sealed as the codec did before it compressed (or as a newer
    codec might, with `plain_bytes` of its own)."""
    nonce = os.urandom(NONCE_BYTES)
    key = base64.b64decode(TEST_KEY_ENV["PAYLOAD_ENCRYPTION_KEYS"].split(":", 1)[1])
    return Payload(metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"test-1"}, data=nonce + AESGCM(key).encrypt(nonce, plain_bytes, None))


async def test_payloads_sealed_before_compression_still_decode():
    plain = a_payload(new_order())
    assert await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([sealed_by_hand(plain.SerializeToString())]) == [plain]


async def test_a_payload_compressed_with_the_first_dictionary_opens_for_ever():
    """Sealed on the day dictionary 1 came in: a changed dictionary would
    leave every history written since unreadable (a new one takes a new marker)."""
    sealed = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"test-1"},
        data=base64.b64decode("GS1rskW2dYxjBKqIfun+Zl8QNvH6NVqnAdO1D1MVzqwbaFV7BRjXszPV3JI="),
    )
    outcome = {"key": "order-A1:order_confirmation:email", "channel": "email", "state": "sent",
               "provider_message_id": "sg-1", "error": None, "not_before": None}
    assert await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([sealed]) == [a_payload(outcome)]
    # Byte for byte: a change this payload does not reach would still break others.
    dictionary = (REPO / "codec" / "deflate-dictionary-1.bin").read_bytes()
    assert hashlib.sha256(dictionary).hexdigest() == "dbe163b224ebad8a5e7cc18c03fcdc3cfbaffa643d7f334d4eed657c13e2bcd0"


async def test_a_compression_this_codec_does_not_know_is_a_clear_error():
    with pytest.raises(PayloadDecryptionError, match="compressed in a way this codec does not know"):
        await EncryptionCodec(TEST_PAYLOAD_KEYS).decode([sealed_by_hand(b"\x07" + os.urandom(40))])


async def test_failure_message_and_stack_trace_are_encrypted():
    converter = encrypted_data_converter(MASTER_KEY_ONLY)
    failure = Failure()
    try:
        raise ApplicationError("SendGrid refused ada@example.com", {"to": "ada@example.com"}, type="Refused")
    except ApplicationError as err:
        await converter.encode_failure(err, failure)
    assert failure.message == "Encoded failure" and failure.stack_trace == ""
    assert b"ada@example.com" not in failure.SerializeToString()
    restored = await converter.decode_failure(failure)
    assert restored.message == "SendGrid refused ada@example.com" and restored.details == ({"to": "ada@example.com"},)


def test_keys_from_the_environment_or_a_file(tmp_path: Path):
    first, second = new_key_entry("k"), "k-0:" + base64.b64encode(os.urandom(32)).decode()
    assert keys(first, second).ids == [first.split(":")[0], "k-0"]
    path = tmp_path / "keys"
    path.write_text(f"# newest first\n{second}\n\n{first}\n")
    from_file = payload_keys_from_env({"PAYLOAD_ENCRYPTION_KEYS_FILE": str(path)})
    assert from_file.ids == ["k-0", first.split(":")[0]] and from_file.encrypting_id == "k-0"

    short = "k:" + base64.b64encode(b"16 bytes only!!!").decode()
    binary = tmp_path / "keys.bin"
    binary.write_bytes(b"k:\xff\xfe" + os.urandom(32))
    refusals = {
        "PAYLOAD_ENCRYPTION_KEYS or PAYLOAD_ENCRYPTION_KEYS_FILE is required": {},
        "not both": {"PAYLOAD_ENCRYPTION_KEYS": first, "PAYLOAD_ENCRYPTION_KEYS_FILE": str(path)},
        "key 'k': 16 bytes, AES-256 needs 32": {"PAYLOAD_ENCRYPTION_KEYS": short},
        "key 'k': not valid base64": {"PAYLOAD_ENCRYPTION_KEYS": "k:not base64!"},
        "entry 2: expected key_id:base64": {"PAYLOAD_ENCRYPTION_KEYS": f"{first},no-colon"},
        "key id 'k-0' is given twice": {"PAYLOAD_ENCRYPTION_KEYS": f"{second},{second}"},
        "cannot read": {"PAYLOAD_ENCRYPTION_KEYS_FILE": str(tmp_path / "missing")},
        "is not text": {"PAYLOAD_ENCRYPTION_KEYS_FILE": str(binary)},
    }
    for message, env in refusals.items():
        with pytest.raises(CodecConfigError, match=message) as refused:
            payload_keys_from_env(env)
        # A key, good or bad, never appears in an error.
        secrets = [entry.split(":", 1)[1] for value in env.values() for entry in value.split(",") if ":" in entry]
        assert not [k for k in secrets if k and k in str(refused.value)], message


def test_the_worker_refuses_to_start_without_keys():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYLOAD_ENCRYPTION_KEYS")}
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    env["METRICS_PORT"] = "0"  # the refusal, not a busy metrics port
    env["ERASURE_SALT"] = "every other setting is valid"
    result = subprocess.run([sys.executable, "worker.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "error: PAYLOAD_ENCRYPTION_KEYS or PAYLOAD_ENCRYPTION_KEYS_FILE is required" in result.stderr


# --- the codec server -------------------------------------------------------


def payloads_json(*payloads: Payload) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


async def call(config: CodecServerConfig, path: str, body: str | bytes = "", **headers: str) -> httpx.Response:
    app = create_app(config, MASTER_KEY_ONLY)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8089") as http:
        if path == "preflight":
            return await http.options("/decode", headers={"Access-Control-Request-Method": "POST", **headers})
        return await http.post(path, content=body, headers={"Content-Type": "application/json", **headers})


async def test_codec_server_round_trips_with_the_token():
    config = CodecServerConfig(token=TOKEN)
    order = new_order()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    encoded = await call(config, "/encode", payloads_json(a_payload(order)), **bearer)
    assert encoded.status_code == 200
    sealed = json_format.Parse(encoded.text, Payloads()).payloads
    assert sealed[0].metadata["encoding"] == b"binary/encrypted" and order["customer"]["email"] not in encoded.text
    decoded = await call(config, "/decode", encoded.text, **bearer)
    assert decoded.status_code == 200
    assert list(json_format.Parse(decoded.text, Payloads()).payloads) == [a_payload(order)]
    # What the worker encrypted, the codec server decrypts: the same codec.
    [by_worker] = await encrypted_data_converter(MASTER_KEY_ONLY).encode([order])
    assert (await call(config, "/decode", payloads_json(by_worker), **bearer)).json()["payloads"][0]["metadata"] == {
        "encoding": base64.b64encode(b"json/plain").decode()
    }


async def test_codec_server_refuses_a_missing_or_wrong_token_and_other_origins():
    config = CodecServerConfig(token=TOKEN, cors_origin=UI)
    body = payloads_json(a_payload(1))
    missing = await call(config, "/decode", body)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert (await call(config, "/decode", body, Authorization="Bearer wrong-token")).status_code == 403
    assert (await call(config, "/decode", body, Authorization=f"Basic {TOKEN}")).status_code == 403
    # Another web page, even with the token: refused, and no CORS header lets it read the answer.
    elsewhere = await call(config, "/decode", body, Authorization=f"Bearer {TOKEN}", Origin="https://evil.example")
    assert elsewhere.status_code == 403 and "access-control-allow-origin" not in elsewhere.headers
    assert (await call(config, "preflight", Origin="https://evil.example")).status_code == 403
    # The configured origin still needs the token unless told to trust it.
    assert (await call(config, "/decode", body, Origin=UI)).status_code == 401
    allowed = await call(config, "/decode", body, Authorization=f"Bearer {TOKEN}", Origin=UI)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == UI
    assert (await call(config, "/decode", "not json", Authorization=f"Bearer {TOKEN}")).status_code == 400


async def test_the_web_ui_origin_without_a_token_only_when_trusted_on_loopback():
    config = CodecServerConfig.from_env(
        {"CODEC_SERVER_TOKEN": TOKEN, "CODEC_CORS_ORIGIN": UI + "/", "CODEC_TRUST_UI_ORIGIN": "true"}
    )
    assert (config.host, config.port, config.cors_origin) == ("127.0.0.1", 8089, UI)
    assert CodecServerConfig(token=TOKEN, host="::1").url == "http://[::1]:8089"
    preflight = await call(config, "preflight", Origin=UI, **{"Access-Control-Request-Headers": "content-type,x-namespace"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == UI
    assert "X-Namespace" in preflight.headers["access-control-allow-headers"]
    [sealed] = await EncryptionCodec(TEST_PAYLOAD_KEYS).encode([a_payload("hello")])
    as_the_ui = await call(config, "/decode", payloads_json(sealed), Origin=UI, **{"X-Namespace": "default"})
    assert as_the_ui.status_code == 200 and as_the_ui.headers["access-control-allow-origin"] == UI
    assert list(json_format.Parse(as_the_ui.text, Payloads()).payloads) == [a_payload("hello")]
    # Without an origin (any program), the token is still required.
    assert (await call(config, "/decode", payloads_json(sealed))).status_code == 401
    assert (await call(config, "/decode", payloads_json(sealed), Origin="http://127.0.0.1:8233")).status_code == 403

    refusals = {
        "CODEC_SERVER_TOKEN is required": {},
        "only on a loopback address; CODEC_HOST is 0.0.0.0": {
            "CODEC_SERVER_TOKEN": TOKEN, "CODEC_CORS_ORIGIN": UI, "CODEC_TRUST_UI_ORIGIN": "true", "CODEC_HOST": "0.0.0.0"
        },
        "needs CODEC_CORS_ORIGIN": {"CODEC_SERVER_TOKEN": TOKEN, "CODEC_TRUST_UI_ORIGIN": "true"},
        "must be an origin like": {"CODEC_SERVER_TOKEN": TOKEN, "CODEC_CORS_ORIGIN": "localhost:8233/ui"},
        "CODEC_PORT must be a whole number": {"CODEC_SERVER_TOKEN": TOKEN, "CODEC_PORT": "http"},
    }
    for message, env in refusals.items():
        with pytest.raises(CodecConfigError, match=message):
            CodecServerConfig.from_env(env)
    assert TOKEN not in repr(config)


def test_the_cli_takes_the_key_orders_up_made_only_for_the_embedded_dev_server(tmp_path: Path):
    """A laptop's generated key must never encrypt what a real cluster's
    workers would have to decrypt: against TEMPORAL_ADDRESS, keys are required."""
    (tmp_path / "payload-encryption-keys").write_text(new_key_entry("local") + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYLOAD_ENCRYPTION_KEYS", "TEMPORAL_ADDRESS"))}
    env.update(ORDERS_DATA_DIR=str(tmp_path), TEMPORAL_ADDRESS="127.0.0.1:1")
    result = subprocess.run(
        [sys.executable, "-m", "starter.cli", "status", "A1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: PAYLOAD_ENCRYPTION_KEYS or PAYLOAD_ENCRYPTION_KEYS_FILE is required")


async def test_a_payload_the_codec_server_cannot_decrypt_comes_back_as_it_was_and_the_rest_decoded():
    """The Web UI shows what /decode answers and checks no status: a refused
    batch would show every payload of the event as empty."""
    config = CodecServerConfig(token=TOKEN, cors_origin=UI)
    [sealed] = await EncryptionCodec(TEST_PAYLOAD_KEYS).encode([a_payload("hello")])
    [other_key] = await EncryptionCodec(keys("k-other:" + base64.b64encode(os.urandom(32)).decode())).encode([a_payload(1)])
    broken = [
        other_key,
        Payload(metadata={"encoding": b"binary/encrypted", "encryption-key-id": sealed.metadata["encryption-key-id"]}, data=b"short"),
        Payload(metadata={"encoding": b"binary/encrypted", "encryption-key-id": b"\xff\xfe"}, data=sealed.data),
    ]
    answer = await call(config, "/decode", payloads_json(*broken, sealed), Authorization=f"Bearer {TOKEN}", Origin=UI)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == UI
    assert list(json_format.Parse(answer.text, Payloads()).payloads) == [*broken, a_payload("hello")]
    not_utf8 = await call(config, "/decode", b'{"payloads": [\xff]}', Authorization=f"Bearer {TOKEN}", Origin=UI)
    assert not_utf8.status_code == 400 and not_utf8.headers["access-control-allow-origin"] == UI
    empty = await call(config, "/decode", payloads_json(), Authorization=f"Bearer {TOKEN}")
    assert empty.json() == {"payloads": []}


async def test_the_trusted_ui_origin_is_not_trusted_through_a_proxy():
    """Trust rests on the caller being a browser on this machine: a request a
    proxy or tunnel forwarded needs the token."""
    config = CodecServerConfig(token=TOKEN, cors_origin=UI, trust_ui_origin=True)
    body = payloads_json(a_payload(1))
    assert (await call(config, "/decode", body, Origin=UI)).status_code == 200
    for header in ("X-Forwarded-For", "Forwarded", "X-Forwarded-Host", "X-Real-IP"):
        assert (await call(config, "/decode", body, Origin=UI, **{header: "203.0.113.9"})).status_code == 401, header
    assert (await call(config, "/decode", body, Origin=UI, Host="codec.example.com")).status_code == 401
    assert (await call(config, "/decode", body, Origin=UI, Host="codec.example.com", Authorization=f"Bearer {TOKEN}")).status_code == 200


def test_orders_codec_server_refuses_to_start_without_a_token():
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CODEC_")}, **TEST_KEY_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "starter.cli", "codec-server"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.startswith("error: CODEC_SERVER_TOKEN is required")
