"""The demo's customers answer as a customer would: they follow the links
in the messages they got (read from the ledger's stored rendering, which
holds them whether the mail went to SendGrid or to the outbox) and use the
HTTP service's pages. The case a complaint opens is left unacknowledged
until it has escalated twice, then resolved as an operator would."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from workflows.ledger_key import LedgerKey
from workflows.models import CaseView, case_workflow_id

# How long a message may take to be rendered and sent before the demo gives up on it.
MESSAGE_TIMEOUT = 30.0
# Two SLAs of DEMO_WORKER_ENV's CASE_SLA, and room to spare.
CASE_TIMEOUT = 60.0
RESOLUTION = "We spoke to the courier: they ring from now on. A 10 PLN voucher is on its way to you."


class DemoAnswers:
    def __init__(self, database_url: str, web_url: str) -> None:
        self._database_url = database_url
        self._web_url = web_url.rstrip("/")
        # What each answer came to, for the demo's summary.
        self.told: list[str] = []

    async def _text_of(self, ledger_key: str) -> str | None:
        conn = await asyncpg.connect(self._database_url)
        try:
            for _ in range(int(MESSAGE_TIMEOUT * 2)):
                text = await conn.fetchval(
                    "SELECT body_text FROM message_ledger WHERE key = $1 AND state = 'sent'", ledger_key
                )
                if text:
                    return text
                await asyncio.sleep(0.5)
            return None
        finally:
            await conn.close()

    async def _links(self, ledger_key: str, path: str) -> list[str]:
        """The links to `path` in the message, pointed at this service."""
        text = await self._text_of(ledger_key) or ""
        urls = [urlsplit(u) for u in re.findall(r"https?://\S+", text)]
        return [f"{self._web_url}{u.path}?{u.query}" for u in urls if u.path == path]

    async def rate(self, order_id: str, stars: list[int], seller: int, comment: str) -> bool:
        """Opens the feedback request's link and rates each item and the seller."""
        links = await self._links(str(LedgerKey.of_order(order_id, "feedback_request", "email")), "/feedback")
        if not links:
            return False
        form = {f"item-{i}": str(n) for i, n in enumerate(stars)} | {"seller": str(seller), "comment": comment}
        async with aiohttp.ClientSession() as http:
            async with http.get(links[0]) as page:
                ok = page.status == 200
            if ok:
                async with http.post(links[0], data=form) as answer:
                    ok = answer.status == 200
        self.told.append(f"{order_id}: rated through the feedback page, items {stars}, seller {seller}" + ("" if ok else " FAILED"))
        return ok

    async def vote(self, ledger_key: str, helpful: bool, comment: str | None = None) -> bool:
        """Clicks yes or no under the mail, confirms, and says what was wrong."""
        links = await self._links(ledger_key, "/helpful")
        if len(links) != 2:
            return False
        link = links[0 if helpful else 1]
        async with aiohttp.ClientSession() as http:
            async with http.post(link) as answer:
                page = await answer.text()
                ok = answer.status == 200
            if ok and comment is not None:
                [action] = re.findall(r'action="([^"]+)"', page)
                target = urlsplit(action.replace("&amp;", "&"))
                async with http.post(f"{self._web_url}{target.path}?{target.query}", data={"comment": comment}) as answer:
                    ok = answer.status == 200
        said = ("yes" if helpful else "no") + (", with what was wrong" if comment else "")
        self.told.append(f"{ledger_key}: \"Was this helpful?\" {said}" + ("" if ok else " FAILED"))
        return ok

    async def escalate_and_resolve(self, client: Client, order_id: str) -> CaseView | None:
        """The order's first case: nobody acknowledges it, so it escalates
        to the team lead and then the next level; then it is resolved."""
        case_id = case_workflow_id(order_id, 1)
        handle = client.get_workflow_handle(case_id, result_type=CaseView)
        view = await _case_until(handle, lambda v: v.escalation_level >= 2)
        if view is None:
            self.told.append(f"{case_id}: did not escalate twice within {CASE_TIMEOUT:.0f} s")
            return None
        view = await handle.execute_update("case_resolved", {"resolution": RESOLUTION, "by": "demo care lead"}, result_type=CaseView)
        self.told.append(f"{case_id}: opened by the vote, escalated twice (now {view.owner}), resolved; timeline:")
        self.told.extend(f"    {line}" for line in view.timeline)
        return view


async def _case_until(handle: WorkflowHandle, done: Callable[[CaseView], bool]) -> CaseView | None:
    for _ in range(int(CASE_TIMEOUT)):
        try:
            view = await handle.query("status", result_type=CaseView)
            if done(view):
                return view
        except RPCError:
            pass  # not started yet: the relay starts it
        await asyncio.sleep(1)
    return None
