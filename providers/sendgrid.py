"""SendGrid email through its official client (blocking: callers run it in
a thread). A mail is looked up in Email Activity by the ledger key it
carries as the custom arg `message_key`."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Protocol

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Attachment as SendGridAttachment
from sendgrid.helpers.mail import ContentId, CustomArg, Disposition, FileContent, FileName, FileType, Header, Mail

from providers import LookUpUnavailable, RenderedMessage
from providers.privacy import HTTP_CLIENT_LOGGERS, keep_customer_data_out_of



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
        keep_customer_data_out_of(HTTP_CLIENT_LOGGERS)
        self._client = SendGridAPIClient(api_key=settings.sendgrid_api_key, host=settings.sendgrid_api_host)
        self._client.client.timeout = settings.request_timeout
        self._from = (settings.email_from, settings.email_from_name) if settings.email_from_name else settings.email_from
        # Mail Send takes no idempotency key: only Email Activity (a paid
        # add-on) can tell whether an unanswered mail arrived, and it shows a
        # mail only minutes after SendGrid took it.
        self.visible_after = settings.sendgrid_settle_after

    def send(self, message: RenderedMessage) -> str:
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
        response = self._client.send(mail)
        return response.headers.get("X-Message-Id") or f"sendgrid-{message.key}"

    def look_up(self, message: RenderedMessage) -> str | None:
        """Searched in Email Activity by the custom arg every mail carries
        (`message_key`, the ledger key): SendGrid's msg_id if it took it."""
        if '"' in message.key or "\\" in message.key:  # the query language has no escape for these
            raise LookUpUnavailable(f"{message.key!r} cannot be searched for in SendGrid Email Activity")
        query = f"unique_args['message_key']=\"{message.key}\""
        try:
            response = self._client.client.messages.get(query_params={"query": query, "limit": 1})
        except HTTPError as err:
            if err.status_code in EMAIL_ACTIVITY_WILL_NOT_SAY:
                reason = "refused the search" if err.status_code == 400 else (
                    "is not available to this account and API key (a paid add-on, and a key with Email Activity access)"
                )
                raise LookUpUnavailable(f"SendGrid Email Activity {reason} ({err.status_code})") from None
            raise
        found = json.loads(response.body or b"{}").get("messages") or []
        return found[0]["msg_id"] if found else None
