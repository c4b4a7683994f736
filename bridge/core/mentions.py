"""User ids inside message text, rewritten for the network the text is going to.

A body or HTML body can name people by user id: mention pills, reply fallbacks, or pasted ids.
On a phone or email network such an id *is* the phone number or email, so relaying it as is would
break invariant 5. Each real person of the source network named in the text becomes their ghost on
the target network (which is also the right mention there). Ids of the bridge's own users and of
other servers are left alone: they carry no private identity.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from urllib.parse import quote, unquote

from bridge.core.ghosts import ghost_localpart, is_bridge_user, parse_ghost_localpart, pseudonym
from bridge.core.ids import InvalidId, native_identity
from bridge.core.model import Network

# A user id as plain text, or percent-encoded as in https://matrix.to/#/%40alice%3Aserver links.
_PLAIN = r"@[a-z0-9._=\-/+]+:{server}"
_ENCODED = r"%40(?:[a-z0-9._\-]|%2[bB]|%3[dD]|%2[fF]|=|\+|/)+%3[aA]{server}"


@functools.lru_cache(maxsize=64)
def _pattern(server_name: str) -> re.Pattern[str]:
    server = re.escape(server_name)
    # The server name must end there, not run on into a longer host name.
    tail = r"(?![A-Za-z0-9.\-])"
    return re.compile(
        "(" + _PLAIN.format(server=server) + "|" + _ENCODED.format(server=server) + ")" + tail
    )


Owner = Callable[[str], "tuple[str, str] | None"]


def no_owner(localpart: str) -> tuple[str, str] | None:
    return None


def rewrite_user_ids(
    text: str, source: Network, target: Network, key: bytes, owner: Owner = no_owner
) -> str:
    """`text` with every real user of `source` named in it replaced by their ghost on `target`,
    and every ghost on `source` by who it stands for on `target`: the real person if they are of
    `target` (`owner` maps a ghost's localpart to their (network, user id)), else their ghost."""
    pattern = _pattern(source.server_name)

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        encoded = found.startswith("%40")
        user_id = unquote(found) if encoded else found
        ghost = _ghost_id(user_id, source, target, key, owner)
        if ghost is None:
            return found
        return quote(ghost, safe="") if encoded else ghost

    return pattern.sub(replace, text)


def _ghost_id(
    user_id: str, source: Network, target: Network, key: bytes, owner: Owner
) -> str | None:
    if is_bridge_user(user_id, source):
        return _ghost_seen_elsewhere(user_id, source, target, owner)
    try:
        identity = native_identity(user_id, source.identity, source.server_name)
    except InvalidId:
        return None
    localpart = ghost_localpart(target, source.id, pseudonym(key, source.id, identity))
    return target.user_id(localpart)



def _ghost_seen_elsewhere(
    user_id: str, source: Network, target: Network, owner: Owner
) -> str | None:
    """Who the ghost `user_id` (on `source`) stands for, as `target` knows them."""
    localpart = user_id[1:].partition(":")[0]
    network = parse_ghost_localpart(localpart, source, None)
    if network is None:
        return None  # the bot, or not one of our ghosts
    pseudo = localpart[-16:]
    if network == target.id:
        person = owner(localpart)
        return person[1] if person is not None and person[0] == target.id else None
    # A person of a third network: the same pseudonym names their ghost on `target`.
    return target.user_id(ghost_localpart(target, network, pseudo))
