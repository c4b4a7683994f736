"""The transaction parser and translation of untrusted input: parse or InputError, never a crash.

bench/fuzz.py drives the same pipeline with a million inputs; this is its fast property form.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.ghosts import derive_key
from bridge.core.model import Network, Portal
from bridge.core.translate import translate
from bridge.matrix.appservice import InputError, parse_transaction

KEY = derive_key(b"f" * 32)
NETWORKS = {
    "wa": Network("wa", "WhatsApp", "wa.x", "phone", "tribridge", "_tb_", False),
    "ig": Network("ig", "Instagram", "ig.x", "handle", "tribridge", "_tb_", True),
}
PORTAL = Portal("p", {"wa": "!a:wa.x", "ig": "!b:ig.x"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
events = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["m.room.message", "m.room.member"]) | json_values,
        "sender": st.sampled_from(["@+15551234567:wa.x", "@tribridge:wa.x", "@_tb_ig_x:wa.x"])
        | json_values,
        "room_id": st.just("!a:wa.x") | json_values,
        "event_id": st.text(),
        "state_key": st.sampled_from(["@tribridge:wa.x", "@a:wa.x"]) | json_values,
        "content": st.fixed_dictionaries(
            {}, optional={"msgtype": st.sampled_from(["m.text", "m.emote"]) | json_values,
                          "body": json_values, "format": json_values,
                          "formatted_body": json_values, "membership": json_values,
                          "displayname": json_values}
        ) | json_values,
    },
)


def pipeline(body: bytes) -> int:
    """What the daemon does with a body before SQLite: parse, then translate each event."""
    try:
        parsed = parse_transaction(body)
    except InputError:
        return -1
    actions = 0
    for event in parsed:
        if isinstance(event, dict):
            portal = PORTAL if event.get("room_id") == "!a:wa.x" else None
            actions += len(translate(event, NETWORKS["wa"], NETWORKS, portal, KEY).actions)
    return actions


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_input_error(body: bytes) -> None:
    pipeline(body)


@settings(max_examples=500)
@given(st.lists(events | json_values, max_size=5), json_values)
def test_structured_transactions_never_crash(evs: list[Any], extra: Any) -> None:
    pipeline(json.dumps({"events": evs, "extra": extra}).encode())


def test_errors_name_what_is_wrong() -> None:
    for body, errcode in ((b"{", "M_NOT_JSON"), (b"[]", "M_BAD_JSON"),
                          (b'{"events": 1}', "M_BAD_JSON"), (b"[" * 100000, "M_BAD_JSON"),
                          (b"\xff\xfe\x00", "M_NOT_JSON")):
        try:
            parse_transaction(body)
        except InputError as exc:
            assert exc.errcode == errcode, body[:10]
        else:
            raise AssertionError(f"{body[:10]!r} parsed")


def test_a_text_message_in_a_portal_gives_one_action() -> None:
    event = {"type": "m.room.message", "sender": "@+15551234567:wa.x", "room_id": "!a:wa.x",
             "event_id": "$1", "content": {"msgtype": "m.text", "body": "hi"}}
    assert pipeline(json.dumps({"events": [event]}).encode()) == 1
