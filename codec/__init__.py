"""Customer data kept encrypted on the Temporal server: the payload codec and
data converter every client and worker uses (`encryption`), and the codec
server that lets operators' tools read it (`server`)."""

from codec.data_keys import DataKeys, data_keys_from_env
from codec.encryption import (
    KEY_VARIABLES,
    KEYS_FILE_VARIABLE,
    KEYS_VARIABLE,
    CodecConfigError,
    DataKeyShredded,
    EncryptionCodec,
    PayloadDecryptionError,
    PayloadKeys,
    encrypted_data_converter,
    new_key_entry,
    payload_keys_from_env,
)

__all__ = [
    "KEY_VARIABLES",
    "KEYS_FILE_VARIABLE",
    "KEYS_VARIABLE",
    "CodecConfigError",
    "DataKeyShredded",
    "DataKeys",
    "EncryptionCodec",
    "PayloadDecryptionError",
    "PayloadKeys",
    "data_keys_from_env",
    "encrypted_data_converter",
    "new_key_entry",
    "payload_keys_from_env",
]
