"""AES-256-GCM on every payload a client or worker hands to Temporal, so the
server (or Temporal Cloud) keeps no customer data in plain text.

Keys come from the environment: `PAYLOAD_ENCRYPTION_KEYS`, comma-separated
`key_id:base64(32 bytes)`, or `PAYLOAD_ENCRYPTION_KEYS_FILE`, one such entry
a line. The first key encrypts; every key decrypts, so a new key goes first
and the old ones stay until no history needs them. An encrypted payload names
its key in its metadata. A payload without that encoding was written before
encryption (or by a tool without the codec) and passes through as it is.

Payloads of a workflow that holds a customer's data (order-*, customer-*,
case-*, resend-*) are sealed with that workflow's own data key instead, found through
the SDK's serialization context (the workflow id) and named in the metadata
as `dk:<id>` (codec/data_keys.py): erasing the customer destroys it. Other
workflows, and payloads without a context, keep the master key.

Each payload is compressed before it is sealed (history bytes: the server
stores, bills and sends every payload to workers), with deflate and a preset
dictionary of this project's own payloads (codec/deflate-dictionary-1.bin,
made by `python -m bench history --write-dictionary`), kept only where it
comes out smaller. Inside the sealed bytes, a first byte under 0x08, which
cannot start a serialized Payload (it would be the tag of a field 0), says
how it was compressed: no metadata entry, which would cost more than small
payloads save. A dictionary in use never changes: a new one takes a new
marker byte. None (binary/null, no data) is left plain: nothing to hide.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)

if TYPE_CHECKING:
    from codec.data_keys import DataKeys

KEYS_VARIABLE = "PAYLOAD_ENCRYPTION_KEYS"
KEYS_FILE_VARIABLE = "PAYLOAD_ENCRYPTION_KEYS_FILE"
KEY_VARIABLES = (KEYS_VARIABLE, KEYS_FILE_VARIABLE)

# The metadata Temporal's encryption samples use, so their tools recognise it.
ENCODING = b"binary/encrypted"
NULL_ENCODING = b"binary/null"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
TAG_BYTES = 16  # AES-GCM appends its tag to the ciphertext
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The marker byte of what this codec compresses with, and of every
# dictionary it can open.
DEFLATE_MARKER = b"\x01"
DEFLATE_DICTIONARIES = {DEFLATE_MARKER: (Path(__file__).parent / "deflate-dictionary-1.bin").read_bytes()}
# A serialized Payload starts with a tag of field 1 or above: 0x08 or more.
FIRST_TAG_OF_A_PAYLOAD = 0x08
# Workflows that hold a customer's data, each sealed with its own data key:
# orders, customers, cases, and an operator's resend of one of their messages.
CUSTOMER_WORKFLOW_PREFIXES = ("order-", "customer-", "case-", "resend-")
# A data key's id in KEY_ID: a master key id cannot hold ':'.
DATA_KEY_ID_PREFIX = "dk:"


def holds_customer_data(workflow_id: str | None) -> bool:
    return workflow_id is not None and workflow_id.startswith(CUSTOMER_WORKFLOW_PREFIXES)


class CodecConfigError(ValueError):
    """Missing or malformed keys or codec-server settings: printed without a traceback."""


class PayloadDecryptionError(ValueError):
    """An encrypted payload that these keys cannot open."""


class DataKeyShredded(PayloadDecryptionError):
    """A payload of an erased customer's workflow: its data key is destroyed,
    so nobody can open it (or write more for that workflow)."""


class PayloadKeys:
    """Key ids in order, each with its AES-256-GCM key; the first encrypts."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise CodecConfigError("no payload encryption key given")
        self._ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if key_id in self._ciphers:
                raise CodecConfigError(f"payload encryption key id {key_id!r} is given twice")
            self._ciphers[key_id] = AESGCM(key)
        self.encrypting_id = keys[0][0]

    @property
    def ids(self) -> list[str]:
        return list(self._ciphers)

    def cipher(self, key_id: str) -> AESGCM:
        try:
            return self._ciphers[key_id]
        except KeyError:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {key_id!r}, which is not among the configured keys "
                f"({', '.join(self.ids)}): add that key to {KEYS_VARIABLE} (after the one that encrypts)"
            ) from None

    @classmethod
    def parse(cls, entries: Iterable[str], source: str) -> PayloadKeys:
        """`key_id:base64` entries; the key itself never appears in an error."""
        keys = []
        for n, entry in enumerate(entries, 1):
            key_id, colon, encoded = entry.strip().partition(":")
            if not colon or not KEY_ID_PATTERN.fullmatch(key_id):
                raise CodecConfigError(
                    f"{source}, entry {n}: expected key_id:base64 with a key id of letters, digits, '.', '_' or '-'"
                )
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except binascii.Error:
                raise CodecConfigError(f"{source}, key {key_id!r}: not valid base64") from None
            if len(key) != 32:
                raise CodecConfigError(f"{source}, key {key_id!r}: {len(key)} bytes, AES-256 needs 32")
            keys.append((key_id, key))
        return cls(keys)


def payload_keys_from_env(env: Mapping[str, str]) -> PayloadKeys:
    inline, path = env.get(KEYS_VARIABLE, "").strip(), env.get(KEYS_FILE_VARIABLE, "").strip()
    if inline and path:
        raise CodecConfigError(f"set {KEYS_VARIABLE} or {KEYS_FILE_VARIABLE}, not both")
    if inline:
        return PayloadKeys.parse(inline.split(","), KEYS_VARIABLE)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise CodecConfigError(f"{KEYS_FILE_VARIABLE}: cannot read {path} ({err.strerror})") from None
        except UnicodeDecodeError:
            raise CodecConfigError(f"{KEYS_FILE_VARIABLE}: {path} is not text (one key_id:base64 a line)") from None
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return PayloadKeys.parse(lines, f"{KEYS_FILE_VARIABLE} ({path})")
    raise CodecConfigError(
        f"{KEYS_VARIABLE} or {KEYS_FILE_VARIABLE} is required: the AES-256 keys that keep customer data "
        "encrypted on the Temporal server, as key_id:base64 (e.g. "
        f'{KEYS_VARIABLE}="k1:$(openssl rand -base64 32)"); the first encrypts, all decrypt'
    )


def new_key_entry(prefix: str = "key") -> str:
    """A fresh `key_id:base64` entry, its id dated so a rotation's order shows."""
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%d}:{base64.b64encode(os.urandom(32)).decode()}"


# Primed once: setting a dictionary costs more than compressing a payload, a
# copy does not. Raw deflate (wbits -15): no zlib header or checksum, the
# cipher authenticates.
_DEFLATE = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DEFLATE_DICTIONARIES[DEFLATE_MARKER])


def compress(serialized: bytes) -> bytes:
    """A serialized payload, deflated behind its marker where that is shorter."""
    deflate = _DEFLATE.copy()
    packed = DEFLATE_MARKER + deflate.compress(serialized) + deflate.flush()
    return packed if len(packed) < len(serialized) else serialized


def decompress(plain: bytes, key_id: str) -> bytes:
    if not plain or plain[0] >= FIRST_TAG_OF_A_PAYLOAD:
        return plain  # sealed as it was
    dictionary = DEFLATE_DICTIONARIES.get(plain[:1])
    if dictionary is None:
        raise PayloadDecryptionError(
            f"payload under key id {key_id!r} was compressed in a way this codec does not know "
            f"(marker {plain[0]}): written by a newer version of it"
        )
    inflate = zlib.decompressobj(-15, zdict=dictionary)
    try:
        return inflate.decompress(plain[1:]) + inflate.flush()
    except zlib.error:
        raise PayloadDecryptionError(f"payload under key id {key_id!r} does not inflate") from None


class EncryptionCodec(PayloadCodec, WithSerializationContext):
    """`data_keys`: where customers' workflows' keys are; without it (unit
    tests, tools that never see such a workflow) every payload is under the
    master key and a data-keyed one cannot be opened."""

    def __init__(self, keys: PayloadKeys, data_keys: DataKeys | None = None, workflow_id: str | None = None) -> None:
        self._keys = keys
        self._data_keys = data_keys
        # Set only for a workflow that holds a customer's data.
        self._workflow_id = workflow_id

    def with_context(self, context: SerializationContext) -> EncryptionCodec:
        workflow_id = context.workflow_id if isinstance(context, (WorkflowSerializationContext, ActivitySerializationContext)) else None
        return EncryptionCodec(self._keys, self._data_keys, workflow_id if holds_customer_data(workflow_id) else None)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self._workflow_id is None:
            key_id = self._keys.encrypting_id
            cipher = self._keys.cipher(key_id)
        elif self._data_keys is None:
            raise CodecConfigError(f"no data-key store: payloads of {self._workflow_id} cannot be sealed with its data key")
        else:
            key_id, cipher = await self._data_keys.for_workflow(self._workflow_id)
        encrypted = []
        for payload in payloads:
            if payload.metadata.get("encoding") == NULL_ENCODING and not payload.data:
                # None (an activity that returns nothing): nothing to hide,
                # and sealed it would take four times the bytes.
                encrypted.append(payload)
                continue
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, compress(payload.SerializeToString()), None)
            encrypted.append(Payload(metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=nonce + sealed))
        return encrypted

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [await self._decrypt(p) if p.metadata.get("encoding") == ENCODING else p for p in payloads]

    async def _cipher(self, key_id: str) -> AESGCM:
        if not key_id.startswith(DATA_KEY_ID_PREFIX):
            return self._keys.cipher(key_id)
        if self._data_keys is None:
            raise PayloadDecryptionError(f"payload sealed with data key {key_id!r}, and this codec has no data-key store")
        return await self._data_keys.cipher(key_id)

    async def _decrypt(self, payload: Payload) -> Payload:
        try:
            key_id = payload.metadata.get(KEY_ID, b"").decode()
        except UnicodeDecodeError:
            raise PayloadDecryptionError(f"encrypted payload whose {KEY_ID} is not text") from None
        if not key_id:
            raise PayloadDecryptionError(f"encrypted payload without the {KEY_ID} metadata")
        cipher = await self._cipher(key_id)
        if len(payload.data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadDecryptionError(f"payload under key id {key_id!r} is too short to be one this codec wrote")
        try:
            plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload under key id {key_id!r} does not decrypt: the configured key of that id is not the one "
                "that encrypted it, or the payload was altered"
            ) from None
        try:
            return Payload.FromString(decompress(plain, key_id))
        except DecodeError:
            raise PayloadDecryptionError(f"payload under key id {key_id!r} decrypts to no Temporal payload") from None


def encrypted_data_converter(data_keys: DataKeys) -> DataConverter:
    """The project's converter (pydantic models as JSON) with every payload
    encrypted, failure messages and stack traces included (they move into an
    encrypted payload of the failure); customers' workflows under their own
    data keys."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(data_keys.master, data_keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
