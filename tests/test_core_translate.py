"""One inbound event in, actions out (bridge/core/translate.py, bridge/core/actions.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.core.actions import (
    BotTask,
    GhostSync,
    JoinRoom,
    Member,
    ProfileSeen,
    Redact,
    RoomState,
    SendMessage,
    SendNotice,
    from_payload,
    txn_id,
)
from bridge.core.ghosts import derive_key, ghost_localpart, parse_ghost_localpart, pseudonym
from bridge.core.ids import Identity, email_to_localpart
from bridge.core.model import EventRef, Network, Portal
from bridge.core.permissions import Level, Permissions
from bridge.core.translate import Rules, Translation, translate

WA = Network("wa", "WhatsApp", "wa.localhost", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.localhost", "handle", "tribridge", "_tb_", True)
FBM = Network("fbm", "Messenger", "fbm.localhost", "email", "tribridge", "_tb_", False)
NETWORKS = {n.id: n for n in (WA, IG, FBM)}
ROOMS = {"wa": "!wa:wa.localhost", "ig": "!ig:ig.localhost", "fbm": "!fbm:fbm.localhost"}
PORTAL = Portal("5b0b7f43-2d4e-4a57-9a4c-4f5f4bd1a2c1", ROOMS)
KEY = derive_key(b"k" * 32)

ALICE_WA = "@+15551234567:wa.localhost"
ALICE_PSEUDO = pseudonym(KEY, "wa", Identity("phone", "+15551234567"))


def message(
    content: Any,
    *,
    sender: str = ALICE_WA,
    event_id: str = "$ev1",
    room_id: str = ROOMS["wa"],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "sender": sender,
        "room_id": room_id,
        "event_id": event_id,
        "content": content,
        **extra,
    }


def member(user: str, membership: str, room: str = ROOMS["wa"], **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "sender": user,
        "state_key": user,
        "room_id": room,
        "event_id": "$member",
        "content": {"membership": membership, **content},
    }


def from_wa(event: dict[str, Any], portal: Portal | None = PORTAL) -> Translation:
    return translate(event, WA, NETWORKS, portal, KEY)


def sends(translation: Translation) -> dict[str, SendMessage]:
    """The SendMessage actions by target network; fails if anything else came out."""
    assert all(isinstance(a, SendMessage) for a in translation.actions)
    by_network = {a.network: a for a in translation.actions if isinstance(a, SendMessage)}
    assert len(by_network) == len(translation.actions)
    return by_network


# --- messages --------------------------------------------------------------------------------


def test_a_text_message_goes_to_every_other_room_of_the_portal() -> None:
    out = sends(from_wa(message({"msgtype": "m.text", "body": "hello"})))
    assert set(out) == {"ig", "fbm"}
    for target_id, action in out.items():
        target = NETWORKS[target_id]
        assert action.room_id == ROOMS[target_id]
        assert action.ghost == ghost_localpart(target, "wa", ALICE_PSEUDO)
        assert action.ghost == f"_tb_wa_{ALICE_PSEUDO}"
        assert parse_ghost_localpart(action.ghost, target, set(NETWORKS)) == "wa"
        assert action.content == {"msgtype": "m.text", "body": "hello"}
        assert action.source == EventRef("wa", ROOMS["wa"], "$ev1", ALICE_WA)


def test_content_is_rebuilt_from_known_fields_only() -> None:
    content = {
        "msgtype": "m.text",
        "body": "*hi*",
        "format": "org.matrix.custom.html",
        "formatted_body": "<b>hi</b>",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$other"}},
        "m.mentions": {"user_ids": ["@+15559876543:wa.localhost"]},
        "extra": 1,
    }
    for action in sends(from_wa(message(content))).values():
        # The reply relation crosses (its event id is mapped per network at delivery), the
        # mentioned person as their ghost there; unknown fields do not cross.
        assert {k: v for k, v in action.content.items() if k != "m.mentions"} == {
            "msgtype": "m.text",
            "body": "*hi*",
            "format": "org.matrix.custom.html",
            "formatted_body": "<b>hi</b>",
            "m.relates_to": {"m.in_reply_to": {"event_id": "$other"}},
        }
        (mentioned,) = action.content["m.mentions"]["user_ids"]
        assert mentioned.startswith("@_tb_wa_") and "5559876543" not in mentioned


@pytest.mark.parametrize(
    "html",
    [
        {"format": "text/markdown", "formatted_body": "<b>hi</b>"},
        {"formatted_body": "<b>hi</b>"},
        {"format": "org.matrix.custom.html"},
        {"format": "org.matrix.custom.html", "formatted_body": ["<b>hi</b>"]},
    ],
)
def test_html_is_kept_only_with_the_html_format(html: dict[str, Any]) -> None:
    out = sends(from_wa(message({"msgtype": "m.text", "body": "hi", **html})))
    assert len(out) == 2
    for action in out.values():
        assert action.content == {"msgtype": "m.text", "body": "hi"}


@pytest.mark.parametrize("msgtype", ["m.notice", "m.emote"])
def test_notices_and_emotes_are_relayed(msgtype: str) -> None:
    out = sends(from_wa(message({"msgtype": msgtype, "body": "waves"})))
    assert {a.content["msgtype"] for a in out.values()} == {msgtype}
    assert set(out) == {"ig", "fbm"}


IMAGE = {
    "msgtype": "m.image", "body": "cat.png", "url": "mxc://wa.localhost/cat",
    "info": {"mimetype": "image/png", "size": 2048, "w": 64, "h": 48,
             "thumbnail_url": "mxc://wa.localhost/thumb",
             "thumbnail_info": {"mimetype": "image/png", "w": 8, "h": 6, "size": 90},
             "x-secret": "not carried"},
    "x-extra": "not carried",
}


@pytest.mark.parametrize("msgtype", ["m.image", "m.file", "m.audio", "m.video"])
def test_files_cross_with_their_info_and_nothing_unknown(msgtype: str) -> None:
    out = sends(from_wa(message({**IMAGE, "msgtype": msgtype, "filename": "cat.png"})))
    assert set(out) == {"ig", "fbm"}
    for action in out.values():
        # Source mxc URIs: delivery swaps in the copies it uploads to each target.
        assert action.content == {
            "msgtype": msgtype, "body": "cat.png", "filename": "cat.png",
            "url": "mxc://wa.localhost/cat",
            "info": {"mimetype": "image/png", "size": 2048, "w": 64, "h": 48,
                     "thumbnail_url": "mxc://wa.localhost/thumb",
                     "thumbnail_info": {"mimetype": "image/png", "w": 8, "h": 6, "size": 90}},
        }


def test_a_voice_message_crosses_as_one_with_its_waveform_and_previews_their_blur() -> None:
    voice = {"msgtype": "m.audio", "body": "Voice message", "url": "mxc://wa.localhost/v",
             "info": {"mimetype": "audio/ogg", "duration": 4200,
                      "xyz.amorgan.blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj"},
             "org.matrix.msc3245.voice": {},
             "org.matrix.msc1767.audio": {"duration": 4200, "waveform": [0, 512, 1024, 7]}}
    for action in sends(from_wa(message(voice))).values():
        assert action.content["org.matrix.msc3245.voice"] == {}
        assert action.content["org.matrix.msc1767.audio"] == {
            "duration": 4200, "waveform": [0, 512, 1024, 7]}
        assert action.content["info"]["xyz.amorgan.blurhash"] == "LEHV6nWB2yk8pyo0adR*.7kCMdnj"
    odd = {**voice, "org.matrix.msc1767.audio": {"waveform": ["loud", -1]}}
    for action in sends(from_wa(message(odd))).values():
        assert "org.matrix.msc1767.audio" not in action.content  # nothing unchecked crosses


def test_a_sticker_crosses_as_a_sticker() -> None:
    event = message({"body": "wave", "url": "mxc://wa.localhost/st", "info": {"w": 1}})
    event["type"] = "m.sticker"
    out = sends(from_wa(event))
    assert {a.event_type for a in out.values()} == {"m.sticker"}
    assert all(a.content == {"body": "wave", "url": "mxc://wa.localhost/st", "info": {"w": 1}}
               for a in out.values())


@pytest.mark.parametrize(
    "content",
    [
        # Only mxc URIs are carried: an http URL in content is never fetched (no SSRF).
        {"msgtype": "m.image", "body": "a", "url": "http://169.254.169.254/latest"},
        {"msgtype": "m.image", "body": "a", "url": "mxc://wa.localhost/../../etc"},
        {"msgtype": "m.image", "body": "a", "url": "mxc://evil host/x"},
        {"msgtype": "m.file", "body": "a.pdf"},
        {"msgtype": "m.file", "url": "mxc://wa.localhost/a"},
        {"msgtype": "m.location", "body": "here", "geo_uri": "geo:0,0"},
    ],
)
def test_media_without_a_usable_file_is_not_relayed(content: dict[str, Any]) -> None:
    assert from_wa(message(content)).actions == []


def test_a_bad_thumbnail_is_left_out_but_the_file_crosses() -> None:
    content = {**IMAGE, "info": {"thumbnail_url": "https://example.com/t.png", "w": 3}}
    for action in sends(from_wa(message(content))).values():
        assert action.content["info"] == {"w": 3}


def test_a_file_declared_over_the_limit_goes_as_a_line_and_its_sender_is_told() -> None:
    big = {**IMAGE, "body": "our cat, asleep", "filename": "cat.png",
           "info": {"size": 60 * 1024 * 1024},
           "m.relates_to": {"m.in_reply_to": {"event_id": "$asked"}}}
    notice, *lines = from_wa(message(big)).actions
    assert isinstance(notice, SendNotice)
    assert (notice.network, notice.room_id) == ("wa", ROOMS["wa"])
    assert notice.content["body"] == (
        "Your file does not reach the other networks: it is 60 MB, and this bridge carries "
        "files up to 50 MB. The message goes without it.")
    assert notice.content["m.relates_to"] == {"m.in_reply_to": {"event_id": "$ev1"}}
    # The others see that something was sent, its caption, and what it answered: no file.
    assert {a.network for a in lines} == {"ig", "fbm"}
    for line in lines:
        assert isinstance(line, SendMessage) and line.event_type == "m.room.message"
        assert line.content["body"] == (
            "(An image was sent here, too large for the bridge to carry.) our cat, asleep")
        assert "url" not in line.content
        assert line.content["m.relates_to"] == {"m.in_reply_to": {"event_id": "$asked"}}
    small_limit = translate(message(IMAGE), WA, NETWORKS, PORTAL, KEY,
                            rules=Rules(max_media_bytes=1024))
    assert [type(a) for a in small_limit.actions] == [SendNotice, SendMessage, SendMessage]


def test_a_file_claiming_an_absurd_size_gets_the_notice_too() -> None:
    # Room versions 1-5 allow integers of any size in events: 10**400 is no float.
    notice, *_ = from_wa(message({**IMAGE, "info": {"size": 10**400}})).actions
    assert isinstance(notice, SendNotice)
    assert notice.content["body"].startswith(
        "Your file does not reach the other networks: it is over 1 PB, and this bridge")


def test_txn_ids_are_deterministic_per_event_and_target() -> None:
    first = sends(from_wa(message({"msgtype": "m.text", "body": "hi"})))
    again = sends(from_wa(message({"msgtype": "m.text", "body": "hi"})))
    other = sends(from_wa(message({"msgtype": "m.text", "body": "hi"}, event_id="$ev2")))
    assert {n: a.txn_id for n, a in first.items()} == {n: a.txn_id for n, a in again.items()}
    assert first["ig"].txn_id != first["fbm"].txn_id
    assert other["ig"].txn_id != first["ig"].txn_id
    assert other["fbm"].txn_id != first["fbm"].txn_id


def test_txn_ids_never_change_between_versions() -> None:
    # An upgrade that changed them would make every action queued before it go out twice:
    # the homeserver recognises a retry only by the same id.
    assert txn_id("wa", "$event:wa.example", "ig", "message") == (
        "tb106abfc94d21b0133db17f058ea276422")


def test_the_same_person_has_the_same_pseudonym_on_every_other_network() -> None:
    out = sends(from_wa(message({"msgtype": "m.text", "body": "hi"})))
    assert out["ig"].ghost.removeprefix("_tb_") == out["fbm"].ghost.removeprefix("_tb_")


def test_different_people_get_different_ghosts() -> None:
    bob = "@+15559876543:wa.localhost"
    alice_out = sends(from_wa(message({"msgtype": "m.text", "body": "hi"})))
    bob_out = sends(from_wa(message({"msgtype": "m.text", "body": "hi"}, sender=bob)))
    assert alice_out["ig"].ghost != bob_out["ig"].ghost


def test_a_message_from_another_network_reaches_the_other_two() -> None:
    event = message(
        {"msgtype": "m.text", "body": "hi"}, sender="@alice:ig.localhost", room_id=ROOMS["ig"]
    )
    out = sends(translate(event, IG, NETWORKS, PORTAL, KEY))
    assert set(out) == {"wa", "fbm"}
    assert out["wa"].room_id == ROOMS["wa"]
    assert out["wa"].ghost.startswith("_tb_ig_")


@pytest.mark.parametrize(
    "sender",
    [
        "@tribridge:wa.localhost",  # the bot
        f"@_tb_ig_{ALICE_PSEUDO}:wa.localhost",  # a ghost standing for someone on ig
        f"@_tb_fbm_{ALICE_PSEUDO}:wa.localhost",
    ],
)
def test_the_bridge_never_relays_its_own_bot_or_ghosts(sender: str) -> None:
    result = from_wa(message({"msgtype": "m.text", "body": "echo?"}, sender=sender))
    assert result.actions == []


def test_a_room_outside_any_portal_relays_nothing() -> None:
    result = from_wa(message({"msgtype": "m.text", "body": "hi"}), portal=None)
    assert result.actions == []


def test_a_portal_with_a_room_on_an_unknown_network_skips_that_room() -> None:
    portal = Portal("p", {**ROOMS, "tg": "!tg:tg.localhost"})
    out = sends(from_wa(message({"msgtype": "m.text", "body": "hi"}), portal=portal))
    assert set(out) == {"ig", "fbm"}


@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_no_phone_number_appears_in_a_ghost(phone: str) -> None:
    event = message({"msgtype": "m.text", "body": "hi"}, sender=f"@{phone}:wa.localhost")
    out = sends(from_wa(event))
    assert set(out) == {"ig", "fbm"}
    for action in out.values():
        assert phone.lstrip("+")[-7:] not in action.ghost


@given(st.emails().map(str.lower))
def test_no_email_appears_in_a_ghost(email: str) -> None:
    sender = f"@{email_to_localpart(email)}:fbm.localhost"
    if len(sender) > 255:
        return  # not a valid user id at all
    event = message({"msgtype": "m.text", "body": "hi"}, sender=sender, room_id=ROOMS["fbm"])
    out = sends(translate(event, FBM, NETWORKS, PORTAL, KEY))
    assert set(out) == {"wa", "ig"}
    for action in out.values():
        assert re.fullmatch(r"_tb_fbm_[a-z2-7]{16}", action.ghost)
        assert email not in action.ghost
        assert email_to_localpart(email) not in action.ghost


# --- malformed events ------------------------------------------------------------------------

_GOOD = message({"msgtype": "m.text", "body": "hi"})


@pytest.mark.parametrize(
    "event",
    [
        {},
        {k: v for k, v in _GOOD.items() if k != "sender"},
        {k: v for k, v in _GOOD.items() if k != "room_id"},
        {k: v for k, v in _GOOD.items() if k != "event_id"},
        {k: v for k, v in _GOOD.items() if k != "type"},
        {k: v for k, v in _GOOD.items() if k != "content"},
        {**_GOOD, "sender": 42},
        {**_GOOD, "room_id": None},
        {**_GOOD, "content": None},
        {**_GOOD, "content": ["msgtype", "m.text"]},
        {**_GOOD, "content": "hello"},
        message({"msgtype": "m.text"}),
        message({"msgtype": "m.text", "body": 42}),
        message({"msgtype": "m.text", "body": None}),
        message({"msgtype": "m.text", "body": ["hi"]}),
        message({"body": "hi"}),
        message({"msgtype": None, "body": "hi"}),
        message({"msgtype": ["m.text"], "body": "hi"}),
        message({"msgtype": {"m.text": True}, "body": "hi"}),
        message({"msgtype": "m.text", "body": "hi"}, sender="alice"),
        message({"msgtype": "m.text", "body": "hi"}, sender="@Alice:wa.localhost"),
        message({"msgtype": "m.text", "body": "hi"}, state_key=""),
        member(ALICE_WA, "join") | {"state_key": 42},
        member(ALICE_WA, "join") | {"content": {"membership": ["join"]}},
        member(ALICE_WA, "join") | {"content": {}},
    ],
)
def test_malformed_events_yield_nothing_and_never_raise(event: dict[str, Any]) -> None:
    result = from_wa(event)
    assert result.actions == []
    assert result.profiles == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@given(st.dictionaries(st.text(), json_values, max_size=8))
def test_arbitrary_json_objects_never_raise(event: dict[str, Any]) -> None:
    assert isinstance(from_wa(event), Translation)


def _plausible(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | json_values


plausible_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["m.room.message", "m.room.member", "m.reaction"]),
        "sender": st.sampled_from([ALICE_WA, "@tribridge:wa.localhost", "@bob:example.org"]),
        "room_id": st.just(ROOMS["wa"]),
        "event_id": st.just("$ev1"),
        "content": st.fixed_dictionaries(
            {},
            optional={
                "msgtype": _plausible(["m.text", "m.notice", "m.image"]),
                "body": _plausible(["hi"]),
                "format": _plausible(["org.matrix.custom.html"]),
                "formatted_body": _plausible(["<b>hi</b>"]),
                "membership": _plausible(["join", "invite", "leave"]),
                "displayname": _plausible(["Alice"]),
            },
        ),
    },
    optional={"state_key": _plausible([ALICE_WA, "@tribridge:wa.localhost", ""])},
)


@given(plausible_events, st.sampled_from([PORTAL, None]))
@example(message({"msgtype": [], "body": "hi"}), PORTAL)
def test_events_close_to_valid_never_raise(event: dict[str, Any], portal: Portal | None) -> None:
    result = from_wa(event, portal)
    for action in result.actions:
        assert action.network in NETWORKS


# --- membership ------------------------------------------------------------------------------


def test_a_join_reports_the_profile_and_the_ghosts_join_the_other_rooms() -> None:
    result = from_wa(member(ALICE_WA, "join", displayname="Alice",
                            avatar_url="mxc://wa.localhost/face"))
    assert result.profiles == [ProfileSeen("wa", ALICE_WA, "Alice", "mxc://wa.localhost/face")]
    joins = [a for a in result.actions if isinstance(a, Member)]
    assert len(joins) == len(result.actions) == 2
    assert {(a.network, a.room_id, a.op, a.actor) for a in joins} == {
        ("ig", ROOMS["ig"], "join", None), ("fbm", ROOMS["fbm"], "join", None)}
    assert all(a.ghost == f"_tb_wa_{ALICE_PSEUDO}" and a.person == ALICE_WA for a in joins)


@pytest.mark.parametrize("content", [{}, {"displayname": None}, {"displayname": 42}])
def test_a_join_without_a_usable_display_name_reports_none(content: dict[str, Any]) -> None:
    result = from_wa(member(ALICE_WA, "join", **content))
    assert result.profiles == [ProfileSeen("wa", ALICE_WA, None)]


def test_a_join_outside_a_portal_only_reports_the_profile() -> None:
    result = from_wa(member(ALICE_WA, "join", displayname="Alice"), portal=None)
    assert result.profiles == [ProfileSeen("wa", ALICE_WA, "Alice")]
    assert result.actions == []


def _changed(membership: str, before: str, sender: str, **content: Any) -> dict[str, Any]:
    event = member(ALICE_WA, membership, **content)
    event["sender"] = sender
    event["unsigned"] = {"prev_content": {"membership": before, "displayname": "Alice"}}
    return event


BOB_WA = "@+15559876543:wa.localhost"


@pytest.mark.parametrize(
    ("membership", "before", "op"),
    [("invite", "leave", "invite"), ("leave", "join", "kick"), ("ban", "join", "ban"),
     ("leave", "ban", "unban"), ("leave", "invite", "kick")],
)
def test_what_someone_does_to_a_person_their_ghost_does_to_the_ghost(
    membership: str, before: str, op: str
) -> None:
    result = from_wa(_changed(membership, before, BOB_WA, reason="spam"))
    assert len(result.actions) == 2
    bob = pseudonym(KEY, "wa", Identity("phone", "+15559876543"))
    for action in result.actions:
        assert isinstance(action, Member)
        assert (action.op, action.reason, action.person) == (op, "spam", ALICE_WA)
        assert action.ghost == f"_tb_wa_{ALICE_PSEUDO}"
        assert action.actor == f"_tb_wa_{bob}"


def test_a_kick_by_the_bridge_itself_does_not_echo() -> None:
    for sender in ("@tribridge:wa.localhost", f"@_tb_ig_{ALICE_PSEUDO}:wa.localhost"):
        assert from_wa(_changed("leave", "join", sender)).actions == []


def test_a_name_or_avatar_change_updates_the_ghosts_and_a_same_profile_join_does_not() -> None:
    renamed = from_wa(_changed("join", "join", ALICE_WA, displayname="Alicia"))
    # Her own name or this room's nickname: the delivery asks her homeserver which, so the
    # name is not stored as hers here.
    assert renamed.profiles == []
    assert {(a.network, a.ghost, a.name) for a in renamed.actions
            if isinstance(a, GhostSync)} == {
        ("ig", f"_tb_wa_{ALICE_PSEUDO}", "Alicia"), ("fbm", f"_tb_wa_{ALICE_PSEUDO}", "Alicia")}
    assert len(renamed.actions) == 2
    same = from_wa(_changed("join", "join", ALICE_WA, displayname="Alice"))
    assert same.actions == [] and same.profiles == []
    # A picture for this room alone (or her own new one): her profile is read, not this event
    # stored, which would make a room nickname in it her name everywhere.
    pictured = from_wa(_changed("join", "join", ALICE_WA, displayname="Boss",
                                avatar_url="mxc://wa.localhost/room-face"))
    assert pictured.profiles == [] and len(pictured.actions) == 2
    # Nor is a nickname in a room that is not a portal (a management room) her name.
    outside = from_wa(_changed("join", "join", ALICE_WA, displayname="Boss"), portal=None)
    assert outside.profiles == [] and outside.actions == []


@pytest.mark.parametrize(
    ("etype", "content", "crossing"),
    [("m.room.name", {"name": "Team"}, {"name": "Team"}),
     ("m.room.topic", {"topic": "plans", "x": 1}, {"topic": "plans"}),
     ("m.room.avatar", {"url": "mxc://wa.localhost/pic"}, {"url": "mxc://wa.localhost/pic"}),
     ("m.room.name", {}, {})],
)
def test_room_name_topic_and_avatar_cross_unless_the_portal_says_no(
    etype: str, content: dict[str, Any], crossing: dict[str, Any]
) -> None:
    event = message(content, state_key="") | {"type": etype}
    result = from_wa(event)
    assert {(a.network, a.room_id) for a in result.actions} == set(PORTAL.others("wa"))
    for action in result.actions:
        assert isinstance(action, RoomState)
        assert (action.event_type, dict(action.content)) == (etype, crossing)
    quiet = Portal(PORTAL.portal_id, ROOMS, mirror_state=False)
    assert from_wa(event, portal=quiet).actions == []
    default_off = translate(event, WA, NETWORKS, PORTAL, KEY, rules=Rules(mirror_state=False))
    assert default_off.actions == []
    opted_in = Portal(PORTAL.portal_id, ROOMS, mirror_state=True)
    assert len(translate(event, WA, NETWORKS, opted_in, KEY,
                         rules=Rules(mirror_state=False)).actions) == 2


@pytest.mark.parametrize(
    ("etype", "content"),
    [("m.room.avatar", {"url": "https://example.com/x.png"}), ("m.room.name", {"name": 42}),
     ("m.room.topic", {"topic": ["x"]})],
)
def test_unusable_room_state_changes_nothing_elsewhere(etype: str, content: dict[str, Any]
                                                       ) -> None:
    assert from_wa(message(content, state_key="") | {"type": etype}).actions == []


def test_names_topics_and_reasons_name_ghosts_not_phone_numbers() -> None:
    bob = "@+15559876543:wa.localhost"
    topic = from_wa(message({"topic": f"ask {bob}"}, state_key="") | {"type": "m.room.topic"})
    kick = from_wa(_changed("leave", "join", BOB_WA, reason=f"reported by {bob}"))
    redaction = from_wa(message({"redacts": "$x", "reason": f"{bob} asked"})
                        | {"type": "m.room.redaction"})
    crossing = [a.content["topic"] for a in topic.actions if isinstance(a, RoomState)]
    crossing += [a.reason for a in kick.actions if isinstance(a, Member) and a.reason]
    crossing += [a.reason for a in redaction.actions if isinstance(a, Redact) and a.reason]
    assert len(crossing) == 6
    for text in crossing:
        assert "15559876543" not in text and re.search(r"@_tb_wa_[a-z2-7]{16}:", text), text


def test_knocks_report_no_profile() -> None:
    result = from_wa(member(ALICE_WA, "knock", displayname="Alice"))
    assert result.profiles == []
    assert result.actions == []


@pytest.mark.parametrize("membership", ["leave", "ban"])
def test_a_person_leaving_a_portal_room_makes_their_ghosts_leave_the_others(
    membership: str,
) -> None:
    result = from_wa(member(ALICE_WA, membership, displayname="Alice"))
    assert result.profiles == []
    leaves = {(a.network, a.room_id, a.ghost) for a in result.actions}
    assert {(n, r) for n, r, _ in leaves} == {(n, r) for n, r in PORTAL.others("wa")}
    assert all(ghost.startswith("_tb_wa_") for _, _, ghost in leaves)


def test_ghost_and_bot_joins_are_not_profiles() -> None:
    for user in (f"@_tb_ig_{ALICE_PSEUDO}:wa.localhost", "@tribridge:wa.localhost"):
        result = from_wa(member(user, "join", displayname="whatever"))
        assert result.profiles == []
        assert result.actions == []


def test_a_bot_invite_into_a_portal_room_makes_it_join() -> None:
    event = member("@tribridge:wa.localhost", "invite") | {"sender": ALICE_WA}
    result = from_wa(event)
    assert len(result.actions) == 1
    join = result.actions[0]
    assert isinstance(join, JoinRoom)
    assert (join.network, join.room_id) == ("wa", ROOMS["wa"])
    assert from_wa(event).actions == [join]  # the same txn id every time


def test_a_bot_invite_outside_a_portal_asks_the_bot_to_answer_it() -> None:
    event = member("@tribridge:wa.localhost", "invite", is_direct=True) | {
        "sender": ALICE_WA, "origin_server_ts": 1_700_000_000_123}
    (task,) = from_wa(event, portal=None).actions
    assert isinstance(task, BotTask)
    # When it was invited: a management room's commands are read from then (bridge/bot/events.py)
    assert (task.network, task.task, dict(task.data)) == (
        "wa", "invited", {"inviter": ALICE_WA, "is_direct": True,
                          "invited_at": 1_700_000_000_123}
    )
    del event["origin_server_ts"]
    assert from_wa(event, portal=None).actions[0].data["invited_at"] is None  # type: ignore[union-attr]


def test_an_invite_for_another_networks_bot_does_nothing() -> None:
    event = member("@tribridge:ig.localhost", "invite") | {"sender": ALICE_WA}
    assert from_wa(event).actions == []


# --- payload round trip ----------------------------------------------------------------------


def _round_trip(action: SendMessage | JoinRoom) -> SendMessage | JoinRoom:
    payload = json.loads(json.dumps(action.to_payload()))
    return from_payload(action.kind, action.network, action.room_id, action.txn_id, payload)


def test_a_send_survives_the_outbox_round_trip() -> None:
    content = {"msgtype": "m.text", "body": "hé", "format": "org.matrix.custom.html"}
    content["formatted_body"] = "<i>hé</i>"
    actions = from_wa(message(content)).actions
    assert len(actions) == 2
    for action in actions:
        assert _round_trip(action) == action


def test_a_join_survives_the_outbox_round_trip() -> None:
    event = member("@tribridge:wa.localhost", "invite") | {"sender": ALICE_WA}
    (join,) = from_wa(event).actions
    assert _round_trip(join) == join


def test_an_unknown_action_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown action kind"):
        from_payload("teleport", "wa", ROOMS["wa"], "tb1x", {})


# -- commands, edits and replies -------------------------------------------------------------


def test_a_prefixed_message_in_a_portal_is_a_command_and_is_not_relayed() -> None:
    (task,) = from_wa(message({"msgtype": "m.text", "body": "!tb invite ig:bob"})).actions
    assert isinstance(task, BotTask)
    assert (task.task, dict(task.data)) == (
        "command", {"sender": ALICE_WA, "text": "invite ig:bob"}
    )


def test_an_edit_of_a_command_is_neither_run_nor_relayed() -> None:
    edit = {
        "msgtype": "m.text",
        "body": "* !tb invite wa:+1 555 123 4568",
        "m.new_content": {"msgtype": "m.text", "body": "!tb invite wa:+1 555 123 4568"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$cmd"},
    }
    result = from_wa(message(edit))
    assert result.actions == []
    assert result.skipped == "an edit of a command"


def test_a_reply_crosses_without_the_quote_of_what_it_answers() -> None:
    reply = {
        "msgtype": "m.text",
        "body": "> <@+15551234567:wa.localhost> !tb invite wa:+15551234568\n\nok, done",
        "format": "org.matrix.custom.html",
        "formatted_body": "<mx-reply><blockquote>!tb invite wa:+15551234568</blockquote>"
                          "</mx-reply>ok, done",
        "m.relates_to": {"m.in_reply_to": {"event_id": "$cmd"}},
    }
    sends = [a for a in from_wa(message(reply)).actions if isinstance(a, SendMessage)]
    assert len(sends) == 2
    for send in sends:
        assert send.content["body"] == "ok, done"
        assert send.content["formatted_body"] == "ok, done"
        assert "5551234568" not in str(send.content)


def test_an_edit_crosses_with_its_new_content_rebuilt_and_rewritten() -> None:
    edit = {
        "msgtype": "m.text", "body": "* hi @+15559876543:wa.localhost",
        "m.new_content": {"msgtype": "m.text", "body": "hi @+15559876543:wa.localhost",
                          "extra": True},
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig", "junk": 1},
    }
    for action in sends(from_wa(message(edit))).values():
        assert action.content["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$orig"}
        new = action.content["m.new_content"]
        assert set(new) == {"msgtype", "body"}
        assert "+15559876543" not in new["body"] and "_tb_wa_" in new["body"]


def test_a_reaction_crosses_as_a_reaction_by_the_ghost() -> None:
    event = message({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$m", "key": "+1"}})
    event["type"] = "m.reaction"
    out = from_wa(event).actions
    assert {a.network for a in out} == {"ig", "fbm"}
    for action in out:
        assert isinstance(action, SendMessage) and action.event_type == "m.reaction"
        assert action.content == {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": "$m", "key": "+1"}
        }


def test_a_redaction_redacts_the_copies_and_cancels_what_is_still_queued() -> None:
    event = {"type": "m.room.redaction", "sender": ALICE_WA, "room_id": ROOMS["wa"],
             "event_id": "$red", "redacts": "$m", "content": {"reason": "oops"}}
    result = from_wa(event)
    assert result.cancel == [("wa", "$m")]
    assert {(a.network, a.redacts, a.reason) for a in result.actions
            if isinstance(a, Redact)} == {("ig", "$m", "oops"), ("fbm", "$m", "oops")}
    v11 = {**event, "content": {"redacts": "$m"}}
    del v11["redacts"]
    assert len(from_wa(v11).actions) == 2


def test_mentions_name_ghosts_on_the_target_and_drop_what_means_nothing_there() -> None:
    content = {
        "msgtype": "m.text", "body": "hi all",
        "m.mentions": {"room": True, "user_ids": [
            "@+15559876543:wa.localhost",  # a WhatsApp person: their ghost on each target
            "@_tb_ig_aaaaaaaaaaaaaaaa:wa.localhost",  # a ghost here: nothing on the others
            "@someone:elsewhere.example", 42,
        ]},
    }
    out = sends(from_wa(message(content)))
    for target, action in out.items():
        mentions = action.content["m.mentions"]
        assert mentions["room"] is True
        user = mentions["user_ids"][0]
        assert re.fullmatch(rf"@_tb_wa_[a-z2-7]{{16}}:{target}\.localhost", user), user
    # The ghost of an Instagram person is that person's ghost on Messenger; on Instagram it
    # would be the person themselves, whom this store does not know: left out.
    assert out["fbm"].content["m.mentions"]["user_ids"][1:] == [
        "@_tb_ig_aaaaaaaaaaaaaaaa:fbm.localhost"]
    assert len(out["ig"].content["m.mentions"]["user_ids"]) == 1


def test_a_ghost_mentioned_becomes_the_real_person_on_their_own_network() -> None:
    bob_ig = "@bob:ig.localhost"
    ghost = "_tb_ig_aaaaaaaaaaaaaaaa"
    content = {
        "msgtype": "m.text", "body": f"hi @{ghost}:wa.localhost",
        "format": "org.matrix.custom.html",
        "formatted_body": f'<a href="https://matrix.to/#/%40{ghost}%3Awa.localhost">Bob</a>',
        "m.mentions": {"user_ids": [f"@{ghost}:wa.localhost"]},
    }
    owners = {ghost: ("ig", bob_ig)}
    result = translate(message(content), WA, NETWORKS, PORTAL, KEY, owner=owners.get)
    out = sends(result)
    assert out["ig"].content["body"] == f"hi {bob_ig}"
    assert out["ig"].content["m.mentions"] == {"user_ids": [bob_ig]}
    assert "%40bob%3Aig.localhost" in out["ig"].content["formatted_body"]
    assert out["fbm"].content["m.mentions"] == {"user_ids": [f"@{ghost}:fbm.localhost"]}


def test_an_over_long_command_goes_to_the_bot_not_to_the_other_networks() -> None:
    body = "!tb invite wa:+15551234567 " + "x" * 5000
    (task,) = from_wa(message({"msgtype": "m.text", "body": body})).actions
    assert isinstance(task, BotTask) and task.task == "command"
    assert len(task.data["text"]) == 2001  # cut: the bot answers that it is too long


def test_encryption_turned_on_in_a_portal_room_asks_the_bot_to_check_the_portal() -> None:
    event = {"type": "m.room.encryption", "state_key": "", "event_id": "$enc",
             "room_id": ROOMS["wa"], "sender": ALICE_WA,
             "content": {"algorithm": "org.tribridge.e2ee.v1"}}
    (task,) = from_wa(event).actions
    assert isinstance(task, BotTask) and (task.network, task.room_id, task.task) == (
        "wa", ROOMS["wa"], "encryption")
    # Whoever turned it on, even someone the bridge relays nothing of.
    nobody = Rules(permissions=Permissions.with_defaults(
        {ALICE_WA: Level.NONE}, ["wa.localhost", "ig.localhost", "fbm.localhost"]))
    (task,) = translate(event, WA, NETWORKS, PORTAL, KEY, rules=nobody).actions
    assert isinstance(task, BotTask) and task.task == "encryption"


def test_another_networks_ghost_in_a_federated_room_is_not_relayed_again() -> None:
    # Invariant 3: ig's ghost of Alice, seen in a wa push (the room federated), is ours.
    ghost_on_ig = "@_tb_wa_aaaaaaaaaaaaaaaa:ig.localhost"
    result = from_wa(message({"msgtype": "m.text", "body": "hi"}) | {"sender": ghost_on_ig})
    assert result.actions == [] and result.skipped == "sent by the bridge itself"


def test_a_topic_or_reason_naming_someone_masks_their_number_too() -> None:
    from bridge.core.translate import plain_text_for, room_text

    text = "Ask @+15559876543:wa.localhost (+1 555 987 6543) about it"
    for out in (room_text(text, "topic", WA, NETWORKS["ig"], KEY),
                room_text(text, "name", WA, NETWORKS["ig"], KEY),
                plain_text_for(text, WA, NETWORKS["fbm"], KEY)):
        assert "555" not in out and "987" not in out, out
        assert out.startswith("Ask @_tb_wa_") and "(WhatsApp user " in out, out


def test_a_moderator_removing_a_ghost_is_remembered_and_its_own_leave_is_not() -> None:
    ghost = "@_tb_ig_aaaaaaaaaaaaaaaa:wa.localhost"
    for membership in ("leave", "ban"):
        kicked = member(ghost, membership) | {"sender": ALICE_WA}
        (task,) = from_wa(kicked).actions
        assert isinstance(task, BotTask) and (task.task, dict(task.data)) == (
            "ghost_removed", {"ghost": "_tb_ig_aaaaaaaaaaaaaaaa", "by": ALICE_WA})
    (task,) = from_wa(member(ghost, "invite") | {"sender": ALICE_WA}).actions
    assert isinstance(task, BotTask) and task.task == "ghost_invited"
    assert from_wa(member(ghost, "leave")).actions == []  # the bridge's own doing
    assert from_wa(member(ghost, "leave") | {"sender": ALICE_WA}, portal=None).actions == []


@pytest.mark.parametrize("newcomer", ["@+15559876543:wa.localhost", "@bob:ig.localhost"])
@pytest.mark.parametrize("membership", ["join", "invite"])
def test_anyone_else_in_a_management_room_ends_it(newcomer: str, membership: str) -> None:
    # From this server or, by federation, from another bridged network's: either would read
    # every answer about the room's owner.
    from bridge.core.actions import BotTask
    from bridge.core.translate import RoomInfo

    event = member(newcomer, membership, room="!mine:wa.localhost")
    event["sender"] = ALICE_WA
    result = translate(event, WA, NETWORKS, None, KEY, room=RoomInfo(ALICE_WA))
    (task,) = result.actions
    assert isinstance(task, BotTask) and task.task == "management_shared"
