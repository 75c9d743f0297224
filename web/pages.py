"""The HTML pages customers see (unsubscribe, feedback, votes): plain HTML
that works without JavaScript and on a phone. A signed token is in every
page's URL: no referrer, no caching, no framing."""

from __future__ import annotations

import html

from fastapi import Request
from fastapi.responses import HTMLResponse

from messages.signed_tokens import InvalidToken

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}
SHELL = """<!doctype html>
<html lang="en"><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<body style="font-family: sans-serif; max-width: 34em; margin: 3em auto; padding: 0 1em; line-height: 1.5">
{content}
</body></html>
"""

# A forged link is refused; an expired one is gone; a mangled one (a mail
# client's line break) is a bad request.
LINK_STATUS = {"signature": 403, "expired": 410, "malformed": 400}
LINK_TEXT = {
    "signature": "This link is not one of ours, or it was changed on the way. Please use the link in your email as it is.",
    "expired": "This link has expired.",
    "malformed": "This link is incomplete: your email program may have broken it in two. "
    "Please copy the whole link into your browser.",
}


def page(title: str, content: str, status: int = 200) -> HTMLResponse:
    """`content` is HTML: escape what it quotes."""
    return HTMLResponse(SHELL.format(title=html.escape(title), content=content), status_code=status, headers=HEADERS)


def link_refused(request: Request, err: InvalidToken) -> HTMLResponse:
    request.state.rejection = f"token_{err.kind}"  # for CountRejections
    status = LINK_STATUS.get(err.kind, 400)
    return page("Link not valid", f"<h1>This link does not work</h1><p>{LINK_TEXT.get(err.kind, str(err))}</p>", status)
