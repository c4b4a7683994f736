"""Identities as people type them, normalised per kind, and the user id each one belongs to.

``dm wa:+1 (555) 123-4567``, ``invite fbm:Alice@Example.com`` and ``dm ig:@alice`` name people by
what they know of them. Normalising makes every spelling of one identity the same:

- phone: E.164. Spaces, dashes, dots and brackets are dropped, ``00`` becomes ``+``, and a
  national number (no ``+``) takes the configured default country code, its leading trunk ``0``
  dropped (``020 7946 0958`` with country code 44 is ``+442079460958``);
- email: trimmed and lower-cased;
- handle: as it is, without a leading ``@``.
"""

from __future__ import annotations

import re

from bridge.core.ids import (
    Identity,
    InvalidId,
    email_to_localpart,
    is_e164,
    is_valid_localpart,
    parse_user_id,
    unescape_localpart,
)
from bridge.core.model import Network

# Spaces, dashes of every kind, dots, brackets, and the invisible marks (bidi, zero-width) a
# number copied from a contacts app carries.
_PHONE_NOISE = re.compile(r"[\s\-.()\u00a0\u2010-\u2015\u2212\ufe58\ufe63\uff0d"
                          r"\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
# "+44 (0)20 7946 0958": the bracketed trunk zero is dialled only from inside the country.
_INTERNATIONAL = re.compile(r"\s*(\+|00)\d+\s*\(0\)")
# A domain of labels (letters, digits, hyphens; any script) with a dot and a top-level domain
# of letters (or its xn-- form), and no double quotes, brackets or commas in the local part:
# what a mistyped or pasted address carries (an apostrophe is fine: o'brien@example.com).
_EMAIL = re.compile(
    r"[^@\s\"<>(),;:\[\]]+@(?:[^\W_](?:[\w-]*[^\W_])?\.)+(?:[^\W\d_]{2,}|xn--[a-z0-9-]+)")
# A Matrix user id is at most 255 characters; the server name and "@:" take their share.
_MAX_LOCALPART = 200


_INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


class BadIdentity(ValueError):
    """What someone typed is not an identity of the network's kind; the message says why."""


def normalise(network: Network, text: str, default_country_code: str = "") -> Identity:
    """`text` as an identity of `network`'s kind; raise BadIdentity naming what is wrong."""
    # What a paste brings along: invisible marks, quotes or angle brackets round an address,
    # a full stop after it.
    text = _INVISIBLE.sub("", text).strip().strip("\"'<>`")
    if network.identity == "email":
        text = text.rstrip(".,;")
    if not text:
        raise BadIdentity(f"give the {network.identity} of someone on {network.label}")
    if text.startswith("@") and ":" in text:
        # A whole Matrix user id: fine if it is one of this network's people.
        try:
            user = parse_user_id(text)
        except InvalidId as exc:
            raise BadIdentity(f"{text!r} is not a user id: {exc}") from None
        if user.server_name != network.server_name:
            raise BadIdentity(f"{text} is not on {network.label} ({network.server_name})")
        text = user.localpart
        if network.identity == "email":
            return Identity("email", _email_from_localpart(text))
    if network.identity == "phone":
        return Identity("phone", _phone(text, default_country_code))
    if network.identity == "email":
        email = text.lower()
        if not _EMAIL.fullmatch(email):
            raise BadIdentity(f"{text!r} is not an email address such as alice@example.com")
        if len(email_to_localpart(email)) > _MAX_LOCALPART:
            raise BadIdentity(f"that address is too long for {network.label}")
        return Identity("email", email)
    # Lower-cased, as a homeserver makes every new user id (Synapse refuses capitals): people
    # type "Bob" for @bob.
    handle = text.removeprefix("@").lower()
    if not is_valid_localpart(handle):
        raise BadIdentity(
            f"{text!r} is not a handle on {network.label}: use a-z 0-9 . _ = - /"
        )
    if len(handle) > _MAX_LOCALPART:
        raise BadIdentity(f"that handle is too long for {network.label} "
                          f"(at most {_MAX_LOCALPART} characters)")
    return Identity("handle", handle)


def _phone(text: str, default_country_code: str) -> str:
    compact = _PHONE_NOISE.sub("", text.replace("(0)", "", 1) if _INTERNATIONAL.match(text)
                               else text)
    digits = compact
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if not digits.startswith("+"):
        if not default_country_code:
            raise BadIdentity(
                f"{text!r}: give the number in international form, e.g. +15551234567"
            )
        digits = "+" + default_country_code + digits.removeprefix("0")
    if not is_e164(digits):
        raise BadIdentity(f"{text!r} is not a phone number such as +15551234567")
    return digits


def _email_from_localpart(localpart: str) -> str:
    try:
        email = unescape_localpart(localpart).lower()
    except InvalidId as exc:
        raise BadIdentity(f"{localpart!r} is not an escaped email address: {exc}") from None
    if not _EMAIL.fullmatch(email):
        raise BadIdentity(f"{email!r} is not an email address")
    return email


def user_id_for(network: Network, identity: Identity) -> str:
    """The Matrix user id of the person with `identity` on `network`."""
    if identity.kind == "email":
        return network.user_id(email_to_localpart(identity.value))
    return network.user_id(identity.value)


def shown(identity: Identity) -> str:
    """How an identity is written back to people: ``+15551234567``, ``alice@example.com``."""
    return identity.value
