"""Plain data the core reasons about: networks, portals and references to events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

IdentityKind = Literal["phone", "handle", "email"]
IDENTITY_KINDS: tuple[IdentityKind, ...] = ("phone", "handle", "email")


@dataclass(frozen=True)
class Network:
    """One homeserver and its users, as far as the core needs to know it."""

    id: str
    label: str
    server_name: str
    identity: IdentityKind
    bot: str
    ghost_prefix: str
    expose_identity: bool

    @property
    def bot_user_id(self) -> str:
        return f"@{self.bot}:{self.server_name}"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"


@dataclass(frozen=True)
class Portal:
    """A set of linked rooms, at most one per network, that behave as one conversation."""

    portal_id: str
    rooms: Mapping[str, str] = field(default_factory=dict)  # network id -> room id
    # Whether name, topic and avatar changes cross; None: the bridge's default.
    mirror_state: bool | None = None

    def others(self, network_id: str) -> list[tuple[str, str]]:
        """The (network, room) pairs of the portal other than `network_id`'s, in a stable order."""
        return sorted((n, r) for n, r in self.rooms.items() if n != network_id)


@dataclass(frozen=True)
class EventRef:
    """Where an event came from: enough to map it and to find its sender's profile."""

    network: str
    room_id: str
    event_id: str
    sender: str
