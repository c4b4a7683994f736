"""Matrix user ids, and the native identity each network derives from them.

A person's native identity is read from their Matrix user id by the network's identity kind
(../shared/design.md, "identity"):

- phone: the localpart is an E.164 number with its plus, ``@+15551234567:wa.example``;
- handle: the localpart as it is, ``@alice:ig.example``;
- email: the localpart in the Matrix spec's escaping, ``@alice=40example.com:fbm.example``.

A user whose localpart does not fit the network's kind (an admin account on a phone network, a
user from another server) still gets an identity, of kind ``other``, so that every sender can be
given a stable ghost; it is treated as private.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from bridge.core.model import IdentityKind

# Localpart characters of the current Matrix spec (user identifiers, "historical" ones aside).
_LOCALPART = re.compile(r"[a-z0-9._=\-/+]+")
_SERVER_NAME = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_MAX_USER_ID = 255


class InvalidId(ValueError):
    """A string that should be a Matrix id is not one."""


@dataclass(frozen=True)
class UserId:
    localpart: str
    server_name: str

    def __str__(self) -> str:
        return f"@{self.localpart}:{self.server_name}"


def parse_user_id(text: str) -> UserId:
    """Parse ``@localpart:server``; raise InvalidId naming what is wrong."""
    if not isinstance(text, str):
        raise InvalidId("a user id starts with @")
    return _parse_user_id(text)


# Every relayed message parses its sender's id three times (echo check, ghost, permissions):
# the answers are remembered. They hold user ids, phone numbers among them, so "forget me"
# empties this with the pseudonyms (bridge.core.ghosts.forget_remembered).
@functools.lru_cache(maxsize=4096)
def _parse_user_id(text: str) -> UserId:
    if not text.startswith("@"):
        raise InvalidId("a user id starts with @")
    if len(text) > _MAX_USER_ID:
        raise InvalidId("a user id is at most 255 characters")
    localpart, sep, server = text[1:].partition(":")
    if not sep or not localpart or not server:
        raise InvalidId("a user id looks like @localpart:server")
    if not is_valid_localpart(localpart):
        raise InvalidId("the localpart has characters outside a-z 0-9 . _ = - / +")
    if not _SERVER_NAME.fullmatch(server):
        raise InvalidId("the server name is not a host name with an optional port")
    return UserId(localpart, server)


def forget_parsed() -> None:
    """Forget the user ids parsed so far (see _parse_user_id)."""
    _parse_user_id.cache_clear()


def is_valid_localpart(localpart: str) -> bool:
    return bool(_LOCALPART.fullmatch(localpart))


def is_valid_server_name(server_name: str) -> bool:
    return bool(_SERVER_NAME.fullmatch(server_name))


def is_e164(text: str) -> bool:
    return bool(_E164.fullmatch(text))


# The spec's mapping of other character sets into localparts: a-z, 0-9, '-' and '.' stand for
# themselves, '_' doubles, an upper-case letter becomes '_' and its lower case, every other byte
# of the UTF-8 encoding becomes '=' and two lower-case hex digits.
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-.")


def escape_localpart(text: str) -> str:
    out: list[str] = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if byte in _PLAIN:
            out.append(char)
        elif char == "_":
            out.append("__")
        elif "A" <= char <= "Z":
            out.append("_" + char.lower())
        else:
            out.append(f"={byte:02x}")
    return "".join(out)


def unescape_localpart(localpart: str) -> str:
    """Invert escape_localpart; raise InvalidId for a malformed escape."""
    raw = bytearray()
    i = 0
    while i < len(localpart):
        char = localpart[i]
        if char == "=":
            pair = localpart[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789abcdef" for c in pair):
                raise InvalidId("'=' must be followed by two lower-case hex digits")
            raw.append(int(pair, 16))
            i += 3
        elif char == "_":
            nxt = localpart[i + 1 : i + 2]
            if nxt == "_":
                raw.append(ord("_"))
            elif "a" <= nxt <= "z":
                raw.append(ord(nxt.upper()))
            else:
                raise InvalidId("'_' must be followed by '_' or a lower-case letter")
            i += 2
        elif ord(char) in _PLAIN or char in "/+":
            raw.append(ord(char))
            i += 1
        else:
            raise InvalidId(f"{char!r} is not allowed in an escaped localpart")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidId("the escaped bytes are not UTF-8") from exc


def email_to_localpart(email: str) -> str:
    """The localpart of the Matrix user who owns `email` (emails compare case-insensitively)."""
    return escape_localpart(email.strip().lower())


@dataclass(frozen=True)
class Identity:
    """A person's native identifier on their own network."""

    kind: IdentityKind | Literal["other"]
    value: str

    @property
    def is_private(self) -> bool:
        """Phone numbers and emails (and ids we cannot read) are private; handles are public."""
        return self.kind != "handle"


def native_identity(user_id: str, kind: IdentityKind, server_name: str) -> Identity:
    """The native identity of `user_id` on a network of identity `kind` served by `server_name`."""
    parsed = parse_user_id(user_id)
    if parsed.server_name != server_name:
        # Someone from another server (federation): not a native identity of this network.
        return Identity("other", str(parsed))
    localpart = parsed.localpart
    if kind == "phone":
        return Identity("phone", localpart) if is_e164(localpart) else Identity("other", localpart)
    if kind == "email":
        try:
            email = unescape_localpart(localpart)
        except InvalidId:
            return Identity("other", localpart)
        if email.count("@") == 1 and all(email.split("@")):
            return Identity("email", email.lower())
        return Identity("other", localpart)
    return Identity("handle", localpart)
