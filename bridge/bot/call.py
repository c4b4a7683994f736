"""What a command handler gets (`Call`) and how it says no (`Denied`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.core.commands import Context, Invocation
from bridge.core.model import Portal

if TYPE_CHECKING:
    from bridge.bot.bot import Bot


class Denied(Exception):
    """A handler's clear "no": the message is the reply."""


@dataclass(frozen=True)
class Call:
    """One command as a handler gets it."""

    network: str
    room_id: str
    sender: str
    event_id: str
    invocation: Invocation
    ctx: Context
    portal: Portal | None

    @property
    def args(self) -> Mapping[str, Any]:
        return self.invocation.args

    def say(self, command: str) -> str:
        """How to type `command` where this one was typed."""
        return f"`{command}`" if self.ctx.in_management else f"`{self.ctx.prefix} {command}`"


Handler = Callable[["Bot", Call], Awaitable[str]]
