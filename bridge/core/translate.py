"""One inbound event in, the actions it asks for out.

This is where the bridge decides what crosses: it never relays its own bot and ghosts (no echo
loops), relays only what happens in portal rooms, and rebuilds message content from the fields it
knows rather than passing the source's through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.core.actions import (
    Action,
    BotTask,
    GhostSync,
    JoinRoom,
    LeaveRoom,
    Member,
    ProfileSeen,
    Redact,
    RoomState,
    SendMessage,
    SendNotice,
    txn_id,
)
from bridge.core.commands import strip_prefix
from bridge.core.ghosts import ghost_localpart, is_bridge_user, is_our_user, pseudonym
from bridge.core.ids import InvalidId, native_identity
from bridge.core.media import (
    DEFAULT_MAX_BYTES,
    MEDIA_MSGTYPES,
    STICKER,
    human_size,
    media_content,
    parse_mxc,
    without_file,
)
from bridge.core.mentions import (
    Owner,
    Private,
    mask_private,
    mentioned_private,
    no_owner,
    rewrite_user_ids,
)
from bridge.core.model import EventRef, Network, Portal
from bridge.core.permissions import Level, Permissions

TEXT_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})
# The E2EE scheme's events (docs/e2ee.md): relayed unchanged, never read.
E2EE_ALGORITHM = "org.tribridge.e2ee.v1"
OPAQUE_TYPES = frozenset(
    {"m.room.encrypted", "org.tribridge.e2ee.device", "org.tribridge.e2ee.keyshare"}
)
HTML_FORMAT = "org.matrix.custom.html"


@dataclass(frozen=True)
class Translation:
    actions: list[Action] = field(default_factory=list)
    profiles: list[ProfileSeen] = field(default_factory=list)
    skipped: str | None = None  # why nothing was done, for debug logs
    # (network, event id) of source events whose still-queued sends are to be cancelled:
    # redacted before they went out.
    cancel: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class RoomInfo:
    """What the store knows of the event's room beyond its portal."""

    manager: str | None = None  # the owner, if this is a management room
    dm_request: int | None = None  # a DM request waiting in this room for `dm_target`
    dm_target: str | None = None


@dataclass(frozen=True)
class Rules:
    permissions: Permissions = field(default_factory=lambda: Permissions({"*": Level.USER}))
    prefix: str = "!tb"
    max_media_bytes: int = DEFAULT_MAX_BYTES
    mirror_state: bool = True  # room name, topic and avatar, for portals that say nothing


NO_ROOM_INFO = RoomInfo()
DEFAULT_RULES = Rules()


def _skip(reason: str) -> Translation:
    return Translation(skipped=reason)


def translate(
    event: Mapping[str, Any],
    source: Network,
    networks: Mapping[str, Network],
    portal: Portal | None,
    key: bytes,
    *,
    room: RoomInfo = NO_ROOM_INFO,
    rules: Rules = DEFAULT_RULES,
    linked: Sequence[tuple[str, str]] = (),
    owner: Owner = no_owner,
) -> Translation:
    """Translate one event pushed by `source`'s homeserver; `portal` is its room's portal,
    `linked` the sender's linked accounts (network, user id), the earliest linked first, and
    `owner` says whom a ghost of `source` stands for (its localpart to (network, user id))."""
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
        return _membership(event, content, source, networks, portal, key, room, rules, linked,
                           owner)
    if is_our_user(sender, source, networks.values()):
        return _skip("sent by the bridge itself")
    if etype == "m.room.encryption" and event.get("state_key") == "" and (
            portal is not None or room.manager is not None):
        # Encryption turned on in one room of a portal, by whoever may (whatever their level
        # here): the bot checks the others (invariant 6: an encrypted room is never linked
        # with an unencrypted one).
        task = BotTask(source.id, room_id, "encryption", {"sender": sender},
                       txn_id(source.id, event_id, source.id, "bot"), event_id)
        return Translation(actions=[task])
    if rules.permissions.level(sender) is Level.NONE:
        return _skip("the sender's permission level is none")
    is_message = etype == "m.room.message" and "state_key" not in event
    if is_message:
        content = _without_reply_fallback(content)
    if room.manager is not None and sender != room.manager:
        return _skip("someone else's management room")
    if is_message and _is_edit(content):
        # An edit is never a command (it would run twice), and an edit of a command must not
        # carry the command's arguments to other networks.
        new = content.get("m.new_content")
        new_body = new.get("body") if isinstance(new, Mapping) else content.get("body")
        text = new_body if isinstance(new_body, str) else ""
        if room.manager is not None:
            # Someone fixing a typo by editing hears why nothing happens.
            task = BotTask(source.id, room_id, "edited_command", {"sender": sender},
                           txn_id(source.id, event_id, source.id, "bot"), event_id)
            return Translation(actions=[task], skipped="an edit of a command")
        if strip_prefix(text, rules.prefix, False) is not None:
            return _skip("an edit of a command")
    elif is_message and content.get("msgtype") == "m.text" and isinstance(content.get("body"), str):
        in_management = room.manager is not None
        command = strip_prefix(str(content["body"]), rules.prefix, in_management)
        if command is not None:
            task = BotTask(source.id, room_id, "command", {"sender": sender, "text": command},
                           txn_id(source.id, event_id, source.id, "bot"), event_id)
            return Translation(actions=[task])
    if portal is None:
        return _skip("room is not part of a portal")
    if etype in MIRRORED_STATE and event.get("state_key") == "":
        mirror = rules.mirror_state if portal.mirror_state is None else portal.mirror_state
        if not mirror:
            return _skip("this portal does not mirror room names, topics and avatars")
        return _room_state(event, etype, content, source, networks, portal, key, owner)
    if etype == "m.room.redaction" and "state_key" not in event:
        return _redaction(event, content, source, networks, portal, key, linked, owner)
    if etype == "m.reaction" and "state_key" not in event:
        reaction = _reaction_content(content)
        if reaction is None:
            return _skip("a reaction without an annotation of an event")
        return _to_others(event, reaction, source, networks, portal, key, linked, etype)
    opaque = "state_key" not in event and etype in OPAQUE_TYPES
    if etype == "m.room.encrypted" and content.get("algorithm") != E2EE_ALGORITHM:
        return _skip("Matrix's own (Megolm) encryption is bound to one homeserver: not relayed")
    sticker = etype == STICKER and "state_key" not in event
    if is_message or opaque or sticker:
        # End-to-end encrypted content crosses as it is: the bridge cannot read it, and must
        # not change what the ciphertext and its signature cover.
        relayed = dict(content) if opaque else _text_content(content, sticker)
        if relayed is None:
            return _skip("message type not relayed")
        info = relayed.get("info") if not opaque else None
        size = info.get("size") if isinstance(info, Mapping) and "url" in relayed else None
        if isinstance(size, int) and size > rules.max_media_bytes:
            # The words, caption and reply still cross, as a line saying what was sent (as
            # for a file found too large while it streams); the sender is told why.
            said = without_file(relayed, too_large=True)
            people = mentioned_private(said, source, key)
            others = _to_others(
                event, lambda target: _for_target(said, source, target, key, owner, people),
                source, networks, portal, key, linked, "m.room.message")
            notice = _too_big(event, source, size, rules.max_media_bytes)
            return Translation(actions=[*notice.actions, *others.actions])
        if opaque:
            return _to_others(event, relayed, source, networks, portal, key, linked, etype)
        plain = relayed
        people = mentioned_private(plain, source, key)  # the same for every target
        return _to_others(
            event, lambda target: _for_target(plain, source, target, key, owner, people),
            source, networks, portal, key, linked, etype)
    return _skip(f"{etype} not relayed yet")


def ghost_for(
    user_id: str,
    source: Network,
    target: Network,
    networks: Mapping[str, Network],
    key: bytes,
    linked: Sequence[tuple[str, str]] = (),
) -> str | None:
    """The localpart of the ghost standing for `user_id` (of `source`) on `target`.

    Linked accounts appear as one ghost: the one of their earliest linked account that is not
    on `target` itself. None if `user_id` is not a user id.
    """
    base_net, base_user = source.id, user_id
    for net_id, user in linked:
        if net_id != target.id and net_id in networks:
            base_net, base_user = net_id, user
            break
    base = networks.get(base_net, source)
    try:
        identity = native_identity(base_user, base.identity, base.server_name)
    except InvalidId:
        return None
    return ghost_localpart(target, base_net, pseudonym(key, base_net, identity))


def _membership(
    event: Mapping[str, Any],
    content: Mapping[str, Any],
    source: Network,
    networks: Mapping[str, Network],
    portal: Portal | None,
    key: bytes,
    room: RoomInfo,
    rules: Rules,
    linked: Sequence[tuple[str, str]],
    owner: Owner,
) -> Translation:
    user = event.get("state_key")
    membership = content.get("membership")
    sender = str(event["sender"])
    room_id, event_id = str(event["room_id"]), str(event["event_id"])
    if not isinstance(user, str) or not isinstance(membership, str):
        return _skip("member event lacks state_key or membership")

    def task(name: str, **data: Any) -> Translation:
        txn = txn_id(source.id, event_id, source.id, "bot")
        return Translation(actions=[BotTask(source.id, room_id, name, data, txn, event_id)])

    if user == source.bot_user_id:
        if membership == "invite" and portal is not None:
            txn = txn_id(source.id, event_id, source.id, "join")
            return Translation(actions=[JoinRoom(source.id, room_id, txn, event_id)])
        if membership == "invite":
            if is_bridge_user(sender, source):
                return _skip("the bridge invited its own bot (a DM it makes)")
            if rules.permissions.level(sender) < Level.RELAY:
                return _skip("invited by someone the bridge does not serve")
            stamped = event.get("origin_server_ts")
            return task("invited", inviter=sender, is_direct=content.get("is_direct") is True,
                        invited_at=stamped if type(stamped) is int else None)
        removed = membership in ("leave", "ban") and sender != user
        if removed and (portal is not None or room.manager is not None):
            return task("removed", by=sender)
        return _skip("bot membership needs nothing")
    if is_bridge_user(user, source):
        moderated = portal is not None and sender != user and not is_bridge_user(sender, source)
        if moderated and membership in ("leave", "ban"):
            # A moderator of this room removed a ghost: the bridge does not bring it back with
            # its bot's power; what that person says no longer reaches this room, and they are
            # told so, until someone invites the ghost again.
            return task("ghost_removed", ghost=user[1:].partition(":")[0], by=sender)
        if moderated and membership == "invite":
            return task("ghost_invited", ghost=user[1:].partition(":")[0])
        return _skip("ghost membership")
    if membership in ("join", "invite") and room.manager is not None and user != room.manager:
        # Someone else in a management room (from any server) would read every answer about
        # its owner.
        return task("management_shared", by=sender)
    if any(user.endswith(":" + n.server_name) for n in networks.values() if n is not source):
        # Someone of another bridged network, on this server by federation: the bridge
        # reaches them through their own network, not through here.
        return _skip("a member of another bridged network")
    if room.dm_request is not None and user == room.dm_target:
        if membership == "join":
            return task("dm_accepted", request=room.dm_request)
        if membership in ("leave", "ban"):
            return task("dm_declined", request=room.dm_request)
    if membership in ("leave", "ban") and room.manager is not None and user == room.manager:
        return task("removed", by=user)
    name, avatar = _text(content.get("displayname")), content.get("avatar_url")
    avatar = avatar if parse_mxc(avatar) else None
    profile = ProfileSeen(source.id, user, name, avatar)
    before = _prev_membership(event)
    if portal is None:
        if membership == "join" and before != "join":
            return Translation(profiles=[profile])
        # A change of a member already in (a room nickname, say) is not their profile.
        return _skip("membership in a room that is not a portal")
    by_other = sender != user
    if by_other and (is_bridge_user(sender, source) or before == "knock"):
        # The bridge's own doing (a mirrored kick, an invite by the bot) must not echo back.
        return _skip("membership changed by the bridge")
    if membership == "leave" and not by_other:
        return Translation(actions=_ghosts_leave(user, source, networks, portal, key, linked,
                                                 event_id))
    if Level.NONE in (rules.permissions.level(user), rules.permissions.level(sender)):
        return Translation(profiles=[profile] if membership == "join" else [],
                           skipped="someone the bridge does not serve")
    op = {"ban": "ban", "invite": "invite"}.get(membership)
    if membership == "leave":
        op = "unban" if before == "ban" else "kick"
    if op is not None:
        return Translation(actions=_members(event, user, op, source, networks, portal, key,
                                            linked, owner))
    if membership != "join":
        return _skip("membership other than join, leave, invite, kick or ban")
    if before != "join":
        actions = _members(event, user, "join", source, networks, portal, key, linked, owner)
        return Translation(actions=actions, profiles=[profile])
    prev = _prev_content(event)
    if (_text(prev.get("displayname")), prev.get("avatar_url")) == (name, content.get(
            "avatar_url")):
        # Nothing changed that the ghosts show; and what a member event of someone already
        # in holds may be this room's alone (a nickname): not stored as their profile.
        return _skip("a member event that changes nothing the ghosts show")
    ref = EventRef(source.id, room_id, event_id, sender)
    renamed = name != _text(prev.get("displayname"))
    syncs: list[Action] = [
        GhostSync(target.id, target_room, ghost, ref, txn_id(source.id, event_id, target.id,
                                                              "profile"),
                  name if renamed else None)
        for target, target_room, ghost in _ghost_targets(user, source, networks, portal, key,
                                                        linked)
    ]
    # A new name may be theirs everywhere or this room's alone (a room nickname), and so may a
    # new avatar: the delivery reads their profile, and stores that, not this event.
    return Translation(actions=syncs)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _prev_content(event: Mapping[str, Any]) -> Mapping[str, Any]:
    unsigned = event.get("unsigned")
    prev = unsigned.get("prev_content") if isinstance(unsigned, Mapping) else None
    return prev if isinstance(prev, Mapping) else {}


def _prev_membership(event: Mapping[str, Any]) -> str | None:
    return _text(_prev_content(event).get("membership"))


def _members(
    event: Mapping[str, Any],
    user: str,
    op: str,
    source: Network,
    networks: Mapping[str, Network],
    portal: Portal,
    key: bytes,
    linked: Sequence[tuple[str, str]],
    owner: Owner,
) -> list[Action]:
    """`user`'s ghost joins, is invited, kicked, banned or unbanned in the portal's other
    rooms, by the ghost of whoever did it to them."""
    sender, room_id, event_id = str(event["sender"]), str(event["room_id"]), str(event["event_id"])
    reason = _text(event["content"].get("reason"))
    ref = EventRef(source.id, room_id, event_id, sender)
    actions: list[Action] = []
    for target, target_room, ghost in _ghost_targets(user, source, networks, portal, key, linked):
        actor = None if sender == user else ghost_for(sender, source, target, networks, key)
        # A reason can name people too: no phone number or email crosses in it.
        said = plain_text_for(reason[:300], source, target, key, owner) if reason else None
        actions.append(Member(target.id, target_room, ghost, user, op, ref, actor, said,
                              txn_id(source.id, event_id, target.id, "member")))
    return actions


def _ghosts_leave(
    user: str,
    source: Network,
    networks: Mapping[str, Network],
    portal: Portal,
    key: bytes,
    linked: Sequence[tuple[str, str]],
    event_id: str,
) -> list[Action]:
    """A person left a portal room: their ghosts leave the portal's other rooms."""
    return [
        LeaveRoom(target.id, room, ghost, txn_id(source.id, event_id, target.id, "leave"), event_id)
        for target, room, ghost in _ghost_targets(user, source, networks, portal, key, linked)
    ]


def _for_target(
    content: dict[str, Any], source: Network, target: Network, key: bytes, owner: Owner,
    people: list[Private],
) -> dict[str, Any]:
    """The content as `target` gets it: user ids of `source` people become their ghosts, and
    ghosts the people they stand for; `people` (`mentioned_private` of the content, computed
    once for all targets) have their number or email masked."""
    out = dict(content)
    for field_name in ("body", "formatted_body", "filename"):
        if field_name in out:
            out[field_name] = rewrite_user_ids(out[field_name], source, target, key, owner)
            if people:  # the file's name too: "photo of +1 555 987 6543.jpg"
                out[field_name] = mask_private(out[field_name], people)
    new = out.get("m.new_content")
    if isinstance(new, Mapping):  # an edit's new text names people too
        out["m.new_content"] = _for_target(dict(new), source, target, key, owner, people)
    mentions = out.get("m.mentions")
    if isinstance(mentions, Mapping):
        # Source people become their ghosts; ids that mean nothing on the target (another
        # server's, or ghosts whose person the bridge does not know) are left out.
        users = [rewrite_user_ids(u, source, target, key, owner)
                 for u in mentions.get("user_ids", [])]
        suffix = ":" + target.server_name
        out["m.mentions"] = {**mentions, "user_ids": [u for u in users if u.endswith(suffix)]}
    return out


def _is_edit(content: Mapping[str, Any]) -> bool:
    relates = content.get("m.relates_to")
    return isinstance(relates, Mapping) and relates.get("rel_type") == "m.replace"


_MX_REPLY = re.compile(r"^\s*<mx-reply>.*?</mx-reply>", re.S)


def _without_reply_fallback(content: Mapping[str, Any]) -> Mapping[str, Any]:
    """A reply's content without the quote of the message it answers (the spec's deprecated
    reply fallback): the quote may be of a command, or of another network's message."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, Mapping) or not isinstance(relates.get("m.in_reply_to"), Mapping):
        return content
    out = dict(content)
    body = out.get("body")
    if isinstance(body, str) and body.startswith("> "):
        lines = body.split("\n")
        while lines and lines[0].startswith(">"):
            lines.pop(0)
        if lines and lines[0] == "":
            lines.pop(0)
        out["body"] = "\n".join(lines)
    formatted = out.get("formatted_body")
    if isinstance(formatted, str):
        out["formatted_body"] = _MX_REPLY.sub("", formatted, count=1)
    return out


def _text_content(content: Mapping[str, Any], sticker: bool = False) -> dict[str, Any] | None:
    """A message as it crosses: its text or file, formatting, mentions, and its relation (an
    edit's new content, a reply, a thread) with the event ids to be mapped per target at
    delivery."""
    msgtype = content.get("msgtype")
    if sticker or (isinstance(msgtype, str) and msgtype in MEDIA_MSGTYPES):
        out = media_content(content, sticker)
    else:
        out = _plain_text(content)
    if out is None:
        return None
    if "url" in out and content.get("format") == HTML_FORMAT:
        caption = content.get("formatted_body")
        if isinstance(caption, str):
            out["format"], out["formatted_body"] = HTML_FORMAT, caption
    mentions = content.get("m.mentions")
    if isinstance(mentions, Mapping):
        users = mentions.get("user_ids")
        kept: dict[str, Any] = {}
        if isinstance(users, list):
            kept["user_ids"] = [u for u in users if isinstance(u, str)][:MAX_MENTIONS]
        if mentions.get("room") is True:
            kept["room"] = True
        out["m.mentions"] = kept
    relates = _relation(content.get("m.relates_to"))
    if relates is not None:
        out["m.relates_to"] = relates
        if relates.get("rel_type") == "m.replace":
            new = content.get("m.new_content")
            new_text = _plain_text(new) if isinstance(new, Mapping) else None
            if new_text is None:
                return None  # an edit without a usable new content
            out["m.new_content"] = new_text
    return out


MAX_MENTIONS = 100  # user ids carried in one message's m.mentions
RELATION_TYPES = frozenset({"m.replace", "m.thread", "m.reference"})


def _relation(relates: object) -> dict[str, Any] | None:
    """The parts of `m.relates_to` that cross: a known rel_type with its event id, a reply's
    event id, a thread's fallback flag; nothing else from the source."""
    if not isinstance(relates, Mapping):
        return None
    out: dict[str, Any] = {}
    rel_type, event_id = relates.get("rel_type"), relates.get("event_id")
    if rel_type in RELATION_TYPES and isinstance(event_id, str):
        out["rel_type"], out["event_id"] = rel_type, event_id
        if rel_type == "m.thread" and isinstance(relates.get("is_falling_back"), bool):
            out["is_falling_back"] = relates["is_falling_back"]
    reply = relates.get("m.in_reply_to")
    if isinstance(reply, Mapping) and isinstance(reply.get("event_id"), str):
        out["m.in_reply_to"] = {"event_id": reply["event_id"]}
    return out or None


def _reaction_content(content: Mapping[str, Any]) -> dict[str, Any] | None:
    relates = content.get("m.relates_to")
    if not isinstance(relates, Mapping) or relates.get("rel_type") != "m.annotation":
        return None
    event_id, reaction_key = relates.get("event_id"), relates.get("key")
    if not isinstance(event_id, str) or not isinstance(reaction_key, str):
        return None
    if not reaction_key or len(reaction_key) > 256:
        return None
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id,
                             "key": reaction_key}}


def _ghost_targets(
    user: str,
    source: Network,
    networks: Mapping[str, Network],
    portal: Portal,
    key: bytes,
    linked: Sequence[tuple[str, str]],
) -> Iterator[tuple[Network, str, str]]:
    """(target network, its room, the ghost standing for `user` there) for every other room of
    the portal."""
    for target_id, target_room in portal.others(source.id):
        target = networks.get(target_id)
        ghost = ghost_for(user, source, target, networks, key, linked) if target else None
        if target is not None and ghost is not None:
            yield target, target_room, ghost


def _to_others(
    event: Mapping[str, Any],
    content: dict[str, Any] | Callable[[Network], dict[str, Any]],
    source: Network,
    networks: Mapping[str, Network],
    portal: Portal,
    key: bytes,
    linked: Sequence[tuple[str, str]],
    event_type: str,
) -> Translation:
    """`content` (or `content(target)`, when it differs per target) sent as `event_type` by the
    sender's ghost into every other room of the portal. Event ids inside `m.relates_to` are
    mapped per target at delivery."""
    sender, room_id, event_id = str(event["sender"]), str(event["room_id"]), str(event["event_id"])
    ref = EventRef(source.id, room_id, event_id, sender)
    actions: list[Action] = []
    for target, room, ghost in _ghost_targets(sender, source, networks, portal, key, linked):
        own = next((user for net, user in linked if net == target.id), None)
        actions.append(SendMessage(
            network=target.id, room_id=room, ghost=ghost, source=ref,
            content=content(target) if callable(content) else content,
            txn_id=txn_id(source.id, event_id, target.id, "message"), unless_member=own,
            event_type=event_type,
        ))
    if not actions and portal.others(source.id):
        return _skip("sender is not a valid user id")
    return Translation(actions=actions)


def _redaction(
    event: Mapping[str, Any],
    content: Mapping[str, Any],
    source: Network,
    networks: Mapping[str, Network],
    portal: Portal,
    key: bytes,
    linked: Sequence[tuple[str, str]],
    owner: Owner,
) -> Translation:
    """A redaction: the copies of the redacted event are redacted on every other network, and
    a copy still waiting in the outbox is not sent at all."""
    redacts = event.get("redacts", content.get("redacts"))  # room v11 moved it into content
    if not isinstance(redacts, str):
        return _skip("a redaction without the event it redacts")
    reason = content.get("reason")
    sender, room_id, event_id = str(event["sender"]), str(event["room_id"]), str(event["event_id"])
    ref = EventRef(source.id, room_id, event_id, sender)
    actions: list[Action] = [
        Redact(target.id, room, ghost, ref, redacts,
               plain_text_for(reason[:300], source, target, key, owner)
               if isinstance(reason, str) else None,
               txn_id(source.id, event_id, target.id, "redact"))
        for target, room, ghost in _ghost_targets(sender, source, networks, portal, key, linked)
    ]
    return Translation(actions=actions, cancel=[(source.id, redacts)])


MIRRORED_STATE = frozenset({"m.room.name", "m.room.topic", "m.room.avatar"})
MAX_NAME, MAX_TOPIC = 255, 4096


def room_text(
    value: str, field_name: str, source: Network, target: Network, key: bytes,
    owner: Owner = no_owner,
) -> str:
    """A room's name or topic (`field_name`) as `target` gets it: bounded, and people named in
    it by user id shown as their ghosts, so that no phone number or email crosses in it."""
    limit = MAX_NAME if field_name == "name" else MAX_TOPIC
    return plain_text_for(value[:limit], source, target, key, owner)[:limit]


def plain_text_for(
    text: str, source: Network, target: Network, key: bytes, owner: Owner = no_owner
) -> str:
    """A short text of `source` (a room name or topic, a kick's or redaction's reason) as
    `target` gets it: people named by user id shown as their ghosts, and the number or email
    of each person it names masked wherever it shows (as a message's mentions are)."""
    out = rewrite_user_ids(text, source, target, key, owner)
    people = mentioned_private({"body": text}, source, key)
    return mask_private(out, people) if people else out


def _room_state(
    event: Mapping[str, Any], etype: str, content: Mapping[str, Any], source: Network,
    networks: Mapping[str, Network], portal: Portal, key: bytes, owner: Owner,
) -> Translation:
    """A portal room's new name, topic or avatar, set by the bot on the portal's other rooms."""
    field_name = {"m.room.name": "name", "m.room.topic": "topic", "m.room.avatar": "url"}[etype]
    value = content.get(field_name)
    if value is not None and not (parse_mxc(value) if etype == "m.room.avatar" else
                                  isinstance(value, str)):
        return _skip(f"{etype} with an unusable {field_name}")
    room_id, event_id = str(event["room_id"]), str(event["event_id"])
    ref = EventRef(source.id, room_id, event_id, str(event["sender"]))
    actions: list[Action] = []
    for target_id, target_room in portal.others(source.id):
        target = networks.get(target_id)
        if target is None:
            continue
        out: dict[str, Any] = {}  # empty: the name, topic or avatar was removed
        if isinstance(value, str) and etype != "m.room.avatar":
            out[field_name] = room_text(value, field_name, source, target, key, owner)
        elif isinstance(value, str):
            out[field_name] = value
        actions.append(RoomState(target_id, target_room, etype, out, ref,
                                 txn_id(source.id, event_id, target_id, "state")))
    return Translation(actions=actions)


def _too_big(event: Mapping[str, Any], source: Network, size: int, limit: int) -> Translation:
    """The notice for a file over the limit, once, in its sender's room."""
    event_id = str(event["event_id"])
    body = (f"Your file does not reach the other networks: it is {human_size(size)}, and this "
            f"bridge carries files up to {human_size(limit)}. The message goes without it.")
    notice = SendNotice(
        source.id, str(event["room_id"]), event_id,
        {"msgtype": "m.notice", "body": body,
         "m.relates_to": {"m.in_reply_to": {"event_id": event_id}}},
        txn_id(source.id, event_id, source.id, "too-big"),
    )
    return Translation(actions=[notice])


def _plain_text(content: Mapping[str, Any]) -> dict[str, Any] | None:
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
