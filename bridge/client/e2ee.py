"""An encrypting client for one person's device on one homeserver (trio + httpx).

It reads a portal room's timeline, keeps the devices announced there (pinning each sender's
identity key on first sight, warning when it changes), opens the key shares sealed to its own
device, decrypts what it can and says why it cannot decrypt the rest. Sending starts or rotates
its session when needed (a member left, a device went, 100 messages), shares the session with
every current device, then sends the ciphertext. State can be saved to a file (save_state).
The bridge is not trusted (docs/e2ee.md): its bot gets no key, a device id stays its first
owner's, a revoked device stays revoked, and a message shows under its device owner's name only.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nacl.public
import nacl.signing

from bridge.core.e2ee import (
    ALGORITHM,
    DEVICE_EVENT,
    KEYSHARE_EVENT,
    Device,
    DeviceCert,
    IdentityKey,
    InboundSession,
    OutboundSession,
    Rejected,
    make_keyshare,
    message_id,
    open_keyshare,
    safety_number,
)
from bridge.core.e2ee.encoding import b64, unb64
from bridge.core.e2ee.keys import revoked_device

V3 = "/_matrix/client/v3"
PORTAL_STATE = "org.tribridge.portal"


@dataclass(frozen=True)
class Received:
    """One encrypted message as this device sees it: the plaintext, or why there is none."""

    event_id: str
    sender: str
    body: str | None
    message_id: str | None = None
    error: str | None = None  # the Rejected reason, or "no_key"
    # A reply, edit or reaction: (rel_type, the related message's id), from inside the
    # ciphertext; `relation_checked` says whether the event the bridge mapped outside is that
    # very message (False: the outside relation points elsewhere, or at nothing known).
    relates_to: tuple[str, str] | None = None
    relation_checked: bool = False


@dataclass
class _Room:
    portal_id: str
    bridge_bot: str = ""  # who published the portal id: the bridge's bot, never a person
    devices: dict[str, tuple[str, DeviceCert]] = field(default_factory=dict)  # id -> sender, cert
    # Every device id ever announced here -> (its owner, its identity key), kept after the
    # device leaves: its old messages are still checked against it, and nobody else takes it.
    owners: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)  # withdrawn for good by their owners
    inbound: dict[tuple[str, bytes], InboundSession] = field(default_factory=dict)
    outbound: OutboundSession | None = None
    shared_with: set[str] = field(default_factory=set)
    rotate: bool = False
    seen: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    # Ciphertexts that came before their key share: tried again when shares arrive.
    waiting: dict[str, tuple[int, str, dict[str, Any]]] = field(default_factory=dict)
    mine: dict[str, str] = field(default_factory=dict)  # event id -> what this device sent


class E2EEClient:
    def __init__(self, http: httpx.AsyncClient, user_id: str, origin: str,
                 identity: IdentityKey | None = None, state_path: Path | None = None) -> None:
        self.http = http
        self.state_path = state_path
        self.user_id = user_id
        self.identity = identity or IdentityKey.generate()
        self.device = Device.generate(self.identity, origin)
        # Sender user id -> identity key first seen; this person's own is known, not learned
        # (a homeserver announcing "another device of mine" with a foreign key is refused).
        self.pinned: dict[str, bytes] = {user_id: self.identity.public}
        self.warnings: list[str] = []
        self.rooms: dict[str, _Room] = {}

    # -- the wire -------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = await self.http.request(method, V3 + path, json=body, params=params or None)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {response.status_code} {response.text}")
        return response.json()

    async def _send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        txn = f"e2ee{secrets.token_hex(8)}"
        path = f"/rooms/{quote(room_id)}/send/{quote(event_type)}/{txn}"
        return str((await self._call("PUT", path, content))["event_id"])

    async def _timeline(self, room_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        token = None
        while True:
            params: dict[str, Any] = {"dir": "b", "limit": 1000}
            if token:
                params["from"] = token
            page = await self._call("GET", f"/rooms/{quote(room_id)}/messages", **params)
            events.extend(page["chunk"])
            token = page.get("end")
            if not page["chunk"] or not token:
                return list(reversed(events))

    # -- joining a portal -----------------------------------------------------------------------

    async def enter(self, room_id: str) -> None:
        """Pin the room's portal id (the bot publishes it as state) and announce this device."""
        known = self.rooms.get(room_id)
        if known is None or not known.bridge_bot:  # new, or from an older state file
            state = await self._call("GET", f"/rooms/{quote(room_id)}/state")
            found = [e for e in state if isinstance(e, dict) and e.get("type") == PORTAL_STATE
                     and e.get("state_key") == ""]
            content = found[0].get("content") if found else None
            portal_id = content.get("portal_id") if isinstance(content, dict) else None
            if not isinstance(portal_id, str):
                raise RuntimeError(f"{room_id} has no portal id: it is not a tribridge portal")
            bot = str(found[0].get("sender", ""))
            if known is not None:
                known.bridge_bot = bot  # its pinned portal id stays as it was
            else:
                for other_id, other in self.rooms.items():
                    if other.portal_id == portal_id:
                        # Messages are bound to their portal: the bridge giving a second room
                        # the same id could replay one conversation's messages in another.
                        raise RuntimeError(
                            f"{room_id} claims the portal id of {other_id}: refused")
                self.rooms[room_id] = _Room(portal_id, bridge_bot=bot)
        await self._send(room_id, DEVICE_EVENT, self.device.announcement())

    # -- reading --------------------------------------------------------------------------------

    async def read(self, room_id: str) -> list[Received]:
        """Everything encrypted in the room so far, oldest first (decrypted once, remembered)."""
        room = self.rooms[room_id]
        for event in await self._timeline(room_id):
            event_id = event.get("event_id")
            if not isinstance(event_id, str) or event_id in room.seen:
                continue
            room.seen.add(event_id)
            try:
                self._take(room, event)
            except Rejected as exc:  # one malformed event costs itself, not the reading
                self.warnings.append(f"an event from {event.get('sender')} was refused: {exc}")
        for event_id, (at, sender, content) in list(room.waiting.items()):
            again = self._decrypt(room, event_id, sender, content)
            if again.error != "no_key":
                room.received[at] = again
                del room.waiting[event_id]
        return list(room.received)

    def _take(self, room: _Room, event: dict[str, Any]) -> None:
        etype, sender = event.get("type"), str(event.get("sender", ""))
        content = event.get("content") if isinstance(event.get("content"), dict) else {}
        assert isinstance(content, dict)
        if etype == DEVICE_EVENT:
            self._announced(room, sender, content)
        elif etype == KEYSHARE_EVENT:
            self._shared(room, sender, content)
        elif etype == "m.room.encrypted" and content.get("algorithm") == ALGORITHM:
            event_id = str(event["event_id"])
            if event_id in room.mine:  # a device holds no key share for itself
                room.received.append(
                    Received(event_id, sender, room.mine[event_id], message_id(content))
                )
                return
            found = self._decrypt(room, event_id, sender, content)
            if found.error == "no_key":
                room.waiting[event_id] = (len(room.received), sender, content)
            room.received.append(found)
        elif etype == "m.room.member" and content.get("membership") in ("leave", "ban"):
            gone = [d for d, (s, _) in room.devices.items() if s == event.get("state_key")]
            for device_id in gone:
                del room.devices[device_id]
            if gone:
                room.rotate = True  # the leaver must not read what comes next

    def _announced(self, room: _Room, sender: str, content: dict[str, Any]) -> None:
        if "revoke" in content:
            self._revoked(room, sender, content)
            return
        if sender == room.bridge_bot:
            # The bridge relays ciphertext and must never hold a key: its bot owns no device.
            self.warnings.append(f"WARNING: the bridge's bot {sender} announced a device; "
                                 "refused (the bridge must not read this conversation)")
            return
        try:
            cert = DeviceCert.from_announcement(content)
        except Rejected as exc:
            self.warnings.append(f"a device announcement from {sender} was refused: {exc}")
            return
        owner = room.owners.get(cert.device_id)
        if cert.device_id in room.revoked or (
            owner is not None and owner != (sender, cert.identity)
        ):
            self.warnings.append(f"a device announcement from {sender} was refused: device "
                                 f"{cert.device_id} is revoked, or someone else's")
            return
        pinned = self.pinned.setdefault(sender, cert.identity)
        if pinned != cert.identity:
            self.warnings.append(
                f"WARNING: the identity key of {sender} changed. Someone may be in the middle; "
                "compare safety numbers before you trust this person again."
            )
            return
        if cert.device_id != self.device.device_id:
            room.devices[cert.device_id] = (sender, cert)
            room.owners[cert.device_id] = (sender, cert.identity)

    def _revoked(self, room: _Room, sender: str, content: dict[str, Any]) -> None:
        """A device withdrawn by its owner's identity key: no more shares go to it, and the
        session rotates so that it cannot read what follows."""
        pinned = self.pinned.get(sender)
        if pinned is None:
            return
        try:
            device_id = revoked_device(content, pinned)
        except Rejected as exc:
            self.warnings.append(f"a device revocation from {sender} was refused: {exc}")
            return
        if device_id is not None and room.owners.get(device_id, ("",))[0] == sender:
            room.revoked.add(device_id)  # its old announcement, replayed, is refused
            if room.devices.pop(device_id, None) is not None:
                room.rotate = True

    async def revoke(self, room_id: str) -> None:
        """Withdraw this device from the room (before it is retired or lost)."""
        await self._send(room_id, DEVICE_EVENT, self.device.revocation())

    def _shared(self, room: _Room, sender: str, content: dict[str, Any]) -> None:
        found = room.devices.get(str(content.get("device")))
        if found is None or found[0] != sender:
            return  # not a device here, or not the sender's own
        try:
            session = open_keyshare(content, self.device, found[1], room.portal_id)
        except Rejected as exc:
            self.warnings.append(f"a key share was refused ({exc.reason}): {exc}")
            return
        if session is None:
            return
        if (session.device_id, session.session_id) in room.inbound:
            # A share seen again (re-sent, or replayed by the bridge) must not rewind the
            # chain: that would let used message keys, and so replays, back in.
            return
        replaced = content.get("replaces")
        if isinstance(replaced, str):
            try:
                replaced_id = unb64(replaced, "session id", 16)
            except Rejected:
                replaced_id = b""
            old = room.inbound.get((session.device_id, replaced_id))
            after = content.get("replaced_after")
            if old is not None and isinstance(after, int):
                old.retired_after = after
        room.inbound[(session.device_id, session.session_id)] = session

    def _decrypt(self, room: _Room, event_id: str, sender: str,
                 content: dict[str, Any]) -> Received:
        try:
            key = (str(content.get("device")), unb64(content.get("session"), "session id", 16))
        except Rejected as exc:
            return Received(event_id, sender, None, error=exc.reason)
        owner = room.owners.get(key[0])
        if owner is not None and owner[0] != sender:
            # Sealed with someone else's key, sent under this sender's name.
            return Received(event_id, sender, None, error="wrong_sender")
        session = room.inbound.get(key)
        if session is None:
            return Received(event_id, sender, None, error="no_key")
        try:
            plaintext, message_id = session.decrypt(content)
        except Rejected as exc:
            return Received(event_id, sender, None, error=exc.reason)
        inner = plaintext.get("content")
        body = inner.get("body") if isinstance(inner, dict) else None
        relates_to, checked = None, False
        inside = plaintext.get("relates_to")
        if isinstance(inside, dict) and isinstance(inside.get("message_id"), str):
            relates_to = (str(inside.get("rel_type", "m.reference")), inside["message_id"])
            outside = content.get("m.relates_to")
            target = None
            if isinstance(outside, dict):
                reply = outside.get("m.in_reply_to")
                target = reply.get("event_id") if isinstance(reply, dict) else None
                target = target or outside.get("event_id")
            known = {r.event_id: r.message_id for r in room.received}
            checked = target is not None and known.get(str(target)) == inside["message_id"]
        return Received(event_id, sender, body if isinstance(body, str) else None, message_id,
                        relates_to=relates_to, relation_checked=checked)

    # -- sending --------------------------------------------------------------------------------

    async def send(
        self, room_id: str, text: str, reply_to: Received | None = None
    ) -> str:
        """Encrypt and send `text` (as a reply to `reply_to`, if given); returns the event id.

        A reply names its target twice: by this network's event id outside the ciphertext (the
        bridge maps it for the other networks) and by the content-hash message id inside, which
        every reader checks against the event the outside one points to."""
        await self.read(room_id)  # the current devices and members
        room = self.rooms[room_id]
        current = room.outbound
        if current is None or current.worn_out or room.rotate:
            room.outbound = OutboundSession.start(self.device, room.portal_id, previous=current)
            room.shared_with, room.rotate = set(), False
        session = room.outbound
        assert session is not None
        missing = [c for d, (_, c) in room.devices.items() if d not in room.shared_with]
        if missing or session.index == 0:
            await self._send(room_id, KEYSHARE_EVENT, make_keyshare(session, missing))
            room.shared_with.update(c.device_id for c in missing)
        plaintext: dict[str, Any] = {
            "type": "m.room.message", "content": {"msgtype": "m.text", "body": text}
        }
        if reply_to is not None and reply_to.message_id is not None:
            plaintext["relates_to"] = {"rel_type": "m.in_reply_to",
                                       "message_id": reply_to.message_id}
        content = session.encrypt(plaintext)
        if reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to.event_id}}
        if self.state_path is not None:
            self.save_state(self.state_path)  # the ratchet moved: on disk before it leaves
        event_id = await self._send(room_id, "m.room.encrypted", content)
        room.mine[event_id] = text
        return event_id

    # -- state on disk --------------------------------------------------------------------------

    def save_state(self, path: Path) -> None:
        """Write keys, pinned identities, sessions and the events already read (mode 0600,
        replaced atomically). `send` calls it before a ciphertext leaves, when `state_path` is
        set: a message key must never be used twice, even across a crash."""
        doc = {
            "identity": b64(bytes(self.identity.signing)),
            "origin": self.device.origin,
            "device_id": self.device.device_id,
            "signing": b64(bytes(self.device.signing)),
            "exchange": b64(bytes(self.device.exchange)),
            "pinned": {user: b64(key) for user, key in self.pinned.items()},
            "rooms": {room_id: _room_state(room) for room_id, room in self.rooms.items()},
        }
        temporary = path.with_name(path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)

    def load_state(self, path: Path) -> None:
        doc = json.loads(path.read_text())
        self.identity = IdentityKey.from_seed(unb64(doc["identity"], "identity key", 32))
        self.device = Device(
            self.identity, str(doc["origin"]), str(doc["device_id"]),
            nacl.signing.SigningKey(unb64(doc["signing"], "device key", 32)),
            nacl.public.PrivateKey(unb64(doc["exchange"], "exchange key", 32)),
        )
        self.pinned = {u: unb64(k, "pinned key", 32) for u, k in doc.get("pinned", {}).items()}
        self.pinned[self.user_id] = self.identity.public
        self.rooms = {
            room_id: _room_from_state(self.device, state)
            for room_id, state in doc.get("rooms", {}).items()
        }

    def safety_number(self, user_id: str) -> str | None:
        """The safety number with the person `user_id` (as this network shows them)."""
        theirs = self.pinned.get(user_id)
        return safety_number(self.identity.public, theirs) if theirs else None


def _room_state(room: _Room) -> dict[str, Any]:
    out = room.outbound
    return {
        "portal": room.portal_id,
        "bridge_bot": room.bridge_bot,
        # The devices and what was learnt of them go with the events already read: those are
        # never read again, and a device or a leave forgotten at a restart would have the next
        # session shared with nobody, or with someone who left.
        "devices": {d: {"sender": sender, "cert": cert.fields()}
                    for d, (sender, cert) in room.devices.items()},
        "owners": {d: [sender, b64(key)] for d, (sender, key) in room.owners.items()},
        "revoked": sorted(room.revoked),
        "rotate": room.rotate,
        "seen": sorted(room.seen),
        "shared_with": sorted(room.shared_with),
        "outbound": None if out is None else {
            "session": b64(out.session_id), "chain_key": b64(out.chain_key), "index": out.index,
            "signing": b64(bytes(out.signing)),
            "replaces": b64(out.replaces) if out.replaces else None,
            "replaced_after": out.replaced_after,
        },
        "inbound": [
            {"device": s.device_id, "session": b64(s.session_id), "signing": b64(s.signing_key),
             "index": s.index, "chain_key": b64(s.chain_key),
             "skipped": {str(i): b64(k) for i, k in s.skipped.items()},
             "retired_after": s.retired_after}
            for s in room.inbound.values()
        ],
    }


def _room_from_state(device: Device, state: dict[str, Any]) -> _Room:
    room = _Room(str(state["portal"]), bridge_bot=str(state.get("bridge_bot", "")),
                 seen=set(state.get("seen", [])),
                 shared_with=set(state.get("shared_with", [])),
                 revoked=set(state.get("revoked", [])), rotate=bool(state.get("rotate")))
    for device_id, saved in state.get("devices", {}).items():
        cert = saved["cert"]
        room.devices[device_id] = (str(saved["sender"]), DeviceCert(
            unb64(cert["identity"], "identity key", 32), str(cert["origin"]),
            str(cert["device"]), unb64(cert["signing"], "device key", 32),
            unb64(cert["exchange"], "exchange key", 32)))
    room.owners = {d: (str(sender), unb64(key, "identity key", 32))
                   for d, (sender, key) in state.get("owners", {}).items()}
    out = state.get("outbound")
    if out:
        room.outbound = OutboundSession(
            device, room.portal_id, unb64(out["session"], "session", 16),
            unb64(out["chain_key"], "chain key", 32), int(out["index"]),
            nacl.signing.SigningKey(unb64(out["signing"], "session key", 32)),
            unb64(out["replaces"], "session", 16) if out.get("replaces") else None,
            int(out.get("replaced_after", 0)),
        )
    for s in state.get("inbound", []):
        session = InboundSession(
            room.portal_id, str(s["device"]), unb64(s["session"], "session", 16),
            unb64(s["signing"], "session key", 32), int(s["index"]),
            unb64(s["chain_key"], "chain key", 32),
            {int(i): unb64(k, "message key", 32) for i, k in s.get("skipped", {}).items()},
            s.get("retired_after"),
        )
        room.inbound[(session.device_id, session.session_id)] = session
    return room
