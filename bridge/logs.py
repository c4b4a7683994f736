"""Logging to stderr: tokens masked always, phone numbers and emails masked at INFO and above.

Code never logs tokens on purpose; the filter is the second line of defence for the message of an
exception from a library. Phone numbers and emails may appear in user ids at DEBUG (an admin
debugging a delivery needs them); at INFO and above they become ``<phone>`` and ``<email>``,
whatever logged them (invariant 5). httpx and httpcore are held at WARNING: they log every URL.

Formats: under journald ($JOURNAL_STREAM set) plain lines with a syslog priority prefix, since
the journal adds its own timestamps; elsewhere lines with timestamps; or one JSON object per line
(``log_format = "json"``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}

# E.164 numbers, as bare text or as a Matrix localpart; emails, plain or in the spec's escaping.
# Any script's letters and digits: an address need not be ASCII. A plus may be percent-escaped
# (an id in a URL's path or query), and so may an email's at sign.
_PHONE = re.compile(r"(?:(?<![\w+%])\+|%2[bB])[1-9][0-9]{6,14}(?![0-9])")
_EMAIL = re.compile(r"[\w.%+\-]+(?:@|%40)[\w\-]+(?:\.[\w\-]+)+")
# The spec's escaping (=40 for the at sign, =xx for other bytes), itself percent-escaped in a
# URL's path (%3D40).
_ESCAPED_EMAIL = re.compile(r"[a-z0-9._=%\-]+(?:=|%3[dD])40[a-z0-9.=%\-]+")


def mask_private(text: str) -> str:
    text = _EMAIL.sub("<email>", text)
    text = _ESCAPED_EMAIL.sub("<email>", text)
    return _PHONE.sub("<phone>", text)


class Redact(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def _clean(self, text: str, private: bool) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return mask_private(text) if private else text

    def filter(self, record: logging.LogRecord) -> bool:
        private = record.levelno >= logging.INFO
        message = record.getMessage()
        cleaned = self._clean(message, private)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text, private)
        return True


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Every line: the journal takes each line of a traceback as an entry of its own, and
        # `journalctl -p err` must show the cause with the error.
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if os.environ.get("JOURNAL_STREAM"):
        return JournalFormatter(JOURNAL_FORMAT)
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, secrets: Iterable[str] = (), log_format: str = "text") -> Redact:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    redact = Redact(secrets)
    handler.addFilter(redact)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redact
