"""Ghosts: the users the bridge controls on one network, each standing for a person of another.

A ghost's localpart is ``<ghost_prefix><source network>_<pseudonym>``. The pseudonym is a keyed
BLAKE2b hash of (source network, native identity) under the bridge's secret, in lower-case base32:
stable across restarts and networks, unguessable without the secret, and free of the phone number
or email it stands for. The same person has the same pseudonym on every other network.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable

import nacl.encoding
import nacl.hash

from bridge.core.ids import Identity, forget_parsed, parse_user_id
from bridge.core.model import Network

_PSEUDONYM_BYTES = 10  # 80 bits: 16 base32 characters, no padding
_KEY_PERSON = b"tribridge-key"
_GHOST_PERSON = b"tribridge-ghost"


def derive_key(secret: bytes) -> bytes:
    """The 32-byte BLAKE2b key for pseudonyms, from a bridge secret of any length >= 32 bytes."""
    return nacl.hash.blake2b(
        secret, digest_size=32, person=_KEY_PERSON, encoder=nacl.encoding.RawEncoder
    )


@functools.lru_cache(maxsize=4096)
def pseudonym(key: bytes, source_network: str, identity: Identity) -> str:
    """The person's pseudonym (pure, so remembered: every relayed message asks for it once per
    target network)."""
    message = b"\x00".join(
        (source_network.encode(), identity.kind.encode(), identity.value.encode("utf-8"))
    )
    digest = nacl.hash.blake2b(
        message,
        digest_size=_PSEUDONYM_BYTES,
        key=key,
        person=_GHOST_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )
    return base64.b32encode(digest).decode("ascii").lower()


def forget_remembered() -> None:
    """Empty the memos that hold people's identities (phone numbers, emails) in memory: the
    pseudonyms and the parsed user ids. "forget me" calls this."""
    pseudonym.cache_clear()
    forget_parsed()


def ghost_localpart(target: Network, source_network: str, pseudo: str) -> str:
    return f"{target.ghost_prefix}{source_network}_{pseudo}"


def is_bridge_user(user_id: str, network: Network) -> bool:
    """True for the bot and the ghosts of `network`: the users whose events we never relay."""
    try:
        parsed = parse_user_id(user_id)
    except ValueError:
        return False
    if parsed.server_name != network.server_name:
        return False
    return parsed.localpart == network.bot or parsed.localpart.startswith(network.ghost_prefix)


def is_our_user(user_id: str, source: Network, networks: Iterable[Network]) -> bool:
    """`is_bridge_user` for `source`, or for any other network: a room federated between two
    bridged homeservers carries one network's ghosts into the other's pushes, and relaying
    them would send every message round and round (invariant 3)."""
    if is_bridge_user(user_id, source):
        return True
    return any(user_id.endswith(":" + net.server_name) and is_bridge_user(user_id, net)
               for net in networks if net is not source)


def parse_ghost_localpart(
    localpart: str, target: Network, networks: set[str] | None
) -> str | None:
    """The source network of a ghost localpart on `target`, or None if it is not one of ours
    (with `networks` None, any well-formed network id other than `target`'s is taken)."""
    if not localpart.startswith(target.ghost_prefix):
        return None
    rest = localpart[len(target.ghost_prefix) :]
    source, sep, pseudo = rest.partition("_")
    known = source in networks if networks is not None else source.isalnum() and source.islower()
    if not sep or not known or source == target.id:
        return None
    if len(pseudo) != 16 or not all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in pseudo):
        return None
    return source
