"""Canonical JSON and unpadded base64: the bytes that get signed and bound."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from bridge.core.e2ee.errors import Rejected


def canonical(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the same bytes on every network. Text that is not
    UTF-8 (a lone surrogate, which JSON allows) is refused, not signed."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise Rejected("malformed", "a string is not valid Unicode text") from None


def parse_json(raw: bytes, what: str) -> Any:
    """JSON from inside a ciphertext or a box; Rejected for anything unreadable or too deep."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise Rejected("malformed", f"{what} is not readable JSON") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def unb64(text: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise Rejected("malformed", f"{what} is not a base64 string")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("malformed", f"{what} is not valid base64") from None
    if size is not None and len(data) != size:
        raise Rejected("malformed", f"{what} must be {size} bytes, not {len(data)}")
    return data
