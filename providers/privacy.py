"""Customer data kept out of what providers' texts and HTTP clients write:
`scrub` masks addresses, numbers and credentials in a text, and
`keep_customer_data_out_of` puts a filter on the loggers of the libraries
that log requests, payloads and headers (recipients, message bodies, the API
key) below WARNING, whatever level the process runs at."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# What provider texts and HTTP client logs may carry that must not be kept.
_SCRUBBED = (
    (re.compile(r"\?\w+=[^\s'\"<>)]*"), "?<query>"),  # the look-up's ?To=...
    (re.compile(r"[\w.+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"(?:\+|%2B)\d{6,15}"), "<phone>"),
    (re.compile(r"\b(?:Bearer|Basic)\s+[\w.=+/-]+", re.IGNORECASE), "<credentials>"),
    (re.compile(r"\bSG\.[\w.-]+"), "<api key>"),
)


def scrub(text: str) -> str:
    for pattern, mask in _SCRUBBED:
        text = pattern.sub(mask, text)
    return text


class WithoutCustomerData(logging.Filter):
    """For the loggers of libraries that write requests, payloads and headers
    below WARNING: those records are dropped, whatever level the process runs
    at (a logger's filter holds where a level can be lowered); the rest are
    scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        record.msg, record.args = scrub(record.getMessage()), ()
        if record.exc_info:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


WITHOUT_CUSTOMER_DATA = WithoutCustomerData()

# Twilio's async client logs each request (URL, with To= for a look-up,
# and headers) and each response below WARNING. aiohttp's own loggers write
# no request, header or body (only its session and .netrc troubles), and
# SendGrid's request goes through aiohttp, so nothing else needs this.
HTTP_CLIENT_LOGGERS = ("twilio.async_http_client",)


def keep_customer_data_out_of(logger_names: Iterable[str]) -> None:
    for name in logger_names:
        logging.getLogger(name).addFilter(WITHOUT_CUSTOMER_DATA)
