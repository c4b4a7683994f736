"""Identity keys, devices and device certificates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils

from bridge.core.e2ee.encoding import b64, canonical, unb64
from bridge.core.e2ee.errors import Rejected


def verify(public: bytes, message: bytes, signature: bytes, what: str) -> None:
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise Rejected("bad_signature", f"the signature of {what} does not verify") from None


@dataclass(frozen=True)
class IdentityKey:
    """A person's Ed25519 identity key: it certifies their devices."""

    signing: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> IdentityKey:
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public(self) -> bytes:
        return bytes(self.signing.verify_key)


@dataclass(frozen=True)
class DeviceCert:
    """What a device announcement says, once its identity signature verified."""

    identity: bytes  # the person's identity key
    origin: str  # the label of the person's own network
    device_id: str
    signing: bytes  # the device's Ed25519 key
    exchange: bytes  # the device's X25519 key

    def fields(self) -> dict[str, Any]:
        return {
            "v": 1,
            "identity": b64(self.identity),
            "origin": self.origin,
            "device": self.device_id,
            "signing": b64(self.signing),
            "exchange": b64(self.exchange),
        }

    @classmethod
    def from_announcement(cls, content: object) -> DeviceCert:
        """Check a device announcement's content; raise Rejected if it is not a good one."""
        if not isinstance(content, dict) or not isinstance(content.get("cert"), dict):
            raise Rejected("malformed", "a device announcement needs a cert object")
        cert = content["cert"]
        version = cert.get("v")
        if type(version) is not int or version != 1:
            raise Rejected("malformed", "unknown certificate version")
        origin, device_id = cert.get("origin"), cert.get("device")
        if not isinstance(origin, str) or not isinstance(device_id, str) or not device_id:
            raise Rejected("malformed", "a certificate names its origin and device")
        found = cls(
            identity=unb64(cert.get("identity"), "identity key", 32),
            origin=origin,
            device_id=device_id,
            signing=unb64(cert.get("signing"), "device signing key", 32),
            exchange=unb64(cert.get("exchange"), "device exchange key", 32),
        )
        signature = unb64(content.get("sig"), "certificate signature", 64)
        verify(found.identity, canonical(found.fields()), signature, "a device certificate")
        return found


def revoked_device(content: object, identity: bytes) -> str | None:
    """The device id a revocation withdraws, if `content` is one signed by `identity`; None if
    it is not a revocation; Rejected if it is a forged or malformed one."""
    if not isinstance(content, dict) or "revoke" not in content:
        return None
    fields = content["revoke"]
    if not isinstance(fields, dict) or fields.get("v") != 1 or type(fields.get("v")) is not int:
        raise Rejected("malformed", "a revocation names its version")
    device_id = fields.get("revoke")
    if not isinstance(device_id, str) or unb64(fields.get("identity"), "identity key",
                                               32) != identity:
        raise Rejected("malformed", "a revocation names the device and the identity key")
    verify(identity, canonical(fields), unb64(content.get("sig"), "revocation signature", 64),
           "a device revocation")
    return device_id


@dataclass(frozen=True)
class Device:
    """One device of a person: its private keys and its certificate."""

    identity: IdentityKey
    origin: str
    device_id: str
    signing: nacl.signing.SigningKey
    exchange: nacl.public.PrivateKey

    @classmethod
    def generate(cls, identity: IdentityKey, origin: str) -> Device:
        return cls(
            identity, origin, b64(nacl.utils.random(16)),
            nacl.signing.SigningKey.generate(), nacl.public.PrivateKey.generate(),
        )

    @property
    def cert(self) -> DeviceCert:
        return DeviceCert(
            self.identity.public, self.origin, self.device_id,
            bytes(self.signing.verify_key), bytes(self.exchange.public_key),
        )

    def revocation(self) -> dict[str, Any]:
        """The content of the `org.tribridge.e2ee.device` event that withdraws this device: the
        identity key signs it, so nobody else (the bridge included) can withdraw a device."""
        fields = {"v": 1, "identity": b64(self.identity.public), "revoke": self.device_id}
        return {"revoke": fields,
                "sig": b64(self.identity.signing.sign(canonical(fields)).signature)}

    def announcement(self) -> dict[str, Any]:
        """The content of this device's `org.tribridge.e2ee.device` room event."""
        fields = self.cert.fields()
        return {"cert": fields, "sig": b64(self.identity.signing.sign(canonical(fields)).signature)}
