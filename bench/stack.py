"""What a benchmark or drill runs on: embedded PostgreSQL, the Temporal dev
server on loopback, the fake providers, and workers as child processes that
can be measured, killed and restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from codec import KEYS_VARIABLE, DataKeys, PayloadKeys, new_key_entry, payload_keys_from_env
from starter.embedded import start_dev_server, start_postgres, stop_postgres
from store.database import migrate
from tests.fake_providers import FakeProviders, serve
from workflows.models import TASK_QUEUE

REPO = Path(__file__).resolve().parents[1]
TWILIO_SID = "AC" + "b" * 32
TWILIO_TOKEN = "bench-token"
# The bench's own erasure salt (store/erasure_salt.py), for its database only.
BENCH_ERASURE_SALT = "bench-erasure-salt-not-secret"

# Short delays so a whole journey takes seconds; the deadlines stay long so the
# happy path never hits them. No SMS quiet hours: the figures must not depend
# on the hour the benchmark runs at (in the evening every SMS would wait for
# the morning).
BENCH_JOURNEY = {
    "JOURNEY_FEEDBACK_DELAY": "1s",
    "JOURNEY_RECOMMENDATIONS_DELAY": "2s",
    "JOURNEY_FEEDBACK_WINDOW": "1s",
    # A report of a message after the journey is over waits for nothing here:
    # with delays of seconds, the window would keep every order open.
    "JOURNEY_REPORT_WINDOW": "0s",
    "JOURNEY_SMS_QUIET_FROM": "0s",
    "JOURNEY_SMS_QUIET_UNTIL": "0s",
}


class WorkerProcess:
    """A worker in its own process, so its memory is its own."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args, self.env, self.log_path = args, env, log_path
        self.proc: subprocess.Popen | None = None
        self.peak_rss_mb = 0.0
        # py-spy samplers attached to the process (`profile_into`), ended with it.
        self.profilers: list[subprocess.Popen] = []
        self.profile_paths: list[Path] = []

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def profile_into(self, directory: Path, name: str) -> None:
        """Have `start_profiling` sample the process with py-spy until it
        ends: a flame graph (`name`.svg) and the same stacks collapsed, one
        per line with its count (`name`.txt, for bench.profile). py-spy attaches from
        outside, without pausing the process (--nonblocking), so its own CPU
        is not the worker's. Only stacks holding the GIL are kept (a thread
        waiting on a socket is not working); so the SDK's Rust core (gRPC,
        history, activations' protobuf) is not seen, except where it holds
        the GIL to call into Python."""
        self.profile_paths = [directory / f"{name}.svg", directory / f"{name}.txt"]

    def start_profiling(self) -> None:
        """Once the worker is up, so that its imports are not in the profile."""
        spy = Path(sys.executable).with_name("py-spy")
        if self.profile_paths and not spy.exists():
            raise SystemExit(f"error: --profile needs py-spy next to {sys.executable}: pip install py-spy")
        for path in self.profile_paths:
            fmt = "flamegraph" if path.suffix == ".svg" else "raw"
            self.profilers.append(subprocess.Popen(
                [str(spy), "record", "--pid", str(self.proc.pid), "--nonblocking", "--gil", "--rate", "200", "--format", fmt, "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=open(self.log_path.with_suffix(".py-spy.log"), "ab"),
            ))

    def _wait_for_profilers(self) -> None:
        """py-spy writes its file once the process it samples has exited."""
        for profiler in self.profilers:
            profiler.wait(60)
        self.profilers.clear()

    def _status(self, field_name: str) -> float:
        """A VmRSS/VmHWM figure from /proc in MiB; 0 once the process is gone."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError, AttributeError):
            pass
        return 0.0

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def sample_peak(self) -> float:
        """The kernel's high-water mark for this process; kept across restarts."""
        self.peak_rss_mb = max(self.peak_rss_mb, self._status("VmHWM"))
        return self.peak_rss_mb

    def kill(self) -> None:
        self.sample_peak()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._wait_for_profilers()

    def stop(self, grace_seconds: float = 30) -> float:
        """SIGTERM, as a deploy sends, then wait for the worker to finish its
        in-flight work and exit; SIGKILL after `grace_seconds` (Kubernetes'
        default grace period). Returns the seconds until the process was gone."""
        if not self.proc or self.proc.poll() is not None:
            return 0.0
        self.sample_peak()
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._wait_for_profilers()
        return time.monotonic() - began

    @property
    def was_killed(self) -> bool:
        """Whether the last process ended by SIGKILL (`kill`, or `stop` past its grace)."""
        return self.proc is not None and self.proc.returncode == -signal.SIGKILL


@dataclass
class Stack:
    state_dir: Path
    database_url: str
    fakes: FakeProviders
    temporal_address: str
    env: object  # WorkflowEnvironment
    # This run's payload key, for the workers' environment and the drivers' clients.
    key_env: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def payload_keys(self) -> PayloadKeys:
        return payload_keys_from_env(self.key_env)

    def data_keys(self) -> DataKeys:
        """For a client of this stack: its payload key, and the data keys in its database."""
        return DataKeys(self.payload_keys, self.database_url)

    @property
    def client(self):
        return self.env.client

    def our_worker(self, *, provider_timeout: float = 5.0, extra: dict[str, str] | None = None) -> WorkerProcess:
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "DATABASE_URL": self.database_url,
            "SENDGRID_API_KEY": "SG.bench",
            "SENDGRID_API_HOST": self.fakes.base_url,
            "EMAIL_FROM": "orders@shop.example",
            "TWILIO_ACCOUNT_SID": TWILIO_SID,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "TWILIO_API_BASE_URL": self.fakes.base_url,
            "TWILIO_FROM_NUMBER": "+15005550006",
            "PROVIDER_TIMEOUT_SECONDS": str(provider_timeout),
            # Marketing mail carries a signed unsubscribe link.
            "UNSUBSCRIBE_SECRET": "bench-unsubscribe-secret",
            "ERASURE_SALT": BENCH_ERASURE_SALT,
            "WEB_PUBLIC_URL": "http://localhost:8000",
            "LOG_LEVEL": "WARNING",
            # Several workers may run at once: none takes the default metrics port.
            "METRICS_PORT": "0",
            **self.key_env,
            **BENCH_JOURNEY,
            **(extra or {}),
        }
        worker = WorkerProcess([sys.executable, "worker.py"], env, self.state_dir / "worker.log")
        self.workers.append(worker)
        return worker

    def our_web(self, port: int, sendgrid_public_key: str, metrics_port: int) -> WorkerProcess:
        """`orders web` on 127.0.0.1:`port`, verifying what the fakes sign:
        SendGrid's events with `sendgrid_public_key`, Twilio's with the
        workers' auth token; its metrics on `metrics_port`."""
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "DATABASE_URL": self.database_url,
            "UNSUBSCRIBE_SECRET": "bench-unsubscribe-secret",
            "ERASURE_SALT": BENCH_ERASURE_SALT,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": sendgrid_public_key,
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(port),
            "WEB_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "WEB_METRICS_PORT": str(metrics_port),
            "LOG_LEVEL": "WARNING",
            **self.key_env,
        }
        web = WorkerProcess([sys.executable, "-m", "starter.cli", "web"], env, self.state_dir / "web.log")
        self.workers.append(web)
        return web

    def floor_worker(self, notify_addr: str) -> WorkerProcess:
        env = {
            **os.environ, "TEMPORAL_ADDRESS": self.temporal_address, "BENCH_NOTIFY_ADDR": notify_addr,
            "DATABASE_URL": self.database_url, **self.key_env,
        }
        worker = WorkerProcess([sys.executable, "-m", "bench.floor"], env, self.state_dir / "floor.log")
        self.workers.append(worker)
        return worker

    async def shutdown(self) -> None:
        for worker in self.workers:
            worker.stop()
        await self.env.shutdown()
        self.stop_postgres()

    def stop_postgres(self) -> None:
        stop_postgres(self.state_dir / "pg")

    def start_postgres_again(self) -> None:
        start_postgres(self.state_dir / "pg")

    async def restart_temporal(self, down_seconds: float) -> None:
        """Stop the dev server and start it on the same port and database file."""
        port = int(self.temporal_address.rsplit(":", 1)[1])
        await self.env.shutdown()
        await asyncio.sleep(down_seconds)
        self.env = await start_dev_server(self.state_dir / "temporal", self.data_keys(), port=port)


async def start_stack(*, persistent_temporal: bool = False, port: int | None = None, fakes: FakeProviders | None = None) -> Stack:
    # Short path: PostgreSQL's unix socket lives in its data directory.
    state_dir = Path(tempfile.mkdtemp(prefix="olb-"))
    database_url = start_postgres(state_dir / "pg")
    await migrate(database_url)
    fakes, _ = serve(fakes or FakeProviders(keep_requests=False))
    key_env = {KEYS_VARIABLE: new_key_entry("bench")}
    data_keys = DataKeys(payload_keys_from_env(key_env), database_url)
    env = await start_dev_server(state_dir / "temporal" if persistent_temporal else None, data_keys, port=port)
    address = env.client.service_client.config.target_host
    return Stack(state_dir, database_url, fakes, address, env, key_env)


async def wait_for_pollers(
    stack: Stack, task_queue: str = TASK_QUEUE, timeout: float = 60, count: int = 1, worker: WorkerProcess | None = None
) -> None:
    """Until `count` workers poll the queue, so timings do not include start-up.
    With `worker`, until that very process polls (its identity is the SDK's
    default, pid@host): the server lists a stopped worker's pollers for
    minutes, so a count alone would not wait for a restarted one."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        resp = await stack.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=stack.client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            )
        )
        if worker is not None and worker.proc is not None:
            if any(p.identity.startswith(f"{worker.proc.pid}@") for p in resp.pollers):
                return
        elif len(resp.pollers) >= count:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"fewer than {count} worker(s) polled {task_queue} within {timeout} s")


def cpu_seconds(stack: Stack, worker: WorkerProcess) -> dict[str, float]:
    """CPU time used so far by each part of this stack: the worker, the
    Temporal server, PostgreSQL (postmaster and backends), and this driver
    (which also runs the fake providers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    postmaster = int((stack.state_dir / "pg" / "postmaster.pid").read_text().split()[0])
    totals = {"worker": 0.0, "temporal_server": 0.0, "postgres": 0.0, "driver_and_fake_providers": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(stat.parent.name)
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        ppid, used = int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks
        if worker.proc and pid == worker.proc.pid:
            totals["worker"] += used
        elif comm == "temporal" and ppid == os.getpid():
            totals["temporal_server"] += used
        elif postmaster in (pid, ppid):
            totals["postgres"] += used
        elif pid == os.getpid():
            totals["driver_and_fake_providers"] += used
    return totals


async def postgres_transactions(stack: Stack) -> int:
    """Transactions PostgreSQL has counted on the database so far (each
    statement the worker sends outside a transaction is one). Read from its
    statistics, which a backend reports up to a second late: read after the
    work has settled."""
    import asyncpg

    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
    finally:
        await conn.close()
