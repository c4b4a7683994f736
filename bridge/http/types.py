"""Requests and responses as plain data, shared by the server, the router and the handlers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-encoded, without the query
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)  # filled by the router, decoded


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b"{}"
    content_type: str = "application/json"


# Compact JSON with one encoder for every call: json.dumps with any option set builds a new
# one each time. Answers here and sends in bridge/matrix/client.py use it.
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def json_response(status: int, payload: Any) -> Response:
    return Response(status, compact_json(payload).encode("utf-8"))


def matrix_error(status: int, errcode: str, error: str) -> Response:
    """The error shape Matrix peers expect: ``{"errcode": ..., "error": ...}``."""
    return json_response(status, {"errcode": errcode, "error": error})
