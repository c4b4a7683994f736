"""One inbound event in, the actions it asks for out.

This is where the bridge decides what crosses: it never relays its own bot and ghosts (no echo
loops), relays only what happens in portal rooms, and rebuilds message content from the fields it
knows rather than passing the source's through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.core.actions import Action, JoinRoom, ProfileSeen, SendMessage, txn_id
from bridge.core.ghosts import ghost_localpart, is_bridge_user, pseudonym
from bridge.core.ids import InvalidId, native_identity
from bridge.core.mentions import rewrite_user_ids
from bridge.core.model import EventRef, Network, Portal

TEXT_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})
HTML_FORMAT = "org.matrix.custom.html"


@dataclass(frozen=True)
class Translation:
    actions: list[Action] = field(default_factory=list)
    profiles: list[ProfileSeen] = field(default_factory=list)
    skipped: str | None = None  # why nothing was done, for debug logs


def _skip(reason: str) -> Translation:
    return Translation(skipped=reason)


def translate(
    event: Mapping[str, Any],
    source: Network,
    networks: Mapping[str, Network],
    portal: Portal | None,
    key: bytes,
) -> Translation:
    """Translate one event pushed by `source`'s homeserver; `portal` is its room's portal."""
    sender = event.get("sender")
    room_id = event.get("room_id")
    event_id = event.get("event_id")
    etype = event.get("type")
    content = event.get("content")
    if not all(isinstance(v, str) for v in (sender, room_id, event_id, etype)):
        return _skip("event lacks sender, room_id, event_id or type")
    if not isinstance(content, Mapping):
        return _skip("event content is not an object")
    assert isinstance(sender, str) and isinstance(room_id, str)
    assert isinstance(event_id, str) and isinstance(etype, str)
    if etype == "m.room.member":
        return _membership(event, content, source, portal)
    if is_bridge_user(sender, source):
        return _skip("sent by the bridge itself")
    if portal is None:
        return _skip("room is not part of a portal")
    if etype == "m.room.message" and "state_key" not in event:
        relayed = _text_content(content)
        if relayed is None:
            return _skip("message type not relayed yet")
        try:
            identity = native_identity(sender, source.identity, source.server_name)
        except InvalidId:
            return _skip("sender is not a valid user id")
        pseudo = pseudonym(key, source.id, identity)
        ref = EventRef(source.id, room_id, event_id, sender)
        actions: list[Action] = []
        for target_id, target_room in portal.others(source.id):
            target = networks.get(target_id)
            if target is None:
                continue
            actions.append(
                SendMessage(
                    network=target_id,
                    room_id=target_room,
                    ghost=ghost_localpart(target, source.id, pseudo),
                    source=ref,
                    content=_for_target(relayed, source, target, key),
                    txn_id=txn_id(source.id, event_id, target_id, "message"),
                )
            )
        return Translation(actions=actions)
    return _skip(f"{etype} not relayed yet")


def _membership(
    event: Mapping[str, Any], content: Mapping[str, Any], source: Network, portal: Portal | None
) -> Translation:
    user = event.get("state_key")
    membership = content.get("membership")
    if not isinstance(user, str) or not isinstance(membership, str):
        return _skip("member event lacks state_key or membership")
    if user == source.bot_user_id:
        if membership == "invite" and portal is not None:
            room_id = str(event["room_id"])
            event_id = str(event["event_id"])
            txn = txn_id(source.id, event_id, source.id, "join")
            join = JoinRoom(source.id, room_id, txn, event_id)
            return Translation(actions=[join])
        return _skip("bot membership needs nothing")
    if is_bridge_user(user, source):
        return _skip("ghost membership")
    if membership != "join":
        return _skip("membership other than join")
    name = content.get("displayname")
    return Translation(
        profiles=[ProfileSeen(source.id, user, name if isinstance(name, str) else None)]
    )


def _for_target(
    content: dict[str, Any], source: Network, target: Network, key: bytes
) -> dict[str, Any]:
    """The content as `target` gets it: user ids of `source` people become their ghosts."""
    out = dict(content)
    for field_name in ("body", "formatted_body"):
        if field_name in out:
            out[field_name] = rewrite_user_ids(out[field_name], source, target, key)
    return out


def _text_content(content: Mapping[str, Any]) -> dict[str, Any] | None:
    msgtype = content.get("msgtype")
    body = content.get("body")
    if not isinstance(msgtype, str) or msgtype not in TEXT_MSGTYPES or not isinstance(body, str):
        return None
    out: dict[str, Any] = {"msgtype": msgtype, "body": body}
    formatted = content.get("formatted_body")
    if content.get("format") == HTML_FORMAT and isinstance(formatted, str):
        out["format"] = HTML_FORMAT
        out["formatted_body"] = formatted
    return out
