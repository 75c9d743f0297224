"""`orders up`, the README's run command, on its embedded defaults: every
part comes up (the HTTP service, the dev server's Web UI wired to the codec
server, the codec server trusting only the UI's origin without a token), and
SIGTERM stops them all, leaving no process behind. Every port it listens on
comes from the environment, so this test takes free ones and runs beside
anything else (a developer's own `orders up`, other test workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.test_web import unused_port

REPO = Path(__file__).resolve().parent.parent
# Settings that would make `orders up` use something other than its embedded defaults.
NOT_EMBEDDED = ("TEMPORAL_ADDRESS", "DATABASE_URL", "PAYLOAD_ENCRYPTION_KEYS", "PAYLOAD_ENCRYPTION_KEYS_FILE", "CODEC_SERVER_TOKEN")


def processes_using(path: Path) -> list[int]:
    """Processes whose command line names `path` (the embedded PostgreSQL and dev server do)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(path) in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def wait_for(url: str, deadline: float, up: subprocess.Popen) -> httpx.Response:
    while True:
        assert up.poll() is None, f"orders up exited with {up.returncode}"
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.5)


def test_orders_up_runs_every_part_and_stops_them_all(tmp_path: Path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in NOT_EMBEDDED}
    env["ORDERS_DATA_DIR"] = str(data)
    # Temporal, its Web UI, the HTTP service, the codec server (defaults 7233, 8233, 8000, 8089).
    ports = {name: unused_port() for name in ("TEMPORAL_DEV_PORT", "TEMPORAL_UI_PORT", "WEB_PORT", "CODEC_PORT")}
    env.update({name: str(port) for name, port in ports.items()})
    ui_origin = f"http://localhost:{ports['TEMPORAL_UI_PORT']}"
    codec = f"http://127.0.0.1:{ports['CODEC_PORT']}"
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "starter.cli", "up"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        assert wait_for(f"http://localhost:{ports['WEB_PORT']}/healthz", deadline, up).json() == {"status": "ok"}
        settings = wait_for(f"{ui_origin}/api/v1/settings", deadline, up).json()
        assert settings["Codec"]["Endpoint"] == codec
        # The UI's origin decodes without a token; anyone else needs it.
        preflight = httpx.options(
            f"{codec}/decode",
            headers={"Origin": ui_origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
        )
        assert preflight.status_code in (200, 204) and preflight.headers["access-control-allow-origin"] == ui_origin
        body = {"payloads": []}
        assert httpx.post(f"{codec}/decode", json=body, headers={"Origin": ui_origin}).status_code == 200
        assert httpx.post(f"{codec}/decode", json=body).status_code == 401
        token = (data / "codec-server-token").read_text().strip()
        assert httpx.post(f"{codec}/decode", json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        with socket.create_connection(("127.0.0.1", ports["TEMPORAL_DEV_PORT"]), timeout=5):
            pass  # the dev server's frontend
        assert processes_using(data), "the embedded servers run from the data folder"
    finally:
        up.send_signal(signal.SIGTERM)
        returncode = up.wait(60)
        log.close()
    assert returncode == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert "DATABASE_URL is required" not in (tmp_path / "up.log").read_text()
    deadline = time.monotonic() + 20
    while processes_using(data) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_using(data) == []


def test_orders_up_refuses_a_port_that_is_not_one_before_starting_anything(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in NOT_EMBEDDED}
    env.update(ORDERS_DATA_DIR=str(tmp_path / "data"), TEMPORAL_UI_PORT="eighty")
    done = subprocess.run([sys.executable, "-m", "starter.cli", "up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "error: TEMPORAL_UI_PORT must be a port number, got 'eighty'" in done.stderr, done.stderr
    assert not (tmp_path / "data").exists(), "something started"
