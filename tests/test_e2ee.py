"""The org.tribridge.e2ee.v1 scheme (docs/e2ee.md; bridge/core/e2ee/): round trips, every
rejection with its reason, rotation and leavers, safety numbers, fixed test vectors, and fuzzing
of everything that reads a room event."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.public
import nacl.signing
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.core.e2ee import (
    ALGORITHM,
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
from bridge.core.e2ee.safety import grouped
from bridge.core.e2ee.session import (
    MAX_SKIP,
    ROTATE_AFTER,
    associated_data,
    message_key,
    next_chain_key,
)

PORTAL = "5f0c1d52-3b7e-4d55-9a4e-6f1d7c0b2a11"
OTHER_PORTAL = "c2a9e0f4-8d61-4b3a-b7f0-1e5d9c4a6b22"


# --- helpers ---------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def canonical(value: Any) -> bytes:
    """The spec's canonical JSON; surrogatepass so tests can sign what the code may not encode."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def flip(text: str, bit: int = 0) -> str:
    """`text` (base64) with one bit of its bytes flipped."""
    data = bytearray(unb64(text))
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return b64(bytes(data))


def text(body: str) -> dict[str, Any]:
    return {"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}}


def resign_share(share: dict[str, Any], device: Device) -> dict[str, Any]:
    """`share` signed again by `device`: what a (buggy or malicious) sender device could send."""
    outer = {k: v for k, v in share.items() if k != "sig"}
    return {**outer, "sig": b64(device.signing.sign(canonical(outer)).signature)}


def resign_message(content: dict[str, Any], session: OutboundSession) -> dict[str, Any]:
    """`content` signed again with the session's key, as a buggy sender could."""
    ad = associated_data(content["portal"], unb64(content["session"]), content["index"],
                         content["device"])
    signed = ad + unb64(content["nonce"]) + unb64(content["ciphertext"])
    return {**content, "sig": b64(session.signing.sign(signed).signature)}


def seal_raw(session: OutboundSession, body: bytes) -> dict[str, Any]:
    """What `OutboundSession.encrypt` sends, but for any plaintext bytes (a sender that does not
    follow the scheme's plaintext rules but holds the session's keys)."""
    index = session.index
    key = message_key(session.chain_key, session.session_id)
    session.chain_key = next_chain_key(session.chain_key, session.session_id)
    session.index += 1
    ad = associated_data(session.portal_id, session.session_id, index, session.device.device_id)
    nonce = bytes(range(24))
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(body, ad, nonce, key)
    return {
        "algorithm": ALGORITHM,
        "portal": session.portal_id,
        "session": b64(session.session_id),
        "index": index,
        "device": session.device.device_id,
        "nonce": b64(nonce),
        "ciphertext": b64(ciphertext),
        "sig": b64(session.signing.sign(ad + nonce + ciphertext).signature),
    }


def inner_box(recipient: DeviceCert, **inner: Any) -> str:
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(recipient.exchange)).encrypt(
        canonical(inner)
    )
    return b64(bytes(sealed))


def rejected(exc: pytest.ExceptionInfo[Rejected]) -> str:
    return exc.value.reason


@dataclass
class Room:
    """Alice on WhatsApp (two devices), Bob on Instagram; Alice's phone sends in PORTAL."""

    alice: IdentityKey
    bob: IdentityKey
    alice_phone: Device
    alice_laptop: Device
    bob_phone: Device
    out: OutboundSession
    share: dict[str, Any]

    @property
    def everyone(self) -> list[Device]:
        return [self.alice_phone, self.alice_laptop, self.bob_phone]

    def inbound(self, me: Device, share: dict[str, Any] | None = None) -> InboundSession:
        """`me`'s session from the share, the sender's cert taken from its announcement."""
        sender = DeviceCert.from_announcement(self.alice_phone.announcement())
        session = open_keyshare(share or self.share, me, sender, PORTAL)
        assert session is not None
        return session


@pytest.fixture
def room() -> Room:
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    alice_phone = Device.generate(alice, "wa")
    alice_laptop = Device.generate(alice, "wa")
    bob_phone = Device.generate(bob, "ig")
    out = OutboundSession.start(alice_phone, PORTAL)
    recipients = [DeviceCert.from_announcement(d.announcement())
                  for d in (alice_phone, alice_laptop, bob_phone)]
    share = make_keyshare(out, recipients)
    return Room(alice, bob, alice_phone, alice_laptop, bob_phone, out, share)


# --- round trip ------------------------------------------------------------------------------


def test_announcement_round_trip(room: Room) -> None:
    cert = DeviceCert.from_announcement(room.bob_phone.announcement())
    assert cert == room.bob_phone.cert
    assert cert.identity == room.bob.public
    assert cert.origin == "ig"
    assert len(unb64(cert.device_id)) == 16


def test_messages_decrypt_in_order(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    assert (bob.portal_id, bob.device_id, bob.index) == (PORTAL, room.alice_phone.device_id, 0)
    for i in range(5):
        sent = room.out.encrypt(text(f"hello {i}"))
        assert sent["index"] == i
        plaintext, mid = bob.decrypt(sent)
        assert plaintext == {**text(f"hello {i}"), "portal": PORTAL}
        assert mid == message_id(sent)


def test_every_current_device_reads_including_the_senders_own(room: Room) -> None:
    sent = room.out.encrypt(text("to all"))
    for device in room.everyone:
        plaintext, _ = room.inbound(device).decrypt(sent)
        assert plaintext["content"]["body"] == "to all"


def test_messages_decrypt_out_of_order(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    sent = [room.out.encrypt(text(f"m{i}")) for i in range(6)]
    for i in (3, 0, 5, 1, 4, 2):
        plaintext, _ = bob.decrypt(sent[i])
        assert plaintext["content"]["body"] == f"m{i}"
        assert plaintext["portal"] == PORTAL
    assert bob.index == 6
    assert bob.skipped == {}


def test_skip_up_to_max_skip_is_followed(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    sent = [room.out.encrypt(text(f"m{i}")) for i in range(MAX_SKIP + 1)]
    plaintext, _ = bob.decrypt(sent[MAX_SKIP])  # exactly MAX_SKIP ahead of the chain
    assert plaintext["content"]["body"] == f"m{MAX_SKIP}"
    assert len(bob.skipped) == MAX_SKIP
    for i in (0, MAX_SKIP // 2, MAX_SKIP - 1):  # the late ones still read
        assert bob.decrypt(sent[i])[0]["content"]["body"] == f"m{i}"


def test_message_id_same_for_sender_and_receiver_and_differs_per_message(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    laptop = room.inbound(room.alice_laptop)
    ids = []
    for body in ("same", "same", "other"):
        sent = room.out.encrypt(text(body))
        at_sender = message_id(sent)
        # what another network sees: the same content, relayed as JSON
        relayed = json.loads(json.dumps(sent))
        assert bob.decrypt(relayed)[1] == at_sender
        assert laptop.decrypt(dict(sent))[1] == at_sender
        assert message_id(relayed) == at_sender
        ids.append(at_sender)
    assert len(set(ids)) == 3  # even two messages with the same text differ
    assert all(len(unb64(i)) == 32 for i in ids)


def test_message_id_ignores_the_signature_and_binds_the_rest(room: Room) -> None:
    sent = room.out.encrypt(text("x"))
    mid = message_id(sent)
    assert message_id({**sent, "sig": "AAAA", "algorithm": "other"}) == mid
    for name, value in [("portal", OTHER_PORTAL), ("index", 1), ("device", "AAAA"),
                        ("nonce", flip(sent["nonce"])), ("ciphertext", flip(sent["ciphertext"])),
                        ("session", flip(sent["session"]))]:
        assert message_id({**sent, name: value}) != mid, name


def test_sessions_wear_out_after_rotate_after_messages(room: Room) -> None:
    for _ in range(ROTATE_AFTER - 1):
        room.out.encrypt(text("x"))
    assert not room.out.worn_out
    room.out.encrypt(text("x"))
    assert room.out.worn_out


def test_a_share_gives_the_session_from_its_current_index(room: Room) -> None:
    early = room.out.encrypt(text("before Bob's laptop"))
    bob_laptop = Device.generate(room.bob, "ig")
    share = make_keyshare(room.out, [bob_laptop.cert])
    session = room.inbound(bob_laptop, share)
    assert session.index == 1
    with pytest.raises(Rejected) as exc:
        session.decrypt(early)
    assert rejected(exc) == "replay"  # "already read (or is too old)"
    assert session.decrypt(room.out.encrypt(text("after")))[0]["content"]["body"] == "after"


# --- rejections: messages --------------------------------------------------------------------


@pytest.mark.parametrize("bit", [0, 7, 100, -1])
def test_flipped_bit_in_ciphertext_is_bad_signature(room: Room, bit: int) -> None:
    # The session signature covers the ciphertext and is checked first, so a flipped bit shows
    # as bad_signature (undecryptable is only reached when the signature verifies).
    bob = room.inbound(room.bob_phone)
    sent = room.out.encrypt(text("x"))
    n = len(unb64(sent["ciphertext"])) * 8
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, "ciphertext": flip(sent["ciphertext"], bit % n)})
    assert rejected(exc) == "bad_signature"
    assert bob.decrypt(sent)[0]["content"]["body"] == "x"  # the state did not move


@pytest.mark.parametrize("bit", [0, 95, 191])
def test_flipped_bit_in_nonce_is_bad_signature(room: Room, bit: int) -> None:
    bob = room.inbound(room.bob_phone)
    sent = room.out.encrypt(text("x"))
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, "nonce": flip(sent["nonce"], bit)})
    assert rejected(exc) == "bad_signature"
    assert bob.decrypt(sent)[0]["content"]["body"] == "x"


@pytest.mark.parametrize("bit", [0, 255, 511])
def test_flipped_bit_in_signature_is_bad_signature(room: Room, bit: int) -> None:
    bob = room.inbound(room.bob_phone)
    sent = room.out.encrypt(text("x"))
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, "sig": flip(sent["sig"], bit)})
    assert rejected(exc) == "bad_signature"
    assert bob.decrypt(sent)[0]["content"]["body"] == "x"


def test_flipped_bit_with_a_valid_signature_is_undecryptable(room: Room) -> None:
    # a sender bug: it signs a corrupted ciphertext; the AEAD check still refuses it
    bob = room.inbound(room.bob_phone)
    sent = room.out.encrypt(text("x"))
    corrupted = resign_message({**sent, "ciphertext": flip(sent["ciphertext"], 3)}, room.out)
    with pytest.raises(Rejected) as exc:
        bob.decrypt(corrupted)
    assert rejected(exc) == "undecryptable"
    assert (bob.index, bob.skipped) == (0, {})  # the ratchet only moves for a proven message
    assert bob.decrypt(sent)[0]["content"]["body"] == "x"


def test_changed_index_is_bad_signature(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    sent = room.out.encrypt(text("x"))
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, "index": 1})
    assert rejected(exc) == "bad_signature"


def test_replay_is_refused(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    sent = [room.out.encrypt(text(f"m{i}")) for i in range(3)]
    bob.decrypt(sent[2])
    bob.decrypt(sent[0])
    for again in (sent[2], sent[0]):  # the newest, and a late one that was read out of order
        with pytest.raises(Rejected) as exc:
            bob.decrypt(again)
        assert rejected(exc) == "replay"
    assert bob.decrypt(sent[1])[0]["content"]["body"] == "m1"
    with pytest.raises(Rejected) as exc:
        bob.decrypt(json.loads(json.dumps(sent[1])))
    assert rejected(exc) == "replay"


def test_message_moved_to_another_portal_is_wrong_portal(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    sent = room.out.encrypt(text("x"))
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, "portal": OTHER_PORTAL})
    assert rejected(exc) == "wrong_portal"


def test_genuine_message_of_another_portal_is_refused(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    elsewhere = OutboundSession.start(room.alice_phone, OTHER_PORTAL)
    make_keyshare(elsewhere, [room.bob_phone.cert])
    sent = elsewhere.encrypt(text("for the other conversation"))
    with pytest.raises(Rejected) as exc:
        bob.decrypt(sent)
    assert rejected(exc) == "wrong_portal"
    # the same message with its outside portal rewritten to this one: another session
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, "portal": PORTAL})
    assert rejected(exc) == "wrong_session"
    # ...and with this session's id too: the signature binds the portal
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, "portal": PORTAL, "session": b64(room.out.session_id)})
    assert rejected(exc) == "bad_signature"


def test_plaintext_naming_another_portal_is_wrong_portal(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    body = canonical({**text("x"), "portal": OTHER_PORTAL})
    with pytest.raises(Rejected) as exc:
        bob.decrypt(seal_raw(room.out, body))
    assert rejected(exc) == "wrong_portal"
    with pytest.raises(Rejected) as exc:
        bob.decrypt(seal_raw(room.out, canonical(text("no portal inside"))))
    assert rejected(exc) == "wrong_portal"
    with pytest.raises(Rejected) as exc:
        bob.decrypt(seal_raw(room.out, b"not json"))
    assert rejected(exc) == "malformed"


def test_deeply_nested_plaintext_is_malformed(room: Room) -> None:
    # 10 kB from a sender holding the session's keys: json.loads gives up with RecursionError
    bob = room.inbound(room.bob_phone)
    with pytest.raises(Rejected) as exc:
        bob.decrypt(seal_raw(room.out, b"[" * 5000 + b"]" * 5000))
    assert rejected(exc) == "malformed"


def test_message_from_another_device_is_wrong_session(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    laptop_out = OutboundSession.start(room.alice_laptop, PORTAL)
    with pytest.raises(Rejected) as exc:
        bob.decrypt(laptop_out.encrypt(text("x")))
    assert rejected(exc) == "wrong_session"


def test_index_beyond_max_skip_is_too_far(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    sent = [room.out.encrypt(text(f"m{i}")) for i in range(MAX_SKIP + 2)]
    with pytest.raises(Rejected) as exc:
        bob.decrypt(sent[MAX_SKIP + 1])
    assert rejected(exc) == "too_far"
    assert (bob.index, bob.skipped) == (0, {})
    assert bob.decrypt(sent[0])[0]["content"]["body"] == "m0"
    assert bob.decrypt(sent[MAX_SKIP + 1])[0]["content"]["body"] == f"m{MAX_SKIP + 1}"


def test_huge_index_is_refused_before_any_chain_work(room: Room) -> None:
    bob = room.inbound(room.bob_phone)
    sent = room.out.encrypt(text("x"))
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, "index": 10**12})
    assert rejected(exc) == "bad_signature"  # checked before any chain work


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"algorithm": "m.megolm.v1.aes-sha2"}, "malformed"),
        ({"index": -1}, "malformed"),
        ({"index": True}, "malformed"),
        ({"index": "0"}, "malformed"),
        ({"nonce": "AAAA"}, "malformed"),
        ({"nonce": "not base64!"}, "malformed"),
        ({"session": "AAAA"}, "malformed"),
        ({"sig": 5}, "malformed"),
        ({"ciphertext": None}, "malformed"),
    ],
)
def test_malformed_messages(room: Room, change: dict[str, Any], reason: str) -> None:
    bob = room.inbound(room.bob_phone)
    sent = room.out.encrypt(text("x"))
    with pytest.raises(Rejected) as exc:
        bob.decrypt({**sent, **change})
    assert rejected(exc) == reason


# --- rotation and leavers --------------------------------------------------------------------


def test_rotation_retires_the_old_session(room: Room) -> None:
    bob_old = room.inbound(room.bob_phone)
    old = [room.out.encrypt(text(f"old {i}")) for i in range(4)]
    bob_old.decrypt(old[0])  # 1 and 2 arrive late; 3 is in flight

    new = OutboundSession.start(room.alice_phone, PORTAL, previous=room.out)
    share = make_keyshare(new, [room.alice_laptop.cert, room.bob_phone.cert])
    assert share["replaces"] == b64(room.out.session_id)
    assert share["replaced_after"] == 4
    assert share["session"] == b64(new.session_id) != share["replaces"]

    late = room.out.encrypt(text("sent by a stale copy of the old session"))  # index 4
    bob_new = room.inbound(room.bob_phone, share)
    bob_old.retired_after = share["replaced_after"]

    with pytest.raises(Rejected) as exc:
        bob_old.decrypt(late)
    assert rejected(exc) == "retired"
    for i in (2, 1, 3):  # earlier late messages still decrypt
        assert bob_old.decrypt(old[i])[0]["content"]["body"] == f"old {i}"
    sent = new.encrypt(text("new"))
    assert bob_new.decrypt(sent)[0]["content"]["body"] == "new"
    with pytest.raises(Rejected) as exc:
        bob_old.decrypt(sent)
    assert rejected(exc) == "wrong_session"


def test_first_session_replaces_nothing(room: Room) -> None:
    assert room.share["replaces"] is None
    assert room.share["replaced_after"] == 0


def test_a_leaver_cannot_read_after_rotation(room: Room) -> None:
    bob_old = room.inbound(room.bob_phone)
    bob_old.decrypt(room.out.encrypt(text("before Bob left")))

    new = OutboundSession.start(room.alice_phone, PORTAL, previous=room.out)
    share = make_keyshare(new, [room.alice_phone.cert, room.alice_laptop.cert])
    assert [s["to"] for s in share["shares"]] == [room.alice_phone.device_id,
                                                  room.alice_laptop.device_id]
    assert open_keyshare(share, room.bob_phone, room.alice_phone.cert, PORTAL) is None

    sent = new.encrypt(text("after Bob left"))
    assert room.inbound(room.alice_laptop, share).decrypt(sent)[0]["content"]["body"] == (
        "after Bob left"
    )
    with pytest.raises(Rejected) as exc:
        bob_old.decrypt(sent)
    assert rejected(exc) == "wrong_session"
    # a box addressed to someone else does not open with Bob's key either
    entry = share["shares"][1]
    with pytest.raises(Rejected) as exc:
        open_keyshare(resign_share({**share, "shares": [{**entry, "to": room.bob_phone.device_id}]},
                                   room.alice_phone), room.bob_phone, room.alice_phone.cert,
                      PORTAL)
    assert rejected(exc) == "not_for_me"


# --- rejections: key shares ------------------------------------------------------------------


def test_share_not_addressed_to_me_gives_none(room: Room) -> None:
    stranger = Device.generate(IdentityKey.generate(), "ig")
    assert open_keyshare(room.share, stranger, room.alice_phone.cert, PORTAL) is None


def test_readdressed_share_outside_the_box_is_bad_signature(room: Room) -> None:
    stranger = Device.generate(IdentityKey.generate(), "ig")
    shares = [{**s, "to": stranger.device_id} if s["to"] == room.bob_phone.device_id else s
              for s in room.share["shares"]]
    with pytest.raises(Rejected) as exc:
        open_keyshare({**room.share, "shares": shares}, stranger, room.alice_phone.cert, PORTAL)
    assert rejected(exc) == "bad_signature"


def test_box_for_another_device_in_my_entry_is_not_for_me(room: Room) -> None:
    # A sender bug: the box sealed for Alice's laptop in an entry addressed to Bob, the outer
    # signed properly by the sender's device. The box does not open with Bob's key.
    laptop_box = next(s["box"] for s in room.share["shares"]
                      if s["to"] == room.alice_laptop.device_id)
    shares = [{"to": room.bob_phone.device_id, "box": laptop_box}]
    share = resign_share({**room.share, "shares": shares}, room.alice_phone)
    with pytest.raises(Rejected) as exc:
        open_keyshare(share, room.bob_phone, room.alice_phone.cert, PORTAL)
    assert rejected(exc) == "not_for_me"


def test_box_sealed_to_me_but_naming_another_device_is_not_for_me(room: Room) -> None:
    out = room.out
    box = inner_box(room.bob_phone.cert, to=room.alice_laptop.device_id, portal=PORTAL,
                    session=b64(out.session_id), device=room.alice_phone.device_id, index=0,
                    chain_key=b64(out.chain_key), signing_key=b64(bytes(out.signing.verify_key)))
    share = resign_share({**room.share, "shares": [{"to": room.bob_phone.device_id, "box": box}]},
                         room.alice_phone)
    with pytest.raises(Rejected) as exc:
        open_keyshare(share, room.bob_phone, room.alice_phone.cert, PORTAL)
    assert rejected(exc) == "not_for_me"


def test_deeply_nested_box_is_malformed(room: Room) -> None:
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(room.bob_phone.cert.exchange)).encrypt(
        b"[" * 5000 + b"]" * 5000
    )
    entry = {"to": room.bob_phone.device_id, "box": b64(bytes(sealed))}
    share = resign_share({**room.share, "shares": [entry]}, room.alice_phone)
    with pytest.raises(Rejected) as exc:
        open_keyshare(share, room.bob_phone, room.alice_phone.cert, PORTAL)
    assert rejected(exc) == "malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [("portal", OTHER_PORTAL), ("device", "AAAAAAAAAAAAAAAAAAAAAA"),
     ("session", "AAAAAAAAAAAAAAAAAAAAAA")],
)
def test_inner_not_matching_the_envelope_is_wrong_session(
    room: Room, field: str, value: str
) -> None:
    out = room.out
    inner: dict[str, Any] = {
        "to": room.bob_phone.device_id, "portal": PORTAL, "session": b64(out.session_id),
        "device": room.alice_phone.device_id, "index": 0, "chain_key": b64(out.chain_key),
        "signing_key": b64(bytes(out.signing.verify_key)),
    }
    box = inner_box(room.bob_phone.cert, **{**inner, field: value})
    share = resign_share({**room.share, "shares": [{"to": room.bob_phone.device_id, "box": box}]},
                         room.alice_phone)
    with pytest.raises(Rejected) as exc:
        open_keyshare(share, room.bob_phone, room.alice_phone.cert, PORTAL)
    assert rejected(exc) == "wrong_session"


def test_share_checked_against_another_devices_cert_is_bad_signature(room: Room) -> None:
    for other in (room.alice_laptop, room.bob_phone):
        with pytest.raises(Rejected) as exc:
            open_keyshare(room.share, room.bob_phone, other.cert, PORTAL)
        assert rejected(exc) == "bad_signature"


def test_share_signed_by_another_device_is_bad_signature(room: Room) -> None:
    mallory = Device.generate(IdentityKey.generate(), "wa")
    forged = resign_share(room.share, mallory)  # still names Alice's phone as the sender
    with pytest.raises(Rejected) as exc:
        open_keyshare(forged, room.bob_phone, room.alice_phone.cert, PORTAL)
    assert rejected(exc) == "bad_signature"
    with pytest.raises(Rejected) as exc:  # checked with Mallory's own cert: names another device
        open_keyshare(forged, room.bob_phone, mallory.cert, PORTAL)
    assert rejected(exc) == "wrong_session"


def test_share_for_another_portal_is_wrong_portal(room: Room) -> None:
    with pytest.raises(Rejected) as exc:
        open_keyshare(room.share, room.bob_phone, room.alice_phone.cert, OTHER_PORTAL)
    assert rejected(exc) == "wrong_portal"
    with pytest.raises(Rejected) as exc:
        open_keyshare({**room.share, "portal": OTHER_PORTAL}, room.bob_phone,
                      room.alice_phone.cert, OTHER_PORTAL)
    assert rejected(exc) == "bad_signature"


@pytest.mark.parametrize("field", ["replaces", "replaced_after", "session", "device", "portal"])
def test_share_fields_are_signed(room: Room, field: str) -> None:
    value: Any = 7 if field == "replaced_after" else "AAAAAAAAAAAAAAAAAAAAAA"
    with pytest.raises(Rejected) as exc:
        open_keyshare({**room.share, field: value}, room.bob_phone, room.alice_phone.cert,
                      PORTAL)
    assert rejected(exc) == "bad_signature"


@pytest.mark.parametrize(
    "content",
    [{}, {"sig": "AAAA"}, {"sig": None}],
)
def test_malformed_shares(room: Room, content: dict[str, Any]) -> None:
    with pytest.raises(Rejected) as exc:
        open_keyshare(content, room.bob_phone, room.alice_phone.cert, PORTAL)
    assert rejected(exc) == "malformed"


def test_share_with_shares_not_a_list_is_malformed(room: Room) -> None:
    share = resign_share({**room.share, "shares": {"to": room.bob_phone.device_id}},
                         room.alice_phone)
    with pytest.raises(Rejected) as exc:
        open_keyshare(share, room.bob_phone, room.alice_phone.cert, PORTAL)
    assert rejected(exc) == "malformed"


# --- rejections: device announcements --------------------------------------------------------


@pytest.mark.parametrize("field", ["identity", "origin", "device", "signing", "exchange"])
def test_altered_certificate_is_bad_signature(room: Room, field: str) -> None:
    announcement = room.bob_phone.announcement()
    other = Device.generate(IdentityKey.generate(), "wa").announcement()["cert"]
    forged = {**announcement, "cert": {**announcement["cert"], field: other[field]}}
    with pytest.raises(Rejected) as exc:
        DeviceCert.from_announcement(forged)
    assert rejected(exc) == "bad_signature"


def test_certificate_signature_flipped_is_bad_signature(room: Room) -> None:
    announcement = room.bob_phone.announcement()
    with pytest.raises(Rejected) as exc:
        DeviceCert.from_announcement({**announcement, "sig": flip(announcement["sig"], 9)})
    assert rejected(exc) == "bad_signature"


def test_a_certificate_resigned_by_another_identity_carries_that_identity(room: Room) -> None:
    # the bridge can inject its own announcement (machine in the middle on first use); what it
    # cannot do is keep Bob's identity key in it, so the safety number changes
    mallory = IdentityKey.generate()
    fields = {**room.bob_phone.announcement()["cert"], "identity": b64(mallory.public)}
    cert = DeviceCert.from_announcement(
        {"cert": fields, "sig": b64(mallory.signing.sign(canonical(fields)).signature)}
    )
    assert cert.identity == mallory.public
    assert safety_number(room.alice.public, cert.identity) != safety_number(
        room.alice.public, room.bob.public
    )


@pytest.mark.parametrize(
    "content",
    [
        None,
        [],
        {},
        {"cert": "x"},
        {"cert": {"v": 2}},
        {"cert": {"v": 1, "origin": "ig"}},
        {"cert": {"v": 1, "origin": "ig", "device": ""}},
        {"cert": {"v": 1, "origin": "ig", "device": "d", "identity": "AAAA", "signing": "AAAA",
                  "exchange": "AAAA"}, "sig": "AAAA"},
    ],
)
def test_malformed_announcements(content: Any) -> None:
    with pytest.raises(Rejected) as exc:
        DeviceCert.from_announcement(content)
    assert rejected(exc) == "malformed"


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_certificate_version_must_be_the_integer_one(room: Room, version: Any) -> None:
    # The identity key signs {"v": 1, ...}; a certificate saying true or 1.0 is not that object.
    announcement = room.bob_phone.announcement()
    with pytest.raises(Rejected) as exc:
        DeviceCert.from_announcement({**announcement,
                                      "cert": {**announcement["cert"], "v": version}})
    assert rejected(exc) == "malformed"


# --- safety numbers --------------------------------------------------------------------------


def test_safety_number_is_60_digits_and_symmetric(room: Room) -> None:
    number = safety_number(room.alice.public, room.bob.public)
    assert len(number) == 60
    assert number.isdigit() and number.isascii()
    assert safety_number(room.bob.public, room.alice.public) == number
    groups = grouped(number).split(" ")
    assert len(groups) == 12
    assert all(len(g) == 5 for g in groups)
    assert "".join(groups) == number


def test_safety_number_changes_with_either_identity_key(room: Room) -> None:
    number = safety_number(room.alice.public, room.bob.public)
    mallory = IdentityKey.generate().public
    assert safety_number(room.alice.public, mallory) != number
    assert safety_number(mallory, room.bob.public) != number
    assert safety_number(room.alice.public, room.alice.public) != number


def test_safety_number_halves_are_per_party(room: Room) -> None:
    carol = IdentityKey.generate().public
    ab = safety_number(room.alice.public, room.bob.public)
    ac = safety_number(room.alice.public, carol)
    alice_half = ({ab[:30], ab[30:]} & {ac[:30], ac[30:]}).pop()
    assert safety_number(room.alice.public, room.alice.public) == alice_half * 2
    assert ab[:30] <= ab[30:]


# --- test vectors ----------------------------------------------------------------------------

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
CHAIN_KEY = bytes(range(64, 96))
SESSION_ID = bytes(range(96, 112))
DEVICE_ID = b64(bytes(range(112, 128)))  # "cHFyc3R1dnd4eXp7fH1+fw"


def vector_device() -> Device:
    return Device(IdentityKey.from_seed(SEED_A), "whatsapp", DEVICE_ID,
                  nacl.signing.SigningKey(b"\x11" * 32), nacl.public.PrivateKey(b"\x22" * 32))


def test_vector_identity_keys() -> None:
    assert IdentityKey.from_seed(SEED_A).public.hex() == (
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    )
    assert IdentityKey.from_seed(SEED_B).public.hex() == (
        "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7"
    )


def test_vector_ratchet() -> None:
    mk0 = "6e33215d6ef93d3c2b8e4c1611beb95c11c6abad1ad043a4406d0d8e07440295"
    ck1 = "2a77748b4287bcc2eef0edcaa74f8bd36e56721a0853b7fd8900b085fad607d1"
    mk1 = "7c16afaf139ed4ceb13ca622c95ef254dc4338e599e78f637b4d2f05708a1bd9"
    assert message_key(CHAIN_KEY, SESSION_ID).hex() == mk0
    assert next_chain_key(CHAIN_KEY, SESSION_ID).hex() == ck1
    assert message_key(bytes.fromhex(ck1), SESSION_ID).hex() == mk1
    # the spec's formulas, computed independently of pynacl
    assert hashlib.blake2b(SESSION_ID, key=CHAIN_KEY, digest_size=32,
                           person=b"tb-e2ee-msgkey").hexdigest() == mk0
    assert hashlib.blake2b(SESSION_ID, key=CHAIN_KEY, digest_size=32,
                           person=b"tb-e2ee-chain").hexdigest() == ck1


def test_vector_safety_number() -> None:
    a, b = IdentityKey.from_seed(SEED_A).public, IdentityKey.from_seed(SEED_B).public
    number = "605276562735716354718837289478925009110620334863098615990358"
    assert safety_number(a, b) == number
    assert grouped(number) == (
        "60527 65627 35716 35471 88372 89478 92500 91106 20334 86309 86159 90358"
    )


def spec_safety_half(identity_key: bytes) -> str:
    h = identity_key
    for _ in range(5200):
        h = hashlib.blake2b(h + identity_key, digest_size=64, person=b"tb-e2ee-safety").digest()
    return "".join(f"{int.from_bytes(h[i:i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


def test_safety_number_follows_the_spec_formula() -> None:
    a, b = IdentityKey.from_seed(SEED_A).public, IdentityKey.from_seed(SEED_B).public
    assert safety_number(a, b) == "".join(sorted((spec_safety_half(a), spec_safety_half(b))))


def test_vector_device_announcement() -> None:
    assert vector_device().announcement() == {
        "cert": {
            "v": 1,
            "identity": "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg",
            "origin": "whatsapp",
            "device": "cHFyc3R1dnd4eXp7fH1+fw",
            "signing": "0EqyMnQrtKs6E2i9RhXk5tAiSrcaAWuvhSCjMsl3hzc",
            "exchange": "D6poTtKIZ7l/Smot7l34zpdOdrcBjj8iocTPJnhXDyA",
        },
        "sig": (
            "HeQ+Xc9e/gi5KXYNkL2tLSAkzEzhpiQwXCOgWx+q9HdSGGEplbSyv4SVXBM3BbELQLAY5jpPIRB2V+lYn7EIDw"
        ),
    }


VECTOR_PORTAL = "!portal:tribridge"
VECTOR_MESSAGE = {
    "algorithm": "org.tribridge.e2ee.v1",
    "portal": VECTOR_PORTAL,
    "session": "YGFiY2RlZmdoaWprbG1ubw",
    "index": 0,
    "device": "cHFyc3R1dnd4eXp7fH1+fw",
    "nonce": "Alu7DdRArbXNoAS72wORy+bmTVatidvB",
    "ciphertext": (
        "Cxv5bRcy72+K8wdKUnbnpPdJ+AXqmw0RnQOKeFVqd7tsOFCMscR4W8GmeiuvXdn8Y+Oyz8LhvQq1OwpUb6E02xmF"
        "m3xLMFjPTQ1EytOF3fqDvmH6qvBVWWvPjclVBzxcb1H06APY/yXAqGAMESpqlDeqiB4"
    ),
    "sig": "+URcjOS4LKaYaEjhd7m0b3CM0W4wID9Ztn9lwtBcx0HI048G5Rm1hz5Am6wqiCsTcqgI4uktIHJL7oNpt2uLAQ",
}
VECTOR_MESSAGE_ID = "pWSCfsg4QxquVszdd404N+FAr9gEc1Y9CpaW0tBR76U"


def test_vector_message() -> None:
    """A message sent once by OutboundSession(vector_device(), VECTOR_PORTAL, SESSION_ID,
    CHAIN_KEY, 0, SigningKey(b"\\x33" * 32)) with its random nonce, kept as a literal."""
    signing = nacl.signing.SigningKey(b"\x33" * 32)
    assert b64(bytes(signing.verify_key)) == "F8t5+ytBIPKx7GXkGY1uCLKOgT/rAeSkAIObheGAgM4"
    inbound = InboundSession(VECTOR_PORTAL, DEVICE_ID, SESSION_ID, bytes(signing.verify_key), 0,
                             CHAIN_KEY)
    plaintext, mid = inbound.decrypt(dict(VECTOR_MESSAGE))
    assert plaintext == {"type": "m.room.message", "portal": VECTOR_PORTAL,
                         "content": {"msgtype": "m.text", "body": "hello"}}
    assert mid == VECTOR_MESSAGE_ID
    assert message_id(VECTOR_MESSAGE) == VECTOR_MESSAGE_ID
    # the spec's message id, computed independently
    ad = json.dumps({"alg": ALGORITHM, "portal": VECTOR_PORTAL, "session": b64(SESSION_ID),
                     "index": 0, "device": DEVICE_ID}, sort_keys=True, separators=(",", ":"))
    signed = ad.encode() + unb64(VECTOR_MESSAGE["nonce"]) + unb64(VECTOR_MESSAGE["ciphertext"])
    assert b64(hashlib.blake2b(signed, digest_size=32, person=b"tb-e2ee-msgid").digest()) == mid
    # and the same session, sending now, produces a message that decrypts the same way
    out = OutboundSession(vector_device(), VECTOR_PORTAL, SESSION_ID, CHAIN_KEY, 0, signing)
    again = InboundSession(VECTOR_PORTAL, DEVICE_ID, SESSION_ID, bytes(signing.verify_key), 0,
                           CHAIN_KEY)
    assert again.decrypt(out.encrypt(text("hello")))[0] == plaintext


# --- fuzzing: only Rejected, whatever arrives ------------------------------------------------

# strings as json.loads can give them, lone surrogates included ("\ud800" is valid JSON)
strings = st.text(max_size=30) | st.sampled_from(["\ud800", "a\udfffb", "", "AAAA", "=", "é"])
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 3)
           | st.floats(allow_nan=True, allow_infinity=True) | strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=12,
)
json_dicts = st.dictionaries(strings, json_values, max_size=8)


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with some of its fields replaced by arbitrary JSON values, removed, or added."""
    return st.builds(
        lambda replace, drop, extra: {
            **{k: v for k, v in base.items() if k not in drop}, **replace, **extra
        },
        st.dictionaries(st.sampled_from(sorted(base)), json_values, max_size=3),
        st.sets(st.sampled_from(sorted(base)), max_size=2),
        st.dictionaries(strings, json_values, max_size=2),
    )


FUZZ_ALICE = Device.generate(IdentityKey.from_seed(SEED_A), "wa")
FUZZ_BOB = Device.generate(IdentityKey.from_seed(SEED_B), "ig")
FUZZ_OUT = OutboundSession.start(FUZZ_ALICE, PORTAL)
FUZZ_SHARE = make_keyshare(FUZZ_OUT, [FUZZ_BOB.cert])
FUZZ_MESSAGE = FUZZ_OUT.encrypt(text("fuzz"))
FUZZ_INNER = json.loads(nacl.public.SealedBox(FUZZ_BOB.exchange).decrypt(
    unb64(FUZZ_SHARE["shares"][0]["box"])))


def fuzz_inbound() -> InboundSession:
    session = open_keyshare(FUZZ_SHARE, FUZZ_BOB, FUZZ_ALICE.cert, PORTAL)
    assert session is not None
    return session


def only_rejected(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except Rejected as exc:
        assert isinstance(exc.reason, str) and exc.reason


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_dicts, mutated(FUZZ_MESSAGE)))
def test_fuzz_decrypt_raises_only_rejected(content: dict[str, Any]) -> None:
    only_rejected(fuzz_inbound().decrypt, content)


@settings(max_examples=200, deadline=None)
@given(mutated(FUZZ_MESSAGE))
def test_fuzz_decrypt_of_session_signed_content_raises_only_rejected(
    content: dict[str, Any],
) -> None:
    # what a member holding the session's keys (or a buggy sender) could make: signed, wrong
    session = fuzz_inbound()
    if all(isinstance(content.get(k), str) for k in ("session", "nonce", "ciphertext")) and (
        isinstance(content.get("index"), int) and not isinstance(content.get("index"), bool)
        and isinstance(content.get("portal"), str) and isinstance(content.get("device"), str)
    ):
        with contextlib.suppress(ValueError):  # not base64 (or not encodable): unsigned then
            content = resign_message(content, FUZZ_OUT)
    only_rejected(session.decrypt, content)


@pytest.mark.parametrize("length", [0, 1, 15])
def test_a_signed_ciphertext_shorter_than_its_tag_is_malformed(length: int) -> None:
    # Found by the fuzz test above: pynacl raised ValueError for these.
    content = resign_message({**FUZZ_MESSAGE, "ciphertext": b64(b"x" * length)}, FUZZ_OUT)
    with pytest.raises(Rejected) as refused:
        fuzz_inbound().decrypt(content)
    assert refused.value.reason == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_dicts, mutated(FUZZ_SHARE)))
def test_fuzz_open_keyshare_raises_only_rejected(content: dict[str, Any]) -> None:
    only_rejected(open_keyshare, content, FUZZ_BOB, FUZZ_ALICE.cert, PORTAL)


@settings(max_examples=200, deadline=None)
@given(mutated(FUZZ_SHARE), mutated(FUZZ_INNER) | json_values)
def test_fuzz_open_keyshare_of_sender_signed_content_raises_only_rejected(
    outer: dict[str, Any], inner: Any
) -> None:
    # the sender's device signs whatever it likes, with a box sealed to Bob holding anything
    box = b64(bytes(nacl.public.SealedBox(nacl.public.PublicKey(FUZZ_BOB.cert.exchange))
                    .encrypt(canonical(inner))))
    if isinstance(outer.get("shares"), list):
        outer = {**outer, "shares": [{"to": FUZZ_BOB.device_id, "box": box}, *outer["shares"]]}
    only_rejected(open_keyshare, resign_share(outer, FUZZ_ALICE), FUZZ_BOB, FUZZ_ALICE.cert,
                  PORTAL)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_dicts, mutated(FUZZ_BOB.announcement()),
                 mutated(FUZZ_BOB.announcement()["cert"]).map(
                     lambda cert: {**FUZZ_BOB.announcement(), "cert": cert})))
@example({**FUZZ_BOB.announcement(),
          "cert": {**FUZZ_BOB.announcement()["cert"], "origin": "\ud800"}})
def test_fuzz_announcement_raises_only_rejected(content: dict[str, Any]) -> None:
    only_rejected(DeviceCert.from_announcement, content)


def test_surrogates_in_an_announcement_are_rejected(room: Room) -> None:
    # json.loads('"\\ud800"') is a lone surrogate: a room event can carry one
    announcement = room.bob_phone.announcement()
    for field in ("origin", "device"):
        with pytest.raises(Rejected) as exc:
            DeviceCert.from_announcement({**announcement,
                                          "cert": {**announcement["cert"], field: "\ud800"}})
        assert rejected(exc) in {"malformed", "bad_signature"}


def test_surrogates_in_a_key_share_are_rejected(room: Room) -> None:
    with pytest.raises(Rejected) as exc:
        open_keyshare({**room.share, "replaces": "\ud800"}, room.bob_phone,
                      room.alice_phone.cert, PORTAL)
    assert rejected(exc) in {"malformed", "bad_signature"}
