"""User ids inside message text, rewritten for the network the text is going to.

A body or HTML body can name people by user id: mention pills, reply fallbacks, or pasted ids.
On a phone or email network such an id *is* the phone number or email, so relaying it as is would
break invariant 5. Each real person of the source network named in the text becomes their ghost on
the target network (which is also the right mention there). Ids of the bridge's own users and of
other servers are left alone: they carry no private identity.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from bridge.core.ghosts import ghost_localpart, is_bridge_user, parse_ghost_localpart, pseudonym
from bridge.core.ids import Identity, InvalidId, email_to_localpart, native_identity
from bridge.core.model import Network
from bridge.core.privacy import decimal_digits

# A user id as plain text, or percent-encoded as in https://matrix.to/#/%40alice%3Aserver links.
_PLAIN = r"@[a-z0-9._=\-/+]+:{server}"
_ENCODED = r"%40(?:[a-z0-9._\-]|%2[bB]|%3[dD]|%2[fF]|=|\+|/)+%3[aA]{server}"
# A link to a user as clients write them: matrix.to with any mix of percent-encoding (or
# none), or a matrix: URI (`matrix:u/alice:server`, the id without its @).
_LINK = re.compile(r"(https?://matrix\.to/#/|matrix:u/)([^\"'<>\s?]+)", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _pattern(server_name: str) -> re.Pattern[str]:
    server = re.escape(server_name)
    # The server name must end there, not run on into a longer host name. Server names are
    # compared as DNS does, in any case.
    tail = r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9\-])"  # a full stop after it ends a sentence
    return re.compile(
        "(" + _PLAIN.format(server=server) + "|" + _ENCODED.format(server=server) + ")" + tail,
        re.IGNORECASE,
    )


def _as_user_id(found: str, source: Network) -> str | None:
    """`found` (an id as text, or a link's decoded target) as a user id of `source`, its server
    name spelt as `source` does; None if it is not one."""
    local, sep, server = found.rpartition(":")
    if not sep or not local.startswith("@") or server.lower() != source.server_name.lower():
        return None
    return f"{local}:{source.server_name}"


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

    def replace_link(match: re.Match[str]) -> str:
        prefix, raw = match.group(1), match.group(2)
        decoded = html.unescape(unquote(html.unescape(raw)))
        user_id = _as_user_id(decoded if prefix.lower().endswith("#/") else "@" + decoded,
                              source)
        ghost = _ghost_id(user_id, source, target, key, owner) if user_id else None
        if ghost is None:
            return match.group(0)
        if not prefix.lower().endswith("#/"):
            return prefix + ghost[1:]
        return prefix + (quote(ghost, safe="") if raw.startswith("%") else ghost)  # as it came

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        encoded = found.startswith("%40")
        user_id = _as_user_id(unquote(found) if encoded else found, source)
        ghost = _ghost_id(user_id, source, target, key, owner) if user_id else None
        if ghost is None:
            return found
        return quote(ghost, safe="") if encoded else ghost

    if "matrix" in text:
        text = _LINK.sub(replace_link, text)
    return pattern.sub(replace, text)


Private = tuple[Identity, str]  # a mentioned person's phone number or email, and what shows instead


def mentioned_private(
    content: Mapping[str, Any], source: Network, key: bytes
) -> list[Private]:
    """The people of `source` whose phone number or email `content` may show as a mention:
    those in its m.mentions, and those its text names by user id or links to, however encoded.

    A person who set no display name is mentioned by their localpart, which on a phone or email
    network is their number or address: rewriting their id is not enough, the link's text and
    the body carry it too. Each comes with the name their ghost shows in its stead."""
    if source.identity not in ("phone", "email"):
        return []
    found: set[str] = set()
    pattern = _pattern(source.server_name)
    # An edit's fallback text and its new content are one message: whoever either mentions
    # is masked in both.
    new = content.get("m.new_content")
    for part in (content, new) if isinstance(new, Mapping) else (content,):
        mentions = part.get("m.mentions")
        users = mentions.get("user_ids") if isinstance(mentions, Mapping) else None
        if isinstance(users, list):
            found.update(u for u in users if isinstance(u, str))
        for field_name in ("body", "formatted_body"):
            text = part.get(field_name)
            if isinstance(text, str) and source.server_name.lower() in text.lower():
                # Undone twice: an entity may hide a percent-escape, and the other way round.
                plain = html.unescape(unquote(html.unescape(text))).replace("matrix:u/", "@")
                found.update(m.group(0) for m in pattern.finditer(plain))
    out: dict[Identity, str] = {}
    for candidate in found:
        user_id = _as_user_id(candidate, source)
        if user_id is None or is_bridge_user(user_id, source):
            continue
        try:
            identity = native_identity(user_id, source.identity, source.server_name)
        except InvalidId:
            continue
        if identity.kind in ("phone", "email"):
            pseudo = pseudonym(key, source.id, identity)
            out[identity] = f"{source.label} user {pseudo[:4]}"
    return list(out.items())


def mask_private(text: str, people: Iterable[Private]) -> str:
    """`text` with every way it shows the phone numbers and emails of `people` replaced by
    their neutral names. A run of digits shows a number if it is seven or more of its digits,
    or holds its last seven (privacy.reveals_identity's rule), whatever the separators, digits
    and entities it is written with; an email shows by itself, its localpart form or their
    percent-escapes. One pass over the text for all the people: a message naming thousands
    costs what it is long, not its length times their number."""
    last7: dict[str, str] = {}  # a number's last seven digits -> the name shown
    windows: dict[str, list[tuple[str, str]]] = {}  # seven digits in a row -> (number, name)
    emails: dict[str, str] = {}  # an email's form, lower-cased -> the name shown
    for identity, shown in people:
        if identity.kind == "phone":
            digits = identity.value.lstrip("+")
            last7.setdefault(digits[-7:], shown)
            for i in range(len(digits) - 6):
                windows.setdefault(digits[i:i + 7], []).append((digits, shown))
        else:
            forms = {identity.value, email_to_localpart(identity.value)}
            for form in forms | {quote(f, safe="") for f in forms}:
                emails.setdefault(form.lower(), shown)
    if not last7 and not emails:
        return text
    if "&#" in text:
        text = _ENTITY.sub(_plain_entity, text)
    if last7:

        def phone(match: re.Match[str]) -> str:
            run = decimal_digits(match.group(0))
            for digits, shown in windows.get(run[:7], ()):
                if run in digits:  # seven or more of the number's digits
                    return shown
            for i in range(len(run) - 6):
                found = last7.get(run[i:i + 7])
                if found is not None:  # the number's last seven, among others
                    return found
            return match.group(0)

        text = _DIGIT_RUN.sub(phone, text)
    if emails:
        alternatives = "|".join(re.escape(f) for f in sorted(emails, key=len, reverse=True))
        # Whole addresses only: not carol@example.com inside bcarol@example.community.
        pattern = re.compile(rf"(?<![\w.+\-])(?:{alternatives})(?![\w\-]|\.\w)", re.IGNORECASE)
        text = pattern.sub(lambda m: _shown_for(m.group(0), emails), text)
    return text


def _shown_for(found: str, emails: Mapping[str, str]) -> str:
    """The name for an address the case-blind pattern matched. Its lower case is nearly always
    a key; but the pattern also takes the long s for an s and the dotless i for an i, which
    lower() keeps, so those are matched again form by form."""
    shown = emails.get(found.lower())
    if shown is not None:
        return shown
    for form, name in emails.items():
        if re.fullmatch(re.escape(form), found, re.IGNORECASE):
            return name
    return found  # not reached: the pattern matched one of the forms


def _plain_entity(match: re.Match[str]) -> str:
    """A numeric character reference as its character, for the characters numbers and
    addresses are made of (none of which HTML needs escaped); any other left as it is."""
    hexa, decimal = match.group(1), match.group(2)
    code = int(hexa, 16) if hexa else int(decimal)
    ch = chr(code) if code < 0x110000 else ""
    return ch if ch and (ch.isalnum() or ch in "@+.-_=%") else match.group(0)


_ENTITY = re.compile(r"&#(?:[xX]([0-9a-fA-F]{1,6})|([0-9]{1,7}));")
# Digits as a number is written: a plus (or its percent-escape, or the full-width one) first,
# then digits (of any script) with up to four separators between them: spaces, dashes of every
# kind, dots, slashes, commas, underscores, brackets. Not inside a word (a ghost's pseudonym
# may hold digits).
_SEPARATOR = r"[\s\-.()/,_\u2010-\u2015\u2212]"
_DIGIT_RUN = re.compile(
    r"(?<![A-Za-z0-9_])(?:\+|%2[bB]|\uff0b)?\d(?:" + _SEPARATOR + r"{0,4}\d)+(?![A-Za-z])"
)


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
