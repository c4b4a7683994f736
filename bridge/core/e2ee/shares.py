"""Key shares: a session's chain key sealed to each recipient device, signed by the sender."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import nacl.exceptions
import nacl.public

from bridge.core.e2ee.encoding import b64, canonical, parse_json, unb64
from bridge.core.e2ee.errors import Rejected
from bridge.core.e2ee.keys import Device, DeviceCert, verify
from bridge.core.e2ee.session import InboundSession, OutboundSession


def make_keyshare(session: OutboundSession, recipients: Iterable[DeviceCert]) -> dict[str, Any]:
    """The `org.tribridge.e2ee.keyshare` content giving `session`, from its current index, to
    every device in `recipients`."""
    device = session.device
    shares = []
    for cert in recipients:
        inner = canonical({
            "to": cert.device_id, "portal": session.portal_id, "session": b64(session.session_id),
            "device": device.device_id, "index": session.index,
            "chain_key": b64(session.chain_key),
            "signing_key": b64(bytes(session.signing.verify_key)),
        })
        sealed = nacl.public.SealedBox(nacl.public.PublicKey(cert.exchange)).encrypt(inner)
        shares.append({"to": cert.device_id, "box": b64(bytes(sealed))})
    outer: dict[str, Any] = {
        "portal": session.portal_id,
        "device": device.device_id,
        "session": b64(session.session_id),
        "shares": shares,
        "replaces": b64(session.replaces) if session.replaces else None,
        "replaced_after": session.replaced_after,
    }
    outer["sig"] = b64(device.signing.sign(canonical(outer)).signature)
    return outer


def open_keyshare(
    content: dict[str, Any], me: Device, sender: DeviceCert, portal_id: str
) -> InboundSession | None:
    """The session a key share gives `me`, or None if it holds nothing for `me`; raise
    Rejected if it is forged, misaddressed or for another conversation."""
    if not isinstance(content, dict):
        raise Rejected("malformed", "a key share is an object")
    signature = unb64(content.get("sig"), "key share signature", 64)
    outer = {k: v for k, v in content.items() if k != "sig"}
    verify(sender.signing, canonical(outer), signature, "a key share")
    if content.get("device") != sender.device_id:
        raise Rejected("wrong_session", "the key share names another sending device")
    if content.get("portal") != portal_id:
        raise Rejected("wrong_portal", "the key share belongs to another conversation")
    shares = content.get("shares")
    if not isinstance(shares, list):
        raise Rejected("malformed", "shares must be a list")
    mine = [s for s in shares if isinstance(s, dict) and s.get("to") == me.device_id]
    if not mine:
        return None
    try:
        raw = nacl.public.SealedBox(me.exchange).decrypt(unb64(mine[0].get("box"), "box"))
    except nacl.exceptions.CryptoError:
        raise Rejected("not_for_me", "the share does not open with this device's key") from None
    inner = parse_json(raw, "the key share's box")
    if not isinstance(inner, dict) or inner.get("to") != me.device_id:
        raise Rejected("not_for_me", "the key share was sealed for another device")
    session_id = unb64(content.get("session"), "session id", 16)
    if (inner.get("portal"), inner.get("device")) != (portal_id, sender.device_id) or unb64(
        inner.get("session"), "session id", 16
    ) != session_id:
        raise Rejected("wrong_session", "the sealed share does not match its envelope")
    index = inner.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise Rejected("malformed", "the share's index must be a whole number")
    return InboundSession(
        portal_id=portal_id,
        device_id=sender.device_id,
        session_id=session_id,
        signing_key=unb64(inner.get("signing_key"), "session signing key", 32),
        index=index,
        chain_key=unb64(inner.get("chain_key"), "chain key", 32),
    )
