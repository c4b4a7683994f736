"""Identities as people type them, and the user ids they belong to (bridge/core/lookup.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.ids import Identity, native_identity
from bridge.core.lookup import BadIdentity, normalise, shown, user_id_for
from bridge.core.model import Network

WA = Network("wa", "WhatsApp", "wa.localhost", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.localhost", "handle", "tribridge", "_tb_", True)
FBM = Network("fbm", "Messenger", "fbm.localhost", "email", "tribridge", "_tb_", False)


def bad(network: Network, text: str, country: str = "") -> str:
    with pytest.raises(BadIdentity) as info:
        normalise(network, text, country)
    return str(info.value)


# --- phone ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        "+15551234567",
        "+1 555 123 4567",
        "+1 (555) 123-4567",
        "+1.555.123.4567",
        "+1\u00a0555\u00a0123\u00a04567",  # no-break spaces, as some phones copy numbers
        "  +15551234567  ",
        "0015551234567",
        "00 1 555 123 4567",
        "\u202d+1 (555) 123\u20114567\u202c",  # as a contacts app copies it: marks and all
        "+1 555\u2013123\u20134567",  # en dashes
        "\u200e+1 555 123 4567",
    ],
)
def test_phone_spellings_normalise_to_e164(typed: str) -> None:
    assert normalise(WA, typed) == Identity("phone", "+15551234567")


@pytest.mark.parametrize(
    ("typed", "country", "e164"),
    [
        ("020 7946 0958", "44", "+442079460958"),
        ("20 7946 0958", "44", "+442079460958"),
        ("(555) 123-4567", "1", "+15551234567"),
        ("+33 1 23 45 67 89", "44", "+33123456789"),  # an international number keeps its own
        ("0033 1 23 45 67 89", "44", "+33123456789"),
    ],
)
def test_national_numbers_take_the_default_country_code(
    typed: str, country: str, e164: str
) -> None:
    assert normalise(WA, typed, country) == Identity("phone", e164)


def test_a_national_number_without_a_default_country_code_asks_for_the_international_form(
) -> None:
    assert bad(WA, "020 7946 0958") == (
        "'020 7946 0958': give the number in international form, e.g. +15551234567"
    )


@pytest.mark.parametrize(
    "typed",
    ["+1 555 CALL NOW", "+0123456789", "+12345", "+1234567890123456", "+1-555-123-4567 x12"],
)
def test_what_is_not_a_phone_number_is_named(typed: str) -> None:
    assert bad(WA, typed) == f"{typed!r} is not a phone number such as +15551234567"


def test_an_empty_identity_says_what_to_give() -> None:
    assert bad(WA, "  ") == "give the phone of someone on WhatsApp"
    assert bad(FBM, "") == "give the email of someone on Messenger"
    assert bad(IG, "") == "give the handle of someone on Instagram"


def test_a_uk_number_with_the_trunk_zero_in_brackets_is_not_misread() -> None:
    # "+44 (0)20 7946 0958" is how UK (and German, Swiss...) numbers are often printed: the (0)
    # is dialled only from inside the country, and dropped: +4402079460958 would be a
    # different, valid-looking number.
    assert normalise(WA, "+44 (0)20 7946 0958") == Identity("phone", "+442079460958")


# --- email and handle -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "email"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Alice@Example.COM", "alice@example.com"),
        ("  bob.smith+tag@mail.example.org ", "bob.smith+tag@mail.example.org"),
    ],
)
def test_emails_are_trimmed_and_lower_cased(typed: str, email: str) -> None:
    assert normalise(FBM, typed) == Identity("email", email)


@pytest.mark.parametrize("typed", ["alice", "alice@localhost", "a@b@c.com", "al ice@example.com"])
def test_what_is_not_an_email_is_named(typed: str) -> None:
    assert bad(FBM, typed) == f"{typed!r} is not an email address such as alice@example.com"


@pytest.mark.parametrize(("typed", "handle"), [("@alice", "alice"), ("alice", "alice"),
                                               ("a.b_c-d", "a.b_c-d"), ("@Alice", "alice"),
                                               ("BOB", "bob")])
def test_handles_lose_a_leading_at_and_capitals(typed: str, handle: str) -> None:
    assert normalise(IG, typed) == Identity("handle", handle)


@pytest.mark.parametrize("typed", ["al ice", "alice!", "@", "ali\u00e7e"])
def test_what_is_not_a_handle_is_named(typed: str) -> None:
    assert bad(IG, typed) == (
        f"{typed!r} is not a handle on Instagram: use a-z 0-9 . _ = - /"
    )


# --- whole Matrix user ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "typed", "identity"),
    [
        (WA, "@+15551234567:wa.localhost", Identity("phone", "+15551234567")),
        (IG, "@alice:ig.localhost", Identity("handle", "alice")),
        (FBM, "@alice=40example.com:fbm.localhost", Identity("email", "alice@example.com")),
        (FBM, "@_alice=40example.com:fbm.localhost", Identity("email", "alice@example.com")),
    ],
)
def test_a_user_id_of_the_network_is_accepted(
    network: Network, typed: str, identity: Identity
) -> None:
    assert normalise(network, typed) == identity


@pytest.mark.parametrize(
    ("network", "typed"),
    [
        (WA, "@+15551234567:matrix.org"),
        (WA, "@+15551234567:ig.localhost"),
        (IG, "@alice:wa.localhost"),
        (FBM, "@alice=40example.com:wa.localhost"),
    ],
)
def test_a_user_id_of_another_server_is_refused(network: Network, typed: str) -> None:
    assert bad(network, typed) == (
        f"{typed} is not on {network.label} ({network.server_name})"
    )


def test_a_malformed_user_id_is_named() -> None:
    assert bad(IG, "@Alice:ig.localhost").startswith("'@Alice:ig.localhost' is not a user id: ")
    assert bad(FBM, "@alice=4:fbm.localhost").startswith(
        "'alice=4' is not an escaped email address: "
    )
    assert bad(FBM, "@alice:fbm.localhost") == "'alice' is not an email address"
    assert bad(WA, "@alice:wa.localhost") == (
        "'alice': give the number in international form, e.g. +15551234567"
    )


# --- user_id_for ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "identity", "user_id"),
    [
        (WA, Identity("phone", "+15551234567"), "@+15551234567:wa.localhost"),
        (IG, Identity("handle", "alice"), "@alice:ig.localhost"),
        (FBM, Identity("email", "alice@example.com"), "@alice=40example.com:fbm.localhost"),
        (FBM, Identity("email", "a_b+c@x.org"), "@a__b=2bc=40x.org:fbm.localhost"),
    ],
)
def test_user_id_for(network: Network, identity: Identity, user_id: str) -> None:
    assert user_id_for(network, identity) == user_id
    assert native_identity(user_id, network.identity, network.server_name) == identity
    assert shown(identity) == identity.value


LOCAL = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-"
emails = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.text(LOCAL, min_size=1, max_size=24),
    # A label starts and ends with a letter or digit (RFC 1035).
    st.lists(st.from_regex(r"[a-z0-9](?:[a-z0-9\-]{0,10}[a-z0-9])?", fullmatch=True),
             min_size=1, max_size=3),
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6),
)
phones = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)
handles = st.from_regex(r"[a-z0-9._=\-/]{1,30}", fullmatch=True)


@given(emails)
def test_emails_round_trip_through_user_ids(email: str) -> None:
    identity = normalise(FBM, email)
    assert identity == Identity("email", email.lower())
    user_id = user_id_for(FBM, identity)
    assert native_identity(user_id, "email", FBM.server_name) == identity
    assert normalise(FBM, user_id) == identity  # the user id typed back in names the same person
    assert normalise(FBM, email.upper()) == identity


@given(phones, st.sampled_from([" ", "-", ".", ""]))
def test_phone_numbers_round_trip_through_user_ids(number: str, sep: str) -> None:
    spaced = number[:3] + sep + number[3:6] + sep + number[6:]
    identity = normalise(WA, spaced)
    assert identity == Identity("phone", number)
    user_id = user_id_for(WA, identity)
    assert native_identity(user_id, "phone", WA.server_name) == identity
    assert normalise(WA, user_id) == identity
    assert normalise(WA, "00" + number[1:]) == identity


@given(handles)
def test_handles_round_trip_through_user_ids(handle: str) -> None:
    identity = normalise(IG, "@" + handle)
    assert identity == Identity("handle", handle)
    user_id = user_id_for(IG, identity)
    assert native_identity(user_id, "handle", IG.server_name) == identity
    assert normalise(IG, user_id) == identity


@given(st.text(), st.sampled_from([WA, IG, FBM]), st.sampled_from(["", "1", "44"]))
def test_normalise_gives_an_identity_of_the_network_kind_or_bad_identity(
    text: str, network: Network, country: str
) -> None:
    try:
        identity = normalise(network, text, country)
    except BadIdentity as exc:
        assert str(exc)
    else:
        assert identity.kind == network.identity


@pytest.mark.parametrize(
    "typed", ['"Dave@Example.com"', "<dave@example.com>", "dave@example.com.", "`dave@example.com`"]
)
def test_an_email_pasted_with_quotes_brackets_or_a_full_stop_is_read(typed: str) -> None:
    assert normalise(FBM, typed) == Identity("email", "dave@example.com")


@pytest.mark.parametrize("typed", ["dave@example", "dave@.com", "dave@example.c", "da ve@x.org",
                                   "dave@exa mple.com", "dave,x@example.com"])
def test_what_is_not_an_email_address_is_refused(typed: str) -> None:
    assert "is not an email address such as alice@example.com" in bad(FBM, typed)


def test_a_handle_too_long_for_a_user_id_is_refused_at_once() -> None:
    assert bad(IG, "x" * 300) == "that handle is too long for Instagram (at most 200 characters)"
    assert bad(FBM, "x" * 300 + "@example.com") == "that address is too long for Messenger"


@pytest.mark.parametrize("typed", ["o'brien@example.com", "alice@example.xn--p1ai",
                                   "'o'brien@example.com'"])
def test_addresses_with_an_apostrophe_or_an_idn_top_level_domain_are_read(typed: str) -> None:
    assert normalise(FBM, typed).value == typed.strip("'").lower()
