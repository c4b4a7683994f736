"""The actions the core asks the adapters to carry out, and the transaction ids that make them
idempotent.

Actions are plain data so they can wait in the durable outbox: ``to_payload``/``from_payload``
round-trip them through JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.core.digest import blake2b_hex
from bridge.core.model import EventRef


def txn_id(source_network: str, event_id: str, target_network: str, action: str) -> str:
    """The transaction id for one action: the same source and target always give the same id.

    Synapse's idempotency cache is keyed on the request path and the appservice, not on the
    ghost, so the id must be unique per (source event, target network, action).
    """
    material = "\x00".join((source_network, event_id, target_network, action)).encode("utf-8")
    return "tb1" + blake2b_hex(material, 16, b"tribridge-txn")


@dataclass(frozen=True)
class SendMessage:
    """Send `content` into `room_id` on `network` as the ghost standing for the source sender."""

    network: str
    room_id: str
    ghost: str  # the ghost's localpart on `network`
    source: EventRef
    content: Mapping[str, Any]
    txn_id: str
    # The sender's own linked account on the target network: if it is in the room, the message
    # is not mirrored to it as a ghost.
    unless_member: str | None = None
    # The event type sent: encrypted messages, device announcements and key shares cross too.
    event_type: str = "m.room.message"

    kind = "message"

    @property
    def origin(self) -> tuple[str, str]:
        """(network, event id) of the event this action carries out."""
        return (self.source.network, self.source.event_id)

    def to_payload(self) -> dict[str, Any]:
        return {
            "ghost": self.ghost,
            "source": _ref_payload(self.source),
            "content": dict(self.content),
            **({"unless_member": self.unless_member} if self.unless_member else {}),
            **({"type": self.event_type} if self.event_type != "m.room.message" else {}),
        }


@dataclass(frozen=True)
class JoinRoom:
    """The bot joins `room_id` on `network` (it was invited to a portal room)."""

    network: str
    room_id: str
    txn_id: str
    invite_event: str = ""

    kind = "join"

    @property
    def origin(self) -> tuple[str, str]:
        return (self.network, self.invite_event)

    def to_payload(self) -> dict[str, Any]:
        return {"invite_event": self.invite_event}


@dataclass(frozen=True)
class SendNotice:
    """The bot posts a notice into `room_id` on `network`, e.g. "not delivered to Instagram"."""

    network: str
    room_id: str
    about: str  # the event id on `network` the notice is about
    content: Mapping[str, Any]
    txn_id: str

    kind = "notice"

    @property
    def origin(self) -> tuple[str, str]:
        return (self.network, self.about)

    def to_payload(self) -> dict[str, Any]:
        return {"about": self.about, "content": dict(self.content)}


@dataclass(frozen=True)
class LeaveRoom:
    """The ghost `ghost` leaves `room_id` on `network` (the person it stands for left)."""

    network: str
    room_id: str
    ghost: str
    txn_id: str
    about: str = ""  # the event that asked for it

    kind = "leave"

    @property
    def origin(self) -> tuple[str, str]:
        return (self.network, self.about)

    def to_payload(self) -> dict[str, Any]:
        return {"ghost": self.ghost, "about": self.about}


@dataclass(frozen=True)
class BotTask:
    """Work for the bot on `network`, about `room_id`: a command to run, an invite to answer,
    a DM request accepted or declined, the bot removed from a room. `data` says which."""

    network: str
    room_id: str
    task: str
    data: Mapping[str, Any]
    txn_id: str
    about: str = ""  # the event that asked for it

    kind = "bot"

    @property
    def origin(self) -> tuple[str, str]:
        return (self.network, self.about)

    def to_payload(self) -> dict[str, Any]:
        return {"task": self.task, "data": dict(self.data), "about": self.about}


@dataclass(frozen=True)
class Redact:
    """Redact, on `network`, the copy of the source event `redacts`, as the redactor's ghost."""

    network: str
    room_id: str
    ghost: str
    source: EventRef  # the redaction event
    redacts: str  # the redacted event's id on the source network
    reason: str | None
    txn_id: str

    kind = "redact"

    @property
    def origin(self) -> tuple[str, str]:
        return (self.source.network, self.source.event_id)

    def to_payload(self) -> dict[str, Any]:
        return {
            "ghost": self.ghost,
            "source": _ref_payload(self.source),
            "redacts": self.redacts,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Member:
    """A membership change of a person, done to their ghost on `network`: `op` is join, invite,
    kick, ban or unban. `actor` is the ghost of whoever invited, kicked or banned (None: the
    person joined by themselves); the bot stands in when the actor's ghost may not."""

    network: str
    room_id: str
    ghost: str  # the ghost of the person whose membership changes
    person: str  # their user id on the source network
    op: str
    source: EventRef  # the member event; its sender is the actor
    actor: str | None
    reason: str | None
    txn_id: str

    kind = "member"
    OPS = ("join", "invite", "kick", "ban", "unban")

    @property
    def origin(self) -> tuple[str, str]:
        return (self.source.network, self.source.event_id)

    def to_payload(self) -> dict[str, Any]:
        return {"ghost": self.ghost, "person": self.person, "op": self.op,
                "source": _ref_payload(self.source), "actor": self.actor, "reason": self.reason}


@dataclass(frozen=True)
class GhostSync:
    """The person changed their name or avatar: their ghost on `network` follows, if it exists.
    `room_id` is the room where the change was seen (the outbox orders per room)."""

    network: str
    room_id: str
    ghost: str
    source: EventRef  # the member event; its sender is the person
    txn_id: str
    # The name the member event gives them, when it changed: their own name (the ghost is
    # renamed everywhere) or one for that room alone (the ghost's name in `room_id` alone).
    name: str | None = None

    kind = "profile"

    @property
    def origin(self) -> tuple[str, str]:
        return (self.source.network, self.source.event_id)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ghost": self.ghost, "source": _ref_payload(self.source)}
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class RoomState:
    """A portal room's name, topic or avatar changed: the bot sets it on `room_id` too."""

    network: str
    room_id: str
    event_type: str  # m.room.name, m.room.topic or m.room.avatar
    content: Mapping[str, Any]  # an avatar's url is still the source's: delivery carries it
    source: EventRef
    txn_id: str

    kind = "state"

    @property
    def origin(self) -> tuple[str, str]:
        return (self.source.network, self.source.event_id)

    def to_payload(self) -> dict[str, Any]:
        return {"type": self.event_type, "content": dict(self.content),
                "source": _ref_payload(self.source)}


Action = (SendMessage | JoinRoom | SendNotice | LeaveRoom | BotTask | Redact | Member | GhostSync
          | RoomState)


def _ref_payload(ref: EventRef) -> dict[str, str]:
    return {"network": ref.network, "room_id": ref.room_id, "event_id": ref.event_id,
            "sender": ref.sender}


def _ref(src: Mapping[str, Any]) -> EventRef:
    return EventRef(src["network"], src["room_id"], src["event_id"], src["sender"])


def from_payload(
    kind: str, network: str, room_id: str, txn: str, payload: Mapping[str, Any]
) -> Action:
    if kind == SendMessage.kind:
        return SendMessage(
            network=network,
            room_id=room_id,
            ghost=payload["ghost"],
            source=_ref(payload["source"]),
            content=payload["content"],
            txn_id=txn,
            unless_member=payload.get("unless_member"),
            event_type=payload.get("type", "m.room.message"),
        )
    if kind == JoinRoom.kind:
        return JoinRoom(network, room_id, txn, payload.get("invite_event", ""))
    if kind == SendNotice.kind:
        return SendNotice(network, room_id, payload["about"], payload["content"], txn)
    if kind == Redact.kind:
        return Redact(network, room_id, payload["ghost"], _ref(payload["source"]),
                      payload["redacts"], payload.get("reason"), txn)
    if kind == LeaveRoom.kind:
        return LeaveRoom(network, room_id, payload["ghost"], txn, payload.get("about", ""))
    if kind == BotTask.kind:
        return BotTask(network, room_id, payload["task"], payload["data"], txn,
                       payload.get("about", ""))
    if kind == Member.kind:
        return Member(network, room_id, payload["ghost"], payload["person"], payload["op"],
                      _ref(payload["source"]), payload.get("actor"), payload.get("reason"), txn)
    if kind == GhostSync.kind:
        name = payload.get("name")
        return GhostSync(network, room_id, payload["ghost"], _ref(payload["source"]), txn,
                         name if isinstance(name, str) else None)
    if kind == RoomState.kind:
        return RoomState(network, room_id, payload["type"], payload["content"],
                         _ref(payload["source"]), txn)
    raise ValueError(f"unknown action kind {kind!r}")


@dataclass(frozen=True)
class ProfileSeen:
    """A person's display name as their own network shows it (None: they set none)."""

    network: str
    user_id: str
    display_name: str | None
    avatar_url: str | None = None
