"""`orders up`, the README's run command, on its embedded defaults: every
part comes up (the HTTP service, the dev server's Web UI wired to the codec
server, the codec server trusting only the UI's origin without a token), and
SIGTERM stops them all, leaving no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
# Fixed by `orders up` (README): Temporal, its Web UI, the HTTP service, the codec server.
PORTS = (7233, 8233, 8000, 8089)
UI_ORIGIN = "http://localhost:8233"
CODEC = "http://127.0.0.1:8089"
# Settings that would make `orders up` use something other than its embedded defaults.
NOT_EMBEDDED = ("TEMPORAL_ADDRESS", "DATABASE_URL", "PAYLOAD_ENCRYPTION_KEYS", "PAYLOAD_ENCRYPTION_KEYS_FILE", "CODEC_SERVER_TOKEN")


def busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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


@pytest.mark.may_skip("a developer's own `orders up` holds the fixed ports it needs; in CI a taken port fails")
def test_orders_up_runs_every_part_and_stops_them_all(tmp_path: Path):
    if any(busy(port) for port in PORTS):
        taken = f"one of the ports orders up uses ({', '.join(map(str, PORTS))}) is taken"
        if os.environ.get("CI"):  # a clean machine: nothing else may hold them
            pytest.fail(taken)
        pytest.skip(f"{taken} on this machine (an `orders up` running?)")
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in NOT_EMBEDDED}
    env["ORDERS_DATA_DIR"] = str(data)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "starter.cli", "up"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        assert wait_for("http://localhost:8000/healthz", deadline, up).json() == {"status": "ok"}
        settings = wait_for(f"{UI_ORIGIN}/api/v1/settings", deadline, up).json()
        assert settings["Codec"]["Endpoint"] == CODEC
        # The UI's origin decodes without a token; anyone else needs it.
        preflight = httpx.options(
            f"{CODEC}/decode",
            headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
        )
        assert preflight.status_code in (200, 204) and preflight.headers["access-control-allow-origin"] == UI_ORIGIN
        body = {"payloads": []}
        assert httpx.post(f"{CODEC}/decode", json=body, headers={"Origin": UI_ORIGIN}).status_code == 200
        assert httpx.post(f"{CODEC}/decode", json=body).status_code == 401
        token = (data / "codec-server-token").read_text().strip()
        assert httpx.post(f"{CODEC}/decode", json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 200
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
