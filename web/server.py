"""The app under uvicorn: `orders web` alone, or next to the worker in `orders up`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from web.app import create_app
from web.config import ConfigError, WebConfig
from worker import prometheus_runtime


class WithoutQueryStrings(logging.Filter):
    """uvicorn's access log prints each path with its query string, and an
    unsubscribe link's query string is its token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                a.split("?", 1)[0] if isinstance(a, str) and a.startswith("/") else a for a in record.args
            )
        return True


WITHOUT_QUERY_STRINGS = WithoutQueryStrings()


class _Server(uvicorn.Server):
    """Leaves SIGINT and SIGTERM to the process's own handlers, which in
    `orders up` stop the worker too; it stops when told."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def start(config: WebConfig, stop: asyncio.Event, **app_args: Any) -> asyncio.Task[None]:
    """Listen at once (so a busy port fails here, plainly) and serve until
    `stop` is set; `app_args` go to create_app."""
    app = create_app(config, **app_args)
    try:
        listener = socket.create_server((config.host, config.port))
    except OSError as err:
        raise ConfigError(
            f"the HTTP service cannot listen on {config.host}:{config.port} ({os.strerror(err.errno or 0)}); "
            "set WEB_HOST or WEB_PORT"
        ) from None
    logging.getLogger("uvicorn.access").addFilter(WITHOUT_QUERY_STRINGS)
    # log_config=None: uvicorn logs through the process's logging set-up.
    server = _Server(uvicorn.Config(app, lifespan="on", log_config=None, timeout_graceful_shutdown=10))

    async def serve_until_stopped() -> None:
        async def watch() -> None:
            await stop.wait()
            server.should_exit = True

        watcher = asyncio.create_task(watch())
        try:
            await server.serve(sockets=[listener])
        except SystemExit:  # uvicorn's way to fail a start-up; it logged why
            raise ConfigError("the HTTP service could not start (see the log): is PostgreSQL up at DATABASE_URL?") from None
        finally:
            watcher.cancel()
            listener.close()

    return asyncio.create_task(serve_until_stopped())


async def serve(config: WebConfig) -> None:
    """`orders web`: serve until SIGINT or SIGTERM, with its metrics on their own port."""
    runtime = prometheus_runtime(config.metrics_address, "WEB_METRICS_PORT") if config.metrics_address else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await start(config, stop, runtime=runtime)
