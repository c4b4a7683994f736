"""A pure router: (method, path) to a handler and its decoded path parameters.

Patterns are literal paths with ``{name}`` segments. A path that matches no pattern is a 404,
one that matches with another method a 405; both in the Matrix error shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from bridge.http.types import Request, Response, matrix_error

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    segments: tuple[str, ...]
    handler: Handler


class Router:
    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append(Route(method, tuple(pattern.strip("/").split("/")), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | Response:
        found = self.find(method, path)
        if found is not None:
            return found
        if any(_match(route.segments, path.strip("/").split("/")) is not None
               for route in self._routes):
            return matrix_error(405, "M_UNRECOGNIZED", f"method {method} not allowed here")
        return matrix_error(404, "M_UNRECOGNIZED", "unrecognized request")

    def find(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        """The handler for (method, path), or None. Builds no error answer: a miss here is the
        common case for a router tried before another (every pushed transaction passes the
        public routes first)."""
        parts = path.strip("/").split("/")
        for route in self._routes:
            if route.method == method:
                params = _match(route.segments, parts)
                if params is not None:
                    return route.handler, params
        return None


def _match(pattern: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(parts):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, parts, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = unquote(got, errors="strict")
        elif want != got:
            return None
    return params
