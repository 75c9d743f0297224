"""What an order costs in history bytes beyond its payloads (python -m bench
history measures it all): the overhead the worker itself sets on events."""

from __future__ import annotations

from temporalio.worker._worker import load_default_build_id

from workflows.models import JourneySettings
from worker import build_worker


async def test_the_worker_stamps_a_short_build_id_that_still_follows_the_code(ts_env, pool, provider_config):
    """The build id goes on every workflow task's started and completed event
    and every activity's started event (46 events of a happy-path order): the
    SDK's default, an MD5 of the loaded code in 32 hex digits, cut to 8."""
    worker = build_worker(ts_env.client, pool, provider_config, JourneySettings(), task_queue="tq-build-id")
    build_id = worker.config()["build_id"]
    assert len(build_id) == 8 and load_default_build_id().startswith(build_id)
