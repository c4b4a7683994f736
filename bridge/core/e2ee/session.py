"""Sender sessions: a forward-only hash ratchet per (sender device, portal).

The sender encrypts with XChaCha20-Poly1305 under the message key of the next index and signs
with the session's own Ed25519 key; the associated data and the signature bind the ciphertext to
the portal, the session, the index and the sender device, never to a homeserver's room or event
ids (they differ per network). A receiver keeps the next chain key and a bounded set of skipped
message keys; a used key is deleted, so a replay finds none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.signing
import nacl.utils

from bridge.core.e2ee.encoding import b64, canonical, parse_json, unb64
from bridge.core.e2ee.errors import Rejected
from bridge.core.e2ee.keys import Device, verify

ALGORITHM = "org.tribridge.e2ee.v1"
MAX_SKIP = 1000  # how far ahead of its chain a receiver follows an index
ROTATE_AFTER = 100  # messages per session before a new one
TAG_BYTES = 16  # Poly1305's tag ends every ciphertext


def _blake(data: bytes, key: bytes, person: bytes, size: int = 32) -> bytes:
    return nacl.hash.blake2b(data, key=key, digest_size=size, person=person,
                             encoder=nacl.encoding.RawEncoder)


def message_key(chain_key: bytes, session_id: bytes) -> bytes:
    return _blake(session_id, chain_key, b"tb-e2ee-msgkey")


def next_chain_key(chain_key: bytes, session_id: bytes) -> bytes:
    return _blake(session_id, chain_key, b"tb-e2ee-chain")


def associated_data(portal_id: str, session_id: bytes, index: int, device_id: str) -> bytes:
    return canonical({"alg": ALGORITHM, "portal": portal_id, "session": b64(session_id),
                      "index": index, "device": device_id})


def message_id(content: dict[str, Any]) -> str:
    """The content-hash id of an encrypted message: the same on every network."""
    session = unb64(content.get("session"), "session id", 16)
    index = content.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise Rejected("malformed", "index must be a whole number")
    device, portal = content.get("device"), content.get("portal")
    if not isinstance(device, str) or not isinstance(portal, str):
        raise Rejected("malformed", "device and portal must be strings")
    ad = associated_data(portal, session, index, device)
    signed = ad + unb64(content.get("nonce"), "nonce", 24) + unb64(content.get("ciphertext"),
                                                                    "ciphertext")
    return b64(nacl.hash.blake2b(signed, digest_size=32, person=b"tb-e2ee-msgid",
                                 encoder=nacl.encoding.RawEncoder))


@dataclass
class OutboundSession:
    """The sending side of one (device, portal) session. Save it after every `encrypt`: the
    ratchet has moved, and a message key must never be used twice."""

    device: Device
    portal_id: str
    session_id: bytes
    chain_key: bytes
    index: int
    signing: nacl.signing.SigningKey
    replaces: bytes | None = None
    replaced_after: int = 0

    @classmethod
    def start(cls, device: Device, portal_id: str,
              previous: OutboundSession | None = None) -> OutboundSession:
        return cls(
            device, portal_id, nacl.utils.random(16), nacl.utils.random(32), 0,
            nacl.signing.SigningKey.generate(),
            previous.session_id if previous else None, previous.index if previous else 0,
        )

    @property
    def worn_out(self) -> bool:
        return self.index >= ROTATE_AFTER

    def encrypt(self, plaintext: dict[str, Any]) -> dict[str, Any]:
        """The `m.room.encrypted` content for `plaintext` (an object with type and content)."""
        body = canonical({**plaintext, "portal": self.portal_id})
        index = self.index
        key = message_key(self.chain_key, self.session_id)
        self.chain_key = next_chain_key(self.chain_key, self.session_id)
        self.index += 1
        ad = associated_data(self.portal_id, self.session_id, index, self.device.device_id)
        nonce = nacl.utils.random(24)
        ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(body, ad, nonce, key)
        signature = self.signing.sign(ad + nonce + ciphertext).signature
        return {
            "algorithm": ALGORITHM,
            "portal": self.portal_id,
            "session": b64(self.session_id),
            "index": index,
            "device": self.device.device_id,
            "nonce": b64(nonce),
            "ciphertext": b64(ciphertext),
            "sig": b64(signature),
        }


@dataclass
class InboundSession:
    """The receiving side of one sender's session, as its key share gave it."""

    portal_id: str
    device_id: str  # the sender's device
    session_id: bytes
    signing_key: bytes  # the session's public signing key
    index: int  # the index `chain_key` is at
    chain_key: bytes
    skipped: dict[int, bytes] = field(default_factory=dict)
    retired_after: int | None = None  # set when a newer session replaced this one

    def decrypt(self, content: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """(the plaintext object, its message id); raise Rejected with the reason."""
        if content.get("algorithm") != ALGORITHM:
            raise Rejected("malformed", "not an org.tribridge.e2ee.v1 message")
        if content.get("portal") != self.portal_id:
            raise Rejected("wrong_portal", "the message belongs to another conversation")
        if content.get("device") != self.device_id:
            raise Rejected("wrong_session", "the message is from another device")
        if unb64(content.get("session"), "session id", 16) != self.session_id:
            raise Rejected("wrong_session", "the message belongs to another session")
        index = content.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise Rejected("malformed", "index must be a whole number")
        if self.retired_after is not None and index >= self.retired_after:
            raise Rejected("retired", "the sender's session was replaced before this message")
        nonce = unb64(content.get("nonce"), "nonce", 24)
        ciphertext = unb64(content.get("ciphertext"), "ciphertext")
        ad = associated_data(self.portal_id, self.session_id, index, self.device_id)
        verify(self.signing_key, ad + nonce + ciphertext, unb64(content.get("sig"), "signature",
                                                                 64), "a message")
        key, chain_key, skipped = self._key_for(index)
        if len(ciphertext) < TAG_BYTES:
            raise Rejected("malformed", "the ciphertext is shorter than its tag")
        try:
            body = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext, ad, nonce, key
            )
        except (nacl.exceptions.CryptoError, ValueError):
            raise Rejected("undecryptable", "the ciphertext does not decrypt") from None
        plaintext = parse_json(body, "the plaintext")
        if not isinstance(plaintext, dict) or plaintext.get("portal") != self.portal_id:
            raise Rejected("wrong_portal", "the plaintext names another conversation")
        # Only now, with the message proven, does the ratchet move and the key go.
        if index >= self.index:
            self.index, self.chain_key, self.skipped = index + 1, chain_key, skipped
        else:
            del self.skipped[index]
        return plaintext, message_id(content)

    def _key_for(self, index: int) -> tuple[bytes, bytes, dict[int, bytes]]:
        """(message key, chain key after it, skipped keys) without changing the session."""
        if index < self.index:
            if index not in self.skipped:
                raise Rejected("replay", f"message {index} was already read (or is too old)")
            return self.skipped[index], self.chain_key, self.skipped
        if index - self.index > MAX_SKIP:
            raise Rejected("too_far", f"index {index} is more than {MAX_SKIP} ahead of the chain")
        chain_key, skipped = self.chain_key, dict(self.skipped)
        for i in range(self.index, index):
            skipped[i] = message_key(chain_key, self.session_id)
            chain_key = next_chain_key(chain_key, self.session_id)
        excess = len(skipped) - MAX_SKIP
        if excess > 0:  # the oldest go, in one sort (min() per key was quadratic)
            for old in sorted(skipped)[:excess]:
                del skipped[old]
        return message_key(chain_key, self.session_id), next_chain_key(chain_key,
                                                                        self.session_id), skipped
