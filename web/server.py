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
    logging.getLogger("uvicorn.access").addFilter(WITHOUT_QUERY_STRINGS)
    return start_app(
        create_app(config, **app_args), config.host, config.port, stop,
        name="the HTTP service", address_settings="WEB_HOST or WEB_PORT",
        start_failure_hint=": is PostgreSQL up at DATABASE_URL?",
    )


def start_app(
    app: Any, host: str, port: int, stop: asyncio.Event, *, name: str, address_settings: str, start_failure_hint: str = ""
) -> asyncio.Task[None]:
    """Serve an ASGI app under uvicorn until `stop` is set, listening at once
    so a busy port fails here, naming the settings that choose another."""
    try:
        listener = socket.create_server((host, port))
    except OSError as err:
        raise ConfigError(
            f"{name} cannot listen on {host}:{port} ({os.strerror(err.errno or 0)}); set {address_settings}"
        ) from None
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
            raise ConfigError(f"{name} could not start (see the log){start_failure_hint}") from None
        finally:
            watcher.cancel()
            listener.close()

    return asyncio.create_task(serve_until_stopped())


async def serve(config: WebConfig) -> None:
    """`orders web`: serve until SIGINT or SIGTERM, with its metrics on their own port."""
    runtime = prometheus_runtime(config.metrics_address, "WEB_METRICS_PORT") if config.metrics_address else None
    await start(config, stop_on_signals(), runtime=runtime)


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
