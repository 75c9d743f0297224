"""The demo's customers answer as a customer would: they follow the links
in the messages they got (read from the ledger's stored rendering, which
holds them whether the mail went to SendGrid or to the outbox) and use the
HTTP service's pages."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from workflows.ledger_key import LedgerKey

# How long a message may take to be rendered and sent before the demo gives up on it.
MESSAGE_TIMEOUT = 30.0


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
