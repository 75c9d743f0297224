"""SendGrid email: the request body built by the official package's helpers
(`Mail`), with the headers its client sends, and sent by aiohttp on the
caller's event loop (the official client is blocking); its errors as the
official client raises them (python_http_client's HTTPError by status). A
mail is looked up in Email Activity by the ledger key it carries as the
custom arg `message_key`."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Protocol
from urllib.parse import urlencode

from python_http_client.exceptions import HTTPError, err_dict
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Attachment as SendGridAttachment
from sendgrid.helpers.mail import ContentId, CustomArg, Disposition, FileContent, FileName, FileType, Header, Mail
from yarl import URL

from providers import LazySession, LookUpUnavailable, RenderedMessage


class SendGridSettings(Protocol):
    """What the client reads of the worker's settings (ProviderConfig)."""

    @property
    def sendgrid_api_key(self) -> str | None: ...
    @property
    def sendgrid_api_host(self) -> str: ...
    @property
    def email_from(self) -> str: ...
    @property
    def email_from_name(self) -> str | None: ...
    @property
    def request_timeout(self) -> float: ...
    @property
    def sendgrid_settle_after(self) -> timedelta: ...


# Email Activity answers these when the account lacks the add-on or the API
# key lacks Email Activity access (401, 403), or the search is not one it takes
# (400, 404): asking again will not help.
EMAIL_ACTIVITY_WILL_NOT_SAY = (400, 401, 403, 404)


class SendGridEmail:
    name = "sendgrid"
    title = "SendGrid"
    credentials = "the API key"
    sends = "email sends"

    def __init__(self, settings: SendGridSettings) -> None:
        host = settings.sendgrid_api_host.rstrip("/")
        self._mail_send = f"{host}/v3/mail/send"
        self._email_activity = f"{host}/v3/messages"
        # What the official client sends with each request: the API key as
        # a bearer token, its User-Agent, Accept (and Content-Type with a body).
        self._headers = dict(SendGridAPIClient(api_key=settings.sendgrid_api_key, host=host).client.request_headers)
        self._session = LazySession(settings.request_timeout)
        self._from = (settings.email_from, settings.email_from_name) if settings.email_from_name else settings.email_from
        # Mail Send takes no idempotency key: only Email Activity (a paid
        # add-on) can tell whether an unanswered mail arrived, and it shows a
        # mail only minutes after SendGrid took it.
        self.visible_after = settings.sendgrid_settle_after

    async def send(self, message: RenderedMessage) -> str:
        body = json.dumps(self._mail(message).get()).encode()
        headers, _ = await self._request("POST", self._mail_send, body)
        return headers.get("X-Message-Id") or f"sendgrid-{message.key}"

    def _mail(self, message: RenderedMessage) -> Mail:
        mail = Mail(
            from_email=self._from,
            to_emails=message.recipient,
            subject=message.subject,
            plain_text_content=message.text,
            html_content=message.html,
        )
        # Carried into SendGrid's event webhook so deliveries map back to the
        # ledger. Per personalization: the spec types only that one as an object.
        mail.personalizations[0].add_custom_arg(CustomArg("message_key", message.key))
        # The message's own headers (List-Unsubscribe...), in the top-level `headers` object.
        for name, value in message.headers.items():
            mail.add_header(Header(name, value))
        for attached in message.attachments:
            mail.add_attachment(
                SendGridAttachment(
                    FileContent(base64.b64encode(attached.content).decode()),
                    FileName(attached.filename),
                    FileType(attached.content_type),
                    Disposition("inline" if attached.content_id else "attachment"),
                    ContentId(attached.content_id) if attached.content_id else None,
                )
            )
        return mail

    async def look_up(self, message: RenderedMessage) -> str | None:
        """Searched in Email Activity by the custom arg every mail carries
        (`message_key`, the ledger key): SendGrid's msg_id if it took it."""
        if '"' in message.key or "\\" in message.key:  # the query language has no escape for these
            raise LookUpUnavailable(f"{message.key!r} cannot be searched for in SendGrid Email Activity")
        query = f"unique_args['message_key']=\"{message.key}\""
        # Encoded as the official client encodes it, and sent as it is.
        url = URL(f"{self._email_activity}?{urlencode(sorted({'query': query, 'limit': 1}.items()), True)}", encoded=True)
        try:
            _, body = await self._request("GET", url)
        except HTTPError as err:
            if err.status_code in EMAIL_ACTIVITY_WILL_NOT_SAY:
                reason = "refused the search" if err.status_code == 400 else (
                    "is not available to this account and API key (a paid add-on, and a key with Email Activity access)"
                )
                raise LookUpUnavailable(f"SendGrid Email Activity {reason} ({err.status_code})") from None
            raise
        found = json.loads(body or b"{}").get("messages") or []
        return found[0]["msg_id"] if found else None

    async def _request(self, method: str, url: str | URL, body: bytes | None = None) -> tuple[Mapping[str, str], bytes]:
        """The answer's headers and body; an answer that is not 2xx raised
        as the official client raises it (urllib raises for those)."""
        headers = {**self._headers, "Content-Type": "application/json"} if body is not None else self._headers
        async with self._session.get().request(method, url, data=body, headers=headers, allow_redirects=False) as response:
            answer = await response.read()
        if not 200 <= response.status < 300:
            raise err_dict.get(response.status, HTTPError)(response.status, response.reason, answer, response.headers)
        return response.headers, answer

    async def close(self) -> None:
        await self._session.close()
