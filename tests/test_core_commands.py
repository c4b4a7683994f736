"""Bot commands and who may run them (bridge/core/commands.py, bridge/core/permissions.py).

Every assertion is on what the person typing sees: the reply text of a Refusal, or the checked
arguments the handler gets in an Invocation.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.commands import (
    COMMANDS,
    MAX_COMMAND,
    Context,
    Invocation,
    Refusal,
    Spec,
    Where,
    help_text,
    parse,
    strip_prefix,
)
from bridge.core.ids import Identity
from bridge.core.model import Network
from bridge.core.permissions import Level, Permissions, is_rule_key

WA = Network("wa", "WhatsApp", "wa.localhost", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.localhost", "handle", "tribridge", "_tb_", True)
FBM = Network("fbm", "Messenger", "fbm.localhost", "email", "tribridge", "_tb_", False)
NETWORKS = {"wa": WA, "ig": IG, "fbm": FBM}
KNOWN = "fbm (Messenger), ig (Instagram), wa (WhatsApp)"
BY_NAME = {spec.name: spec for spec in COMMANDS}


def ctx(
    level: Level = Level.ADMIN,
    *,
    in_portal: bool = False,
    in_management: bool = True,
    country: str = "",
    prefix: str = "!tb",
) -> Context:
    return Context(NETWORKS, "wa", level, in_portal, in_management, prefix, country)


def ctx_for(spec: Spec, level: Level = Level.ADMIN) -> Context:
    """A context where `spec` may be typed: a portal room, a group room or the management room."""
    if spec.where is Where.PORTAL:
        return ctx(level, in_portal=True, in_management=False)
    if spec.where is Where.GROUP:
        return ctx(level, in_management=False)
    return ctx(level)


def refused(text: str, context: Context | None = None) -> str:
    """The bot's reply to `text`, which must be refused."""
    result = parse(text, context or ctx())
    assert isinstance(result, Refusal), result
    return result.message


def invoked(text: str, context: Context | None = None) -> Invocation:
    result = parse(text, context or ctx())
    assert isinstance(result, Invocation), result
    return result


def usage_line(spec: Spec, context: Context) -> str:
    shown = spec.usage if context.in_management else f"{context.prefix} {spec.usage}"
    return f"Usage: `{shown}`"


# --- every command, with valid arguments ----------------------------------------------------

VALID: dict[str, tuple[str, dict[str, Any]]] = {
    "help": ("help dm", {"command": "dm"}),
    "version": ("version", {}),
    "ping": ("ping", {}),
    "whoami": ("whoami", {}),
    "link": ("link ig !abc:ig.localhost", {"network": "ig", "room": "!abc:ig.localhost"}),
    "unlink": ("unlink", {}),
    "mirror": ("mirror off", {"value": False}),
    "invite": ("invite ig:alice", {"target": ("ig", Identity("handle", "alice"))}),
    "dm": ("dm fbm:alice@example.com", {"target": ("fbm", Identity("email", "alice@example.com"))}),
    "privacy": ("privacy discoverable on", {"setting": "discoverable", "value": True}),
    "identity link": (
        "identity link wa:+15551234567", {"target": ("wa", Identity("phone", "+15551234567"))}
    ),
    "identity confirm": ("identity confirm k7x2m9", {"code": "K7X2M9"}),
    "identity unlink": ("identity unlink", {}),
    "forget me": ("forget me confirm", {"confirm": True}),
    "status": ("status", {}),
    "admin portals": ("admin portals", {}),
    "admin stats": ("admin stats", {}),
    "admin reload": ("admin reload", {}),
}


def test_the_valid_examples_cover_every_command() -> None:
    assert set(VALID) == {spec.name for spec in COMMANDS}


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda s: s.name)
def test_every_command_parses_with_valid_arguments(spec: Spec) -> None:
    text, expected = VALID[spec.name]
    result = invoked(text, ctx_for(spec))
    assert result.spec == spec
    assert result.name == spec.name
    assert dict(result.args) == expected


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda s: s.name)
def test_every_command_runs_at_its_own_level_and_is_refused_one_below(spec: Spec) -> None:
    text, _ = VALID[spec.name]
    assert isinstance(parse(text, ctx_for(spec, spec.level)), Invocation)
    below = Level(spec.level - 1)
    message = refused(text, ctx_for(spec, below))
    assert message == (
        f"{spec.name}: you need the {spec.level.label} level for this "
        f"(you have {below.label}); ask the bridge's admin."
    )


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("HELP", "help"),
        ("Help dm", "help"),
        ("Identity Link ig:alice", "identity link"),
        ("ADMIN STATS", "admin stats"),
        ("  status  ", "status"),
        ("forget   me", "forget me"),
    ],
)
def test_command_names_ignore_case_and_extra_spaces(text: str, name: str) -> None:
    assert invoked(text).name == name


def test_a_command_typed_with_the_prefix_in_a_group_room() -> None:
    group = ctx(in_management=False)
    command = strip_prefix("!tb invite ig:@alice", "!tb", in_management=False)
    assert command == "invite ig:@alice"
    result = invoked(command, ctx(in_management=False, in_portal=True))
    assert dict(result.args) == {"target": ("ig", Identity("handle", "alice"))}
    assert isinstance(parse("version", group), Invocation)


@pytest.mark.parametrize(
    "text",
    ["whoami", "dm ig:alice", "privacy", "identity link ig:alice", "identity confirm X",
     "identity unlink", "forget me"],
)
def test_commands_about_oneself_work_only_in_the_management_room(text: str) -> None:
    # Their answers name linked accounts, DM targets, settings: not for a group room's eyes.
    message = refused(text, ctx(in_management=False, in_portal=True))
    assert "works only in your management room" in message
    assert "@tribridge:wa.localhost" in message


# --- missing and extra arguments: the reply shows the usage ---------------------------------


@pytest.mark.parametrize(
    ("text", "name", "problem"),
    [
        ("dm", "dm", "<network>:<identity> is missing"),
        ("invite", "invite", "<network>:<identity> is missing"),
        ("identity link", "identity link", "<network>:<identity> is missing"),
        ("identity confirm", "identity confirm", "<code> is missing"),
        ("link ig", "link", "give both a network and a room, or neither"),
        ("privacy discoverable", "privacy", "say on or off after discoverable"),
    ],
)
def test_a_missing_argument_is_named_and_the_usage_shown(
    text: str, name: str, problem: str
) -> None:
    spec = BY_NAME[name]
    context = ctx_for(spec)
    assert refused(text, context) == f"{name}: {problem}\n{usage_line(spec, context)}"


@pytest.mark.parametrize("spec", [s for s in COMMANDS if not s.args], ids=lambda s: s.name)
def test_an_argument_to_a_command_that_takes_none_is_refused_with_the_usage(spec: Spec) -> None:
    context = ctx_for(spec)
    message = refused(f"{spec.name} please", context)
    assert message == f"{spec.name}: {spec.name} takes no arguments\n{usage_line(spec, context)}"


@pytest.mark.parametrize(
    ("text", "name", "extra"),
    [
        ("identity confirm abc def", "identity confirm", "def"),
        ("forget me confirm now", "forget me", "now"),
        ("privacy discoverable on please", "privacy", "please"),
        ("link ig !abc:ig.localhost and more", "link", "and more"),
    ],
)
def test_extra_words_at_the_end_are_quoted_with_the_usage(
    text: str, name: str, extra: str
) -> None:
    spec = BY_NAME[name]
    context = ctx_for(spec)
    message = refused(text, context)
    assert message == f"{name}: unexpected {extra!r} at the end\n{usage_line(spec, context)}"


def test_room_version_12_ids_without_a_server_are_room_ids() -> None:
    context = ctx(in_management=False)
    result = parse("link ig !VNrmdY6CyxztgCSF5Qk8x4Ska3rS6JJSYUT0fLeyyt8", context)
    assert isinstance(result, Invocation)
    assert result.args["room"] == "!VNrmdY6CyxztgCSF5Qk8x4Ska3rS6JJSYUT0fLeyyt8"


def test_help_for_something_that_is_no_command_says_so() -> None:
    message = refused("help dm now")
    assert message.startswith("help: there is no command 'dm now'")
    assert "did you mean" in refused("help statsu")


def test_usage_outside_the_management_room_carries_the_prefix() -> None:
    message = refused("invite", ctx(in_management=False, in_portal=True, prefix="!bridge"))
    assert message.endswith("\nUsage: `!bridge invite <network>:<identity>`")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("link ig room", "'room' is not a room id (!abc...) or alias (#name:server)"),
        ("link ig #nocolon", "'#nocolon' is not a room id (!abc...) or alias (#name:server)"),
        ("link tg !abc:tg.example", f"no network 'tg'; the networks are {KNOWN}"),
    ],
)
def test_link_checks_its_network_and_room(text: str, problem: str) -> None:
    message = refused(text, ctx(in_management=False))
    assert message.startswith(f"link: {problem}\n")
    assert message.endswith("Usage: `!tb link [<network> <room id or alias>]`")


def test_link_accepts_an_alias_and_a_network_label() -> None:
    result = invoked("link Instagram #lounge:ig.localhost", ctx(in_management=False))
    assert dict(result.args) == {"network": "ig", "room": "#lounge:ig.localhost"}
    assert dict(invoked("link", ctx(in_management=False)).args) == {}


# --- mistyped command names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("hlep", "help"),
        ("statsu", "status"),
        ("whomai", "whoami"),
        ("verison", "version"),
        ("pnig", "ping"),
        ("ivnite", "invite"),
    ],
)
def test_a_mistyped_name_gets_did_you_mean(typed: str, meant: str) -> None:
    assert refused(typed) == (
        f"Unknown command {typed!r}. Did you mean `{meant}`? Say `help` for the list."
    )
    outside = refused(typed, ctx(in_management=False))
    assert f"Did you mean `!tb {meant}`?" in outside
    assert "Say `!tb help` for the list." in outside


def test_a_name_far_from_every_command_gets_no_guess() -> None:
    assert refused("xyzzy") == "Unknown command 'xyzzy'. Say `help` for the list."


@pytest.mark.parametrize(
    ("typed", "subs"),
    [
        ("identity lnk", "identity confirm, identity link, identity unlink"),
        ("identity", "identity confirm, identity link, identity unlink"),
        ("admin stat", "admin portals, admin reload, admin stats"),
        ("forget it", "forget me"),
    ],
)
def test_an_unknown_sub_command_lists_the_group(typed: str, subs: str) -> None:
    assert refused(typed) == f"Unknown command {typed!r}. Try one of: {subs}."


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_command_points_to_help(text: str) -> None:
    assert refused(text) == "Say `help` for the list of commands."
    assert refused(text, ctx(in_management=False)) == "Say `!tb help` for the list of commands."


# --- permissions and where a command works --------------------------------------------------


def test_a_relay_user_trying_dm_is_told_the_level_needed_and_their_own() -> None:
    message = refused("dm wa:+15551234567", ctx(Level.RELAY))
    assert message == (
        "dm: you need the user level for this (you have relay); ask the bridge's admin."
    )


def test_a_user_trying_admin_stats_is_told_the_level_needed_and_their_own() -> None:
    message = refused("admin stats", ctx(Level.USER))
    assert message == (
        "admin stats: you need the admin level for this (you have user); ask the bridge's admin."
    )


def test_the_level_is_checked_before_the_arguments() -> None:
    # A relay user learns nothing about dm's arguments: only that dm is not theirs.
    assert "you need the user level" in refused("dm", ctx(Level.RELAY))


def test_a_person_at_level_none_can_run_nothing() -> None:
    for spec in COMMANDS:
        message = refused(VALID[spec.name][0], ctx_for(spec, Level.NONE))
        assert "(you have none)" in message, spec.name


@pytest.mark.parametrize("text", ["invite ig:alice", "unlink"])
def test_portal_commands_outside_a_portal_say_where_they_work(text: str) -> None:
    name = text.split()[0]
    for context in (ctx(in_management=False), ctx(in_management=True)):
        assert refused(text, context) == f"{name} works only in a bridged room."


def test_link_in_the_management_room_says_to_use_the_room_to_bridge() -> None:
    assert refused("link") == (
        "link works in the room you want to bridge, not in your management room: "
        "invite the bot there and say !tb link."
    )
    assert "say !b link" in refused("link", ctx(prefix="!b"))


# --- targets: <network>:<identity> ----------------------------------------------------------


def target(text: str, context: Context | None = None) -> tuple[str, Identity]:
    result = invoked(f"dm {text}", context)
    value: tuple[str, Identity] = result.args["target"]
    return value


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("wa:+1 (555) 123-4567", ("wa", Identity("phone", "+15551234567"))),
        ("wa:+1.555.123.4567", ("wa", Identity("phone", "+15551234567"))),
        ("wa: +15551234567 ", ("wa", Identity("phone", "+15551234567"))),
        ("wa:0044 20 7946 0958", ("wa", Identity("phone", "+442079460958"))),
        ("fbm:Alice@Example.COM", ("fbm", Identity("email", "alice@example.com"))),
        ("ig:@alice", ("ig", Identity("handle", "alice"))),
        ("ig:alice", ("ig", Identity("handle", "alice"))),
        ("WA:+15551234567", ("wa", Identity("phone", "+15551234567"))),
        ("whatsapp:+15551234567", ("wa", Identity("phone", "+15551234567"))),
        ("WhatsApp:+15551234567", ("wa", Identity("phone", "+15551234567"))),
        ("Instagram:alice", ("ig", Identity("handle", "alice"))),
        ("messenger:bob@example.org", ("fbm", Identity("email", "bob@example.org"))),
        ("wa:@+15551234567:wa.localhost", ("wa", Identity("phone", "+15551234567"))),
        ("ig:@alice:ig.localhost", ("ig", Identity("handle", "alice"))),
    ],
)
def test_targets_are_normalised(typed: str, expected: tuple[str, Identity]) -> None:
    assert target(typed) == expected


def test_a_national_number_takes_the_default_country_code() -> None:
    assert target("wa:020 7946 0958", ctx(country="44")) == (
        "wa", Identity("phone", "+442079460958")
    )
    assert target("wa:555 123 4567", ctx(country="1")) == ("wa", Identity("phone", "+15551234567"))


def test_a_national_number_without_a_default_country_code_is_refused_clearly() -> None:
    message = refused("dm wa:020 7946 0958")
    assert message == (
        "dm: '020 7946 0958': give the number in international form, e.g. +15551234567\n"
        "Usage: `dm <network>:<identity>`"
    )


def test_an_unknown_network_lists_the_known_ones() -> None:
    message = refused("dm tg:alice")
    assert message.startswith(f"dm: no network 'tg'; the networks are {KNOWN}\n")


def test_a_target_without_a_network_shows_an_example() -> None:
    message = refused("invite alice", ctx(in_portal=True, in_management=False))
    assert message.startswith(
        "invite: write the person as <network>:<identity>, e.g. fbm:alice@example.com\n"
    )


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        ("wa:call me", "'call me': give the number in international form"),
        ("wa:+1 555 CALL NOW", "'+1 555 CALL NOW' is not a phone number such as +15551234567"),
        ("fbm:alice", "'alice' is not an email address such as alice@example.com"),
        ("ig:Al ice", "'Al ice' is not a handle on Instagram"),
        ("ig:", "give the handle of someone on Instagram"),
        ("wa:@+15551234567:matrix.org", "@+15551234567:matrix.org is not on WhatsApp"),
    ],
)
def test_a_bad_identity_is_named(typed: str, problem: str) -> None:
    message = refused(f"dm {typed}")
    assert message.startswith(f"dm: {problem}")
    assert message.endswith("\nUsage: `dm <network>:<identity>`")


# --- privacy, forget me, identity confirm ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("privacy", {}),
        ("privacy discoverable on", {"setting": "discoverable", "value": True}),
        ("privacy discoverable OFF", {"setting": "discoverable", "value": False}),
        ("privacy Show-Identity on", {"setting": "show-identity", "value": True}),
    ],
)
def test_privacy_settings(text: str, args: dict[str, Any]) -> None:
    assert dict(invoked(text, ctx(Level.RELAY)).args) == args


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("privacy discoverble on", "no setting 'discoverble' (did you mean discoverable?); "
         "the settings are discoverable and show-identity"),
        ("privacy show-identiy off", "no setting 'show-identiy' (did you mean show-identity?); "
         "the settings are discoverable and show-identity"),
        ("privacy colour on", "no setting 'colour'; the settings are discoverable and "
         "show-identity"),
        ("privacy discoverable yes", "say on or off, not 'yes'"),
        ("privacy show-identity", "say on or off after show-identity"),
    ],
)
def test_privacy_refusals_name_the_problem(text: str, problem: str) -> None:
    assert refused(text, ctx(Level.RELAY)) == (
        f"privacy: {problem}\nUsage: `privacy [discoverable|show-identity on|off]`"
    )


def test_forget_me_asks_first_and_takes_confirm() -> None:
    assert dict(invoked("forget me", ctx(Level.RELAY)).args) == {}
    assert dict(invoked("forget me confirm", ctx(Level.RELAY)).args) == {"confirm": True}
    assert dict(invoked("Forget Me CONFIRM", ctx(Level.RELAY)).args) == {"confirm": True}
    assert refused("forget me please", ctx(Level.RELAY)) == (
        "forget me: the only word allowed here is 'confirm', not 'please'\n"
        "Usage: `forget me [confirm]`"
    )


def test_identity_confirm_upper_cases_the_code() -> None:
    assert invoked("identity confirm abc").args == {"code": "ABC"}
    assert invoked("identity confirm aBc9").args == {"code": "ABC9"}


def test_arguments_may_be_separated_by_tabs_or_newlines_like_the_command_name() -> None:
    # The command name is split on any whitespace; the arguments should be too.
    result = parse("privacy\tdiscoverable\ton", ctx())
    assert isinstance(result, Invocation), result
    assert dict(result.args) == {"setting": "discoverable", "value": True}
    result = parse("link ig\n!abc:ig.localhost", ctx(in_management=False))
    assert isinstance(result, Invocation), result


# --- strip_prefix ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "in_management", "expected"),
    [
        ("!tb help", False, "help"),
        ("  !tb   dm ig:alice  ", False, "dm ig:alice"),
        ("!tb", False, ""),
        ("help", False, None),  # ordinary talk in a group room
        ("hello everyone", False, None),
        ("!tbx help", False, None),  # another bot's prefix, not ours
        ("!TB help", False, "help"),  # any case: not relayed with its arguments
        ("!Tb invite wa:+15551234567", False, "invite wa:+15551234567"),
        ("!tb: help", False, "help"),  # as one addresses someone
        ("!tb, help", False, "help"),
        ("!tb:", False, ""),
        ("!tb:help", False, None),  # not the prefix and a space: someone else's word
        ("!TBx help", False, None),
        ("help", True, "help"),  # the management room needs no prefix
        ("  whoami  ", True, "whoami"),
        ("!tb help", True, "help"),  # ... but takes one
        ("!tbx help", True, "!tbx help"),  # not stripped: parsed (and refused) as typed
    ],
)
def test_strip_prefix(body: str, in_management: bool, expected: str | None) -> None:
    assert strip_prefix(body, "!tb", in_management) == expected


def test_the_prefix_word_alone_is_not_stripped_from_a_longer_word() -> None:
    assert strip_prefix("!tbhelp", "!tb", False) is None
    assert refused(strip_prefix("!tbx help", "!tb", True) or "").startswith(
        "Unknown command '!tbx'."
    )


@pytest.mark.parametrize("in_management", [False, True])
def test_an_over_long_command_is_refused_as_too_long(in_management: bool) -> None:
    # Still a command (never relayed as a message, never dropped without a word), cut short.
    long = strip_prefix("!tb invite wa:+15551234567 " + "x" * 50_000, "!tb", in_management)
    assert long is not None and len(long) == MAX_COMMAND + 1
    assert refused(long) == "That is too long for a command (at most 2,000 characters)."
    fits = strip_prefix("!tb " + "x" * (MAX_COMMAND - 4), "!tb", in_management)
    assert fits is not None and not refused(fits).startswith("That is too long")


def test_a_custom_prefix() -> None:
    assert strip_prefix("!bridge status", "!bridge", False) == "status"
    assert strip_prefix("!tb status", "!bridge", False) is None


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [Level.NONE, Level.RELAY, Level.USER, Level.ADMIN])
def test_help_lists_only_the_commands_open_to_the_level(level: Level) -> None:
    text = help_text(ctx(level))
    named = [name for line in text.splitlines() if line.startswith("Only ")
             for name in line.split(": ", 1)[1].rstrip(".").split(", ")]
    for spec in COMMANDS:
        listed = f"- `{spec.usage}`: {spec.summary}" in text.splitlines()
        elsewhere = spec.where in (Where.GROUP, Where.PORTAL)  # not in a management room
        assert listed == (level >= spec.level and not elsewhere), spec.name
        assert (spec.name in named) == (level >= spec.level and elsewhere), spec.name
    assert text.startswith("tribridge commands. In this management room, type commands as")
    assert text.endswith("Say `help <command>` for more about one.")


def test_help_for_a_relay_user_lists_exactly_their_commands() -> None:
    lines = [line for line in help_text(ctx(Level.RELAY)).splitlines() if line.startswith("- ")]
    names = [line[3:].split("`")[0] for line in lines]
    assert names == [
        "help [<command>]",
        "version",
        "whoami",
        "privacy [discoverable|show-identity on|off]",
        "forget me [confirm]",
    ]


def test_help_outside_the_management_room_shows_the_prefix() -> None:
    text = help_text(ctx(Level.USER, in_management=False))
    assert "In this room, start commands with !tb." in text
    assert "- `!tb ping`: " in text
    assert text.endswith("Say `!tb help <command>` for more about one.")


def test_help_in_a_group_room_names_the_personal_commands_without_offering_them() -> None:
    # Typed here, an identity (dm wa:+1...) would be read by the whole room.
    text = help_text(ctx(Level.USER, in_management=False))
    assert "`!tb dm" not in text and "`!tb identity link" not in text
    assert ("Only in your management room (a direct chat with @tribridge:wa.localhost): "
            "whoami, dm, privacy, identity link, identity confirm, identity unlink, "
            "forget me.") in text.splitlines()
    assert "Only in a bridged room: unlink, mirror, invite." in text.splitlines()


def test_help_for_one_command_shows_its_usage_and_details() -> None:
    text = help_text(ctx(Level.USER), "dm")
    lines = text.splitlines()
    assert lines[0] == (
        "`dm <network>:<identity>`: start a one-to-one chat with a person of another network."
    )
    assert lines[1].startswith("They get a message request on their own network.")
    assert "needs the" not in text


def test_help_for_a_command_above_the_level_says_so() -> None:
    text = help_text(ctx(Level.RELAY, in_management=False), "dm")
    assert text.startswith("`!tb dm <network>:<identity>`: ")
    assert text.endswith("(needs the user level; you have relay)")


def test_help_for_a_group_lists_its_sub_commands() -> None:
    text = help_text(ctx(Level.USER), "identity")
    usages = [line.split("`")[1] for line in text.splitlines() if line.startswith("`")]
    assert usages == [
        "identity link <network>:<identity>",
        "identity confirm <code>",
        "identity unlink",
    ]


def test_help_for_an_unknown_command_guesses() -> None:
    assert help_text(ctx(), "hlep") == (
        "Unknown command 'hlep'. Did you mean `help`? Say `help` for the list."
    )


def test_help_for_a_two_word_command_can_be_asked_in_chat() -> None:
    # The command list says "Say `help <command>` for more about one" and lists commands such as
    # `identity link` and `forget me`; asking for one of them must work.
    for name in ("identity link", "forget me", "admin stats"):
        result = parse(f"help {name}", ctx())
        assert isinstance(result, Invocation), (name, result)
        text = help_text(ctx(), result.args.get("command"))
        assert text.startswith(f"`{BY_NAME[name].usage}`: "), (name, text)


# --- properties -----------------------------------------------------------------------------

levels = st.sampled_from(list(Level))
words = st.sampled_from(
    ["help", "dm", "invite", "link", "unlink", "identity", "confirm", "forget", "me", "privacy",
     "discoverable", "on", "off", "admin", "stats", "wa:", "ig:@", "fbm:", "whatsapp:", "+1",
     "00", "0", "!a:b", "#x:y", ":", "@", "=", "(", "\t", "\n", "\u00a0", "confirm"]
)  # fmt: skip
texts = (
    st.text()
    | st.lists(words | st.text(max_size=4), max_size=8).map(" ".join)
    | st.lists(words | st.text(max_size=4), max_size=8).map("".join)
)


@settings(max_examples=1000, deadline=None)
@given(
    texts, levels, st.booleans(), st.booleans(), st.sampled_from(["", "1", "44"]),
    st.sampled_from(["wa", "ig", "fbm"]),
)
def test_parse_never_raises_and_answers_within_the_rules(
    text: str, level: Level, in_portal: bool, in_management: bool, country: str, here: str
) -> None:
    context = Context(NETWORKS, here, level, in_portal, in_management, "!tb", country)
    result = parse(text, context)
    assert isinstance(result, Invocation | Refusal)
    if isinstance(result, Refusal):
        assert result.message.strip()
        return
    assert level >= result.spec.level
    if result.spec.where is Where.PORTAL:
        assert in_portal
    if result.spec.where is Where.GROUP:
        assert not in_management
    for name, _kind, required in result.spec.args:
        assert name in result.args or not required


@settings(max_examples=500, deadline=None)
@given(st.text(), st.text(min_size=1, max_size=16), st.booleans())
def test_strip_prefix_never_raises(body: str, prefix: str, in_management: bool) -> None:
    result = strip_prefix(body, prefix, in_management)
    assert result is None or (isinstance(result, str) and len(result) <= MAX_COMMAND + 1)
    if result is not None and not in_management:
        # Only a message that starts with the prefix, in any case, perhaps in code marks.
        text = body.strip()
        if len(text) > 2 and text[0] == text[-1] == "`":
            text = text[1:-1].strip()
        assert text[:len(prefix)].lower() == prefix.lower()


# --- permissions ----------------------------------------------------------------------------


def test_the_most_specific_rule_wins() -> None:
    rules = Permissions(
        {"*": Level.NONE, "@*:wa.localhost": Level.RELAY, "@alice:wa.localhost": Level.ADMIN}
    )
    assert rules.level("@alice:wa.localhost") is Level.ADMIN
    assert rules.level("@bob:wa.localhost") is Level.RELAY
    assert rules.level("@alice:ig.localhost") is Level.NONE
    assert rules.level("@alice:wa.localhost.evil") is Level.NONE


def test_a_user_rule_can_lower_a_server_rule() -> None:
    rules = Permissions({"@*:wa.localhost": Level.ADMIN, "@mallory:wa.localhost": Level.NONE})
    assert rules.level("@mallory:wa.localhost") is Level.NONE
    assert rules.level("@alice:wa.localhost") is Level.ADMIN


def test_no_rules_means_nobody_is_served() -> None:
    assert Permissions({}).level("@alice:wa.localhost") is Level.NONE


def test_defaults_are_user_for_the_configured_servers_and_relay_for_others() -> None:
    rules = Permissions.with_defaults({}, ["wa.localhost", "ig.localhost"])
    assert rules.level("@+15551234567:wa.localhost") is Level.USER
    assert rules.level("@alice:ig.localhost") is Level.USER
    assert rules.level("@eve:matrix.org") is Level.RELAY
    assert rules.level("@eve:wa.localhost:8448") is Level.RELAY  # another server, by its port


def test_configured_rules_override_the_defaults() -> None:
    rules = Permissions.with_defaults(
        {"@*:wa.localhost": Level.RELAY, "@root:ig.localhost": Level.ADMIN, "*": Level.NONE},
        ["wa.localhost", "ig.localhost"],
    )
    assert rules.level("@bob:wa.localhost") is Level.RELAY
    assert rules.level("@root:ig.localhost") is Level.ADMIN
    assert rules.level("@alice:ig.localhost") is Level.USER
    assert rules.level("@eve:matrix.org") is Level.NONE


@pytest.mark.parametrize(
    ("text", "level"),
    [("none", Level.NONE), ("relay", Level.RELAY), ("User", Level.USER), ("ADMIN", Level.ADMIN)],
)
def test_level_parse(text: str, level: Level) -> None:
    assert Level.parse(text) is level
    assert level.label == text.lower()


@pytest.mark.parametrize("text", ["superuser", "", "admins", " user", "3"])
def test_level_parse_errors_name_the_text_and_the_levels(text: str) -> None:
    with pytest.raises(ValueError) as info:
        Level.parse(text)
    assert str(info.value) == f"{text!r} is not a level: use none, relay, user or admin"


def test_levels_are_ordered() -> None:
    assert Level.NONE < Level.RELAY < Level.USER < Level.ADMIN


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("*", True),
        ("@*:wa.localhost", True),
        ("@alice:wa.localhost", True),
        ("@alice:wa.localhost:8448", True),
        ("alice", False),
        ("alice:wa.localhost", False),
        ("@alice", False),
        ("@alice:", False),
        ("@:wa.localhost", False),
        ("**", False),
        ("", False),
    ],
)
def test_is_rule_key(key: str, ok: bool) -> None:
    assert is_rule_key(key) is ok


def test_a_bare_matrix_id_is_read_by_its_server_and_a_room_needs_its_network_first() -> None:
    dm = invoked("dm @bob:ig.localhost")
    assert dm.args["target"] == ("ig", Identity("handle", "bob"))
    assert invoked("dm @+15551234567:wa.localhost").args["target"] == (
        "wa", Identity("phone", "+15551234567"))
    assert "is on none of the bridged networks" in refused("dm @bob:elsewhere.org")
    room = refused("link !abc:ig.localhost x", ctx(in_management=False))
    assert room.startswith("link: '!abc:ig.localhost' is a room: give its network first")


def test_a_command_copied_from_the_help_with_its_code_marks_runs() -> None:
    assert strip_prefix("`!tb help`", "!tb", in_management=False) == "help"
    assert strip_prefix("`whoami`", "!tb", in_management=True) == "whoami"
    assert invoked("dm `wa:+15551234567`").args["target"] == (
        "wa", Identity("phone", "+15551234567"))
