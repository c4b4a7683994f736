"""Matrix user ids, localpart escaping and native identities (bridge/core/ids.py)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.core.ids import (
    Identity,
    InvalidId,
    UserId,
    email_to_localpart,
    escape_localpart,
    is_valid_localpart,
    native_identity,
    parse_user_id,
    unescape_localpart,
)

WA = "wa.localhost"
IG = "ig.localhost"
FBM = "fbm.localhost"


# --- parse_user_id ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "localpart", "server"),
    [
        ("@alice:example.com", "alice", "example.com"),
        ("@+15551234567:wa.localhost", "+15551234567", "wa.localhost"),
        ("@alice=40example.com:fbm.localhost", "alice=40example.com", "fbm.localhost"),
        ("@a.b_c-d/e=f+g:localhost", "a.b_c-d/e=f+g", "localhost"),
        ("@alice:example.com:8448", "alice", "example.com:8448"),
        ("@alice:127.0.0.1:8008", "alice", "127.0.0.1:8008"),
        ("@alice:[::1]", "alice", "[::1]"),
        ("@alice:[::1]:8448", "alice", "[::1]:8448"),
        ("@" + "a" * 200 + ":" + "b" * 53, "a" * 200, "b" * 53),  # exactly 255 characters
    ],
)
def test_parse_user_id_accepts(text: str, localpart: str, server: str) -> None:
    parsed = parse_user_id(text)
    assert parsed == UserId(localpart, server)
    assert str(parsed) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@",
        "alice:example.com",  # no sigil
        "#alice:example.com",  # a room alias, not a user
        "@alice",  # no server
        "@alice:",  # empty server
        "@:example.com",  # empty localpart
        "@Alice:example.com",  # upper case is not in the localpart grammar
        "@al ice:example.com",
        "@alice@example.com:fbm.localhost",  # an unescaped email
        "@ālice:example.com",
        "@alice:exa mple.com",
        "@alice:example.com:",  # empty port
        "@alice:example.com:123456",  # port too long
        "@alice:example.com:port",
        "@alice:[::1",
        "@alice:example.com\n",
        "@alice:example.com/path",
        "@" + "a" * 200 + ":" + "b" * 54,  # 256 characters
    ],
)
def test_parse_user_id_rejects(text: str) -> None:
    with pytest.raises(InvalidId):
        parse_user_id(text)


def test_parse_user_id_rejects_non_strings() -> None:
    for value in (None, 42, b"@alice:example.com", ["@alice:example.com"]):
        with pytest.raises(InvalidId):
            parse_user_id(value)  # type: ignore[arg-type]


_USER_ID_LIKE = st.builds(
    lambda local, server: f"@{local}:{server}",
    st.text(alphabet=st.sampled_from("abcAZ09._=-/+@: \n[]é"), max_size=20),
    st.text(alphabet=st.sampled_from("abc.-09:[]/ \n"), max_size=20),
)


@given(st.one_of(st.text(), _USER_ID_LIKE))
def test_parse_user_id_on_untrusted_text_returns_or_raises_invalid_id(text: str) -> None:
    try:
        parsed = parse_user_id(text)
    except InvalidId:
        return
    assert isinstance(parsed, UserId)
    assert str(parsed) == text
    assert is_valid_localpart(parsed.localpart)


# --- escaping ------------------------------------------------------------------------------


def test_email_to_localpart() -> None:
    assert email_to_localpart("alice@example.com") == "alice=40example.com"


def test_email_to_localpart_folds_case_and_surrounding_space() -> None:
    assert email_to_localpart("  Alice@Example.COM ") == "alice=40example.com"


def test_escape_localpart_follows_the_spec_mapping() -> None:
    # a-z 0-9 - . stand for themselves, _ doubles, upper case becomes _ + lower case, the rest
    # becomes =XX per UTF-8 byte.
    assert escape_localpart("Alice_B.o-b9") == "_alice___b.o-b9"
    assert escape_localpart("a@b+c é") == "a=40b=2bc=20=c3=a9"


@given(st.text())
def test_escape_round_trips_for_any_text(text: str) -> None:
    assert unescape_localpart(escape_localpart(text)) == text


@given(st.text(min_size=1))
def test_escaped_text_is_a_valid_localpart(text: str) -> None:
    assert is_valid_localpart(escape_localpart(text))


@given(st.text())
@example("ā")  # a character beyond Latin-1 is not a localpart character
@example("é")
@example("=4")
@example("_")
@example("_A")
@example("=ff")
def test_unescape_on_untrusted_text_returns_or_raises_invalid_id(text: str) -> None:
    try:
        result = unescape_localpart(text)
    except InvalidId:
        return
    assert isinstance(result, str)


@pytest.mark.parametrize("bad", ["=", "=4", "=4G", "=AB", "_", "_A", "_1", "a_", "=ff", "=c3"])
def test_unescape_rejects_malformed_escapes(bad: str) -> None:
    with pytest.raises(InvalidId):
        unescape_localpart(bad)


# --- native identities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "kind", "server", "expected"),
    [
        ("@+15551234567:wa.localhost", "phone", WA, Identity("phone", "+15551234567")),
        ("@admin:wa.localhost", "phone", WA, Identity("other", "admin")),
        ("@15551234567:wa.localhost", "phone", WA, Identity("other", "15551234567")),
        ("@+05551234567:wa.localhost", "phone", WA, Identity("other", "+05551234567")),
        ("@+12345:wa.localhost", "phone", WA, Identity("other", "+12345")),
        ("@+1234567890123456:wa.localhost", "phone", WA, Identity("other", "+1234567890123456")),
        (
            "@alice=40example.com:fbm.localhost",
            "email",
            FBM,
            Identity("email", "alice@example.com"),
        ),
        (
            "@_alice=40_example.com:fbm.localhost",
            "email",
            FBM,
            Identity("email", "alice@example.com"),
        ),
        ("@alice:fbm.localhost", "email", FBM, Identity("other", "alice")),
        ("@alice=4:fbm.localhost", "email", FBM, Identity("other", "alice=4")),
        ("@=40example.com:fbm.localhost", "email", FBM, Identity("other", "=40example.com")),
        ("@a=40b=40c:fbm.localhost", "email", FBM, Identity("other", "a=40b=40c")),
        ("@alice:ig.localhost", "handle", IG, Identity("handle", "alice")),
        ("@alice.b_2:ig.localhost", "handle", IG, Identity("handle", "alice.b_2")),
        # Someone from another server is not a native of this network: the full id, kind other.
        ("@+15551234567:example.org", "phone", WA, Identity("other", "@+15551234567:example.org")),
        ("@bob:example.org", "handle", IG, Identity("other", "@bob:example.org")),
        ("@bob=40x.com:wa.localhost", "email", FBM, Identity("other", "@bob=40x.com:wa.localhost")),
    ],
)
def test_native_identity(user_id: str, kind: str, server: str, expected: Identity) -> None:
    assert native_identity(user_id, kind, server) == expected  # type: ignore[arg-type]


def test_native_identity_rejects_an_invalid_user_id() -> None:
    with pytest.raises(InvalidId):
        native_identity("+15551234567", "phone", WA)


def test_only_handles_are_public() -> None:
    assert not Identity("handle", "alice").is_private
    assert Identity("phone", "+15551234567").is_private
    assert Identity("email", "alice@example.com").is_private
    assert Identity("other", "admin").is_private


@given(st.emails())
def test_an_email_users_identity_is_their_lower_case_email(email: str) -> None:
    user_id = f"@{email_to_localpart(email)}:{FBM}"
    if len(user_id) > 255:
        return  # too long to be a Matrix user id at all
    assert native_identity(user_id, "email", FBM) == Identity("email", email.lower())


@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_a_phone_users_identity_is_their_number(phone: str) -> None:
    assert native_identity(f"@{phone}:{WA}", "phone", WA) == Identity("phone", phone)
