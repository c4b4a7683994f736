"""Bot commands: the table of what exists, and parsing a message into one invocation.

Parsing is pure: text in, an ``Invocation`` (the command and its checked arguments) or a
``Refusal`` (what is wrong, how to write it instead) out. The handlers (bridge/bot/) only ever
see arguments that passed these checks. In a management room a command needs no prefix; in any
other room it starts with the configured prefix (``!tb link``), so ordinary talk is never taken
for a command.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from bridge.core.lookup import BadIdentity, normalise
from bridge.core.model import Network
from bridge.core.permissions import Level

MAX_COMMAND = 2000  # characters; a longer command is refused as too long


class Where(Enum):
    ANYWHERE = "anywhere"
    PORTAL = "in a bridged room"  # rooms of a portal
    GROUP = "in a room that is not your management room"
    MANAGEMENT = "in your management room"


class Arg(Enum):
    """Argument kinds; each is checked by the parser."""

    TARGET = "<network>:<identity>"  # rest of the line, e.g. wa:+1 555 123 4567
    NETWORK = "<network>"
    ROOM = "<room id or alias>"
    ON_OFF = "on|off"
    CODE = "<code>"
    COMMAND = "<command>"
    CONFIRM = "confirm"


@dataclass(frozen=True)
class Spec:
    name: str  # one or two words: "help", "identity link"
    summary: str
    level: Level
    args: tuple[tuple[str, Arg, bool], ...] = ()  # (name, kind, required)
    where: Where = Where.ANYWHERE
    details: str = ""
    shown_usage: str = ""  # where the arguments go together: both or neither

    @property
    def usage(self) -> str:
        if self.shown_usage:
            return self.shown_usage
        parts = [self.name]
        for name, kind, required in self.args:
            shown = "discoverable|show-identity" if name == "setting" else kind.value
            parts.append(shown if required else f"[{shown}]")
        return " ".join(parts)


COMMANDS: tuple[Spec, ...] = (
    Spec("help", "list the commands, or explain one", Level.RELAY,
         (("command", Arg.COMMAND, False),)),
    Spec("version", "the bridge's version", Level.RELAY),
    Spec("ping", "round trip from the bridge to every homeserver", Level.USER),
    Spec("whoami", "your identity here, what other networks see of you, your linked accounts",
         Level.RELAY, (), Where.MANAGEMENT),
    Spec("link", "make this room a portal, or add a room of another network to its portal",
         Level.USER, (("network", Arg.NETWORK, False), ("room", Arg.ROOM, False)), Where.GROUP,
         "Without arguments the bridge creates a room on every other network, with this room's "
         "name and topic. With a network and a room, that existing room joins this room's "
         "portal: invite the bot there first; you must be allowed to manage both rooms.",
         "link [<network> <room id or alias>]"),
    Spec("unlink", "take this room out of its portal", Level.USER, (), Where.PORTAL,
         "The ghosts leave this room and the other rooms get a notice."),
    Spec("mirror", "show or change whether this portal's rooms share their name, topic and "
         "avatar", Level.USER, (("value", Arg.ON_OFF, False),), Where.PORTAL,
         "mirror on: a new name, topic or avatar set in one room of the portal is set on the "
         "others too. mirror off: each room keeps its own. Without on or off, says which it is "
         "now. The default is the bridge's (bridge.mirror_room_state). Changing it needs the "
         "power to change this room's settings."),
    Spec("invite", "invite a person of another network into this portal", Level.USER,
         (("target", Arg.TARGET, True),), Where.PORTAL,
         "They get an invite to the portal's room on their own network; nothing else about "
         "either side is revealed."),
    Spec("dm", "start a one-to-one chat with a person of another network", Level.USER,
         (("target", Arg.TARGET, True),), Where.MANAGEMENT,
         "They get a message request on their own network. If they accept, you get an invite "
         "to the chat here. If they decline or do not answer, you learn only 'no answer'."),
    Spec("privacy", "show or change what of you other networks can see and use", Level.RELAY,
         (("setting", Arg.COMMAND, False), ("value", Arg.ON_OFF, False)), Where.MANAGEMENT,
         "privacy discoverable on|off: whether others can reach you with dm and invite by your "
         "phone number, email or handle (default: off for phone and email, on for handles).\n"
         "privacy show-identity on|off: whether your phone number or email appears on other "
         "networks beside your name (default: off, unless the bridge's admin set "
         "expose_identity for your network).",
         "privacy [discoverable|show-identity on|off]"),
    Spec("identity link", "link your account on another network to this one", Level.USER,
         (("target", Arg.TARGET, True),), Where.MANAGEMENT,
         "The bot sends a one-time code to your management room on the other network; say "
         "'identity confirm <code>' there within 10 minutes. Linked accounts appear as one "
         "ghost on third networks."),
    Spec("identity confirm", "confirm an identity link with its code", Level.USER,
         (("code", Arg.CODE, True),), Where.MANAGEMENT),
    Spec("identity unlink", "undo your identity links", Level.USER, (), Where.MANAGEMENT),
    Spec("forget me", "erase what the bridge stores about you", Level.RELAY,
         (("confirm", Arg.CONFIRM, False),), Where.MANAGEMENT,
         "Erases your identity links, privacy settings and profile; your ghosts on other "
         "networks go back to a neutral name. Messages already relayed stay where they are."),
    Spec("status", "this portal's rooms and health, or your chats and portals", Level.USER),
    # In the management room: their answers list every portal's rooms (two people's DM
    # portals among them), which a group room's other members must not read.
    Spec("admin portals", "every portal and its rooms", Level.ADMIN, (), Where.MANAGEMENT),
    Spec("admin stats", "counts from the store and the outbox", Level.ADMIN, (),
         Where.MANAGEMENT),
    Spec("admin reload", "reload the config file, as SIGHUP does", Level.ADMIN, (),
         Where.MANAGEMENT),
)

_BY_NAME = {spec.name: spec for spec in COMMANDS}
_FIRST_WORDS = {spec.name.split()[0] for spec in COMMANDS}
SETTINGS = ("discoverable", "show-identity")


@dataclass(frozen=True)
class Invocation:
    spec: Spec
    args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Refusal:
    """Why the text is not a command that can run; `message` is the bot's whole reply."""

    message: str


@dataclass(frozen=True)
class Context:
    """What the parser needs to know about where and by whom a command was typed."""

    networks: Mapping[str, Network]
    here: str  # the network the command was typed on
    level: Level
    in_portal: bool
    in_management: bool
    prefix: str = "!tb"
    default_country_code: str = ""


def strip_prefix(body: str, prefix: str, in_management: bool) -> str | None:
    """The command text of a message, or None if the message is not meant for the bot."""
    text = body.strip()
    if len(text) > 2 and text[0] == text[-1] == "`":
        text = text[1:-1].strip()  # copied from the help, code marks and all
    # In any case (a phone's keyboard capitalises the first letter: "!Tb"), and as people
    # address someone: "!tb: help", "!tb, help". Otherwise the command, arguments and all,
    # would be relayed to every network as a message.
    rest = text[len(prefix):] if text[:len(prefix)].lower() == prefix.lower() else None
    if rest is not None and rest[:1] in (":", ","):
        rest = rest[1:]
    if rest is not None and (not rest or rest[0].isspace()):
        command = rest.strip()
    elif in_management:
        command = text
    else:
        return None
    # Cut, not dropped: still meant for the bot (whose reply says it is too long), and never
    # relayed as a message; cut to one character over, the outbox row stays small.
    return command[:MAX_COMMAND + 1]


def parse(text: str, ctx: Context) -> Invocation | Refusal:
    """Parse the command text (prefix already stripped) typed in `ctx`."""
    if len(text) > MAX_COMMAND:
        return Refusal(f"That is too long for a command (at most {MAX_COMMAND:,} characters).")
    words = text.split()
    if not words:
        return Refusal(f"Say {_say('help', ctx)} for the list of commands.")
    words[0] = words[0].lower()
    spec = _BY_NAME.get(" ".join(w.lower() for w in words[:2])) if len(words) > 1 else None
    if spec is not None:
        rest = text.split(None, 2)[2:]
    else:
        spec = _BY_NAME.get(words[0])
        rest = text.split(None, 1)[1:]
    if spec is None:
        return Refusal(_unknown(words, ctx))
    if ctx.level < spec.level:
        return Refusal(
            f"{spec.name}: you need the {spec.level.label} level for this "
            f"(you have {ctx.level.label}); ask the bridge's admin."
        )
    if spec.where is Where.PORTAL and not ctx.in_portal:
        return Refusal(f"{spec.name} works only in a bridged room.")
    if spec.where is Where.MANAGEMENT and not ctx.in_management:
        bot = ctx.networks[ctx.here].bot_user_id if ctx.here in ctx.networks else "the bot"
        return Refusal(
            f"{spec.name} works only in your management room, since its answers are about you "
            f"and this room should not see them: start a direct chat with {bot}."
        )
    if spec.where is Where.GROUP and ctx.in_management:
        return Refusal(
            f"{spec.name} works in the room you want to bridge, not in your management room: "
            f"invite the bot there and say {ctx.prefix} {spec.name}."
        )
    try:
        args = _arguments(spec, rest[0] if rest else "", ctx)
    except ValueError as exc:
        return Refusal(f"{spec.name}: {exc}\nUsage: {_say(spec.usage, ctx)}")
    return Invocation(spec, args)


def _arguments(spec: Spec, rest: str, ctx: Context) -> dict[str, Any]:
    args: dict[str, Any] = {}
    remaining = rest.strip()
    for index, (name, kind, required) in enumerate(spec.args):
        if not remaining:
            if required:
                raise ValueError(f"{kind.value} is missing")
            continue
        last = index == len(spec.args) - 1
        if kind is Arg.TARGET:
            args[name] = _target(remaining, ctx)  # the rest of the line: phone numbers have spaces
            remaining = ""
            continue
        if kind is Arg.COMMAND and spec.name == "help":
            wanted = " ".join(remaining.lower().split())  # "help identity link"
            if wanted not in _BY_NAME and wanted not in _FIRST_WORDS:
                hint = _closest(wanted, sorted(set(_BY_NAME) | _FIRST_WORDS))
                raise ValueError(
                    f"there is no command {wanted!r}" + (f" (did you mean {hint}?)" if hint else "")
                )
            args[name] = wanted
            remaining = ""
            continue
        word, _, remaining = _split_word(remaining)
        args[name] = _word(spec, name, kind, word, ctx)
        if last and remaining:
            raise ValueError(f"unexpected {remaining!r} at the end")
    if remaining:
        raise ValueError(f"{spec.name} takes no arguments")
    if spec.name == "link" and ("network" in args) != ("room" in args):
        raise ValueError("give both a network and a room, or neither")
    if spec.name == "privacy" and "setting" in args and "value" not in args:
        raise ValueError(f"say on or off after {args['setting']}")
    return args


def _split_word(text: str) -> tuple[str, str, str]:
    """(first word, separator, the rest) with any whitespace between words."""
    parts = text.split(None, 1)
    return (parts[0], " ", parts[1].strip()) if len(parts) == 2 else (parts[0], "", "")


def _word(spec: Spec, name: str, kind: Arg, word: str, ctx: Context) -> Any:
    if kind is Arg.NETWORK:
        return _network_id(word, ctx)
    if kind is Arg.ROOM:
        # Room ids of room version 12 are opaque ("!abc..."), older ones carry ":server".
        if not ((word.startswith("!") and len(word) > 1) or
                (word.startswith("#") and ":" in word[2:])):
            raise ValueError(f"{word!r} is not a room id (!abc...) or alias (#name:server)")
        return word
    if kind is Arg.ON_OFF:
        if word.lower() not in ("on", "off"):
            raise ValueError(f"say on or off, not {word!r}")
        return word.lower() == "on"
    if kind is Arg.CONFIRM:
        if word.lower() != "confirm":
            raise ValueError(f"the only word allowed here is 'confirm', not {word!r}")
        return True
    if kind is Arg.CODE:
        return word.upper()
    if spec.name == "privacy":
        if word.lower() not in SETTINGS:
            hint = _closest(word.lower(), SETTINGS)
            raise ValueError(
                f"no setting {word!r}" + (f" (did you mean {hint}?)" if hint else "")
                + "; the settings are discoverable and show-identity"
            )
        return word.lower()
    # help's optional command name: accepted as typed, the handler explains unknown ones.
    return word.lower()


def _network_id(word: str, ctx: Context) -> str:
    net = word.lower()
    if net in ctx.networks:
        return net
    if word[:1] in ("!", "#"):
        raise ValueError(f"{word!r} is a room: give its network first")
    for net_id, network in ctx.networks.items():  # "WhatsApp" works as well as "wa"
        if network.label.lower() == net:
            return net_id
    known = ", ".join(f"{n} ({ctx.networks[n].label})" for n in sorted(ctx.networks))
    raise ValueError(f"no network {word!r}; the networks are {known}")


def _target(text: str, ctx: Context) -> tuple[str, Any]:
    text = text.strip().strip("`")
    if text.startswith("@") and ":" in text:
        # A whole Matrix user id: its server says which network.
        server = text.partition(":")[2].strip()
        for net_id, network in ctx.networks.items():
            if network.server_name == server:
                try:
                    return net_id, normalise(network, text, ctx.default_country_code)
                except BadIdentity as exc:
                    raise ValueError(str(exc)) from None
        raise ValueError(f"{text!r} is on none of the bridged networks; write the person as "
                         f"<network>:<identity>, e.g. {_example(ctx)}")
    net_word, sep, identity = text.partition(":")
    if not sep:
        raise ValueError(f"write the person as <network>:<identity>, e.g. {_example(ctx)}")
    net_id = _network_id(net_word.strip(), ctx)
    try:
        return net_id, normalise(ctx.networks[net_id], identity, ctx.default_country_code)
    except BadIdentity as exc:
        raise ValueError(str(exc)) from None


def _example(ctx: Context) -> str:
    examples = {"phone": "+15551234567", "handle": "alice", "email": "alice@example.com"}
    net_id, network = sorted(ctx.networks.items())[0]
    return f"{net_id}:{examples[network.identity]}"


def _unknown(words: list[str], ctx: Context) -> str:
    typed = words[0]
    if typed in _FIRST_WORDS:  # "identity frob": the group exists, the sub-command does not
        subs = sorted(s.name for s in COMMANDS if s.name.split()[0] == typed)
        return f"Unknown command {' '.join(words[:2])!r}. Try one of: {', '.join(subs)}."
    names = sorted({s.name for s in COMMANDS} | _FIRST_WORDS)
    hint = _closest(" ".join(words[:2]), names) or _closest(typed, names)
    suggestion = f" Did you mean {_say(hint, ctx)}?" if hint else ""
    return f"Unknown command {typed!r}.{suggestion} Say {_say('help', ctx)} for the list."


def _closest(word: str, choices: Any) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _say(command: str, ctx: Context) -> str:
    return f"`{command}`" if ctx.in_management else f"`{ctx.prefix} {command}`"


def help_text(ctx: Context, command: str | None = None) -> str:
    """The list of commands open to the reader, or the usage and details of one."""
    if command:
        spec = _BY_NAME.get(command) or next(
            (s for s in COMMANDS if s.name.split()[0] == command), None
        )
        if spec is None:
            return _unknown([command], ctx)
        group = [s for s in COMMANDS if s.name.split()[0] == spec.name.split()[0]]
        lines = []
        for s in group if command not in _BY_NAME else [spec]:
            lines.append(f"{_say(s.usage, ctx)}: {s.summary}.")
            if s.details:
                lines.append(s.details)
            if ctx.level < s.level:
                lines.append(f"(needs the {s.level.label} level; you have {ctx.level.label})")
        return "\n".join(lines)
    open_to_you = [s for s in COMMANDS if ctx.level >= s.level]
    here = [s for s in open_to_you if _works_here(s, ctx)]
    elsewhere = [s for s in open_to_you if not _works_here(s, ctx)]
    where = (
        "In this management room, type commands as they are."
        if ctx.in_management
        else f"In this room, start commands with {ctx.prefix}."
    )
    lines = [f"tribridge commands. {where}"]
    lines += [f"- {_say(s.usage, ctx)}: {s.summary}" for s in here]
    # Named, not offered: typed in a group room, an identity would be read by the whole room.
    bot = ctx.networks[ctx.here].bot_user_id if ctx.here in ctx.networks else "the bot"
    places = {Where.MANAGEMENT: f"in your management room (a direct chat with {bot})",
              Where.PORTAL: "in a bridged room", Where.GROUP: "in the room to bridge"}
    for kind, place in places.items():
        names = [s.name for s in elsewhere if s.where is kind]
        if names:
            lines.append(f"Only {place}: {', '.join(names)}.")
    lines.append(f"Say {_say('help <command>', ctx)} for more about one.")
    return "\n".join(lines)


def _works_here(spec: Spec, ctx: Context) -> bool:
    if spec.where is Where.MANAGEMENT:
        return ctx.in_management
    if spec.where is Where.GROUP:
        return not ctx.in_management
    if spec.where is Where.PORTAL:
        return ctx.in_portal
    return True
