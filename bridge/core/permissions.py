"""Who may do what: the ``[permissions]`` rules of the config, resolved for one user.

A rule's key is a user id (``@alice:wa.example``), every user of a server (``@*:wa.example``) or
everyone (``*``); the most specific key that matches wins. Levels are ordered:

- ``none``: the bridge ignores the person: nothing they say crosses, no command is taken;
- ``relay``: what they say crosses; they may use the commands about themselves (help, whoami,
  privacy, forget me), so that anyone whose messages the bridge carries controls their own data;
- ``user``: every command but the admin ones (link rooms, dm, invite, identity links);
- ``admin``: everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum


class Level(IntEnum):
    NONE = 0
    RELAY = 1
    USER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Level:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(
                f"{text!r} is not a level: use none, relay, user or admin"
            ) from None


@dataclass(frozen=True)
class Permissions:
    """The rules, with the defaults filled in: ``user`` for the configured networks' own users,
    ``relay`` for everyone else (a federated user in a portal room is carried, not served)."""

    rules: Mapping[str, Level]

    @classmethod
    def with_defaults(cls, rules: Mapping[str, Level], server_names: Iterable[str]) -> Permissions:
        merged: dict[str, Level] = {"*": Level.RELAY}
        for server in server_names:
            merged[f"@*:{server}"] = Level.USER
        merged.update(rules)
        return cls(merged)

    def level(self, user_id: str) -> Level:
        if user_id in self.rules:
            return self.rules[user_id]
        _, sep, server = user_id.partition(":")
        if sep and f"@*:{server}" in self.rules:
            return self.rules[f"@*:{server}"]
        return self.rules.get("*", Level.NONE)


def is_rule_key(key: str) -> bool:
    """Whether `key` has the shape of a rule key: ``*``, ``@*:server`` or ``@user:server``."""
    if key == "*":
        return True
    local, sep, server = key[1:].partition(":")
    return key.startswith("@") and bool(sep) and bool(local) and bool(server)
