"""Ghost naming and what of a person may cross networks (bridge/core/ghosts.py, privacy.py)."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.ghosts import (
    derive_key,
    forget_remembered,
    ghost_localpart,
    is_bridge_user,
    parse_ghost_localpart,
    pseudonym,
)
from bridge.core.ids import Identity, email_to_localpart, is_valid_localpart
from bridge.core.model import Network
from bridge.core.privacy import ghost_display_name

WA = Network("wa", "WhatsApp", "wa.localhost", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.localhost", "handle", "tribridge", "_tb_", True)
FBM = Network("fbm", "Messenger", "fbm.localhost", "email", "tribridge", "_tb_", False)
NETWORK_IDS = {"wa", "ig", "fbm"}

KEY = derive_key(b"s" * 32)
OTHER_KEY = derive_key(b"t" * 32)

PHONE = Identity("phone", "+15551234567")
EMAIL = Identity("email", "alice@example.com")
PSEUDO = pseudonym(KEY, "wa", PHONE)
EMAIL_PSEUDO = pseudonym(KEY, "fbm", EMAIL)

BASE32 = re.compile(r"[a-z2-7]{16}")

phones = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)
emails = st.emails().map(str.lower)


def digit_string(text: str) -> str:
    """Every decimal digit of `text`, in any script, as ASCII digits."""
    normal = unicodedata.normalize("NFKC", text)
    return "".join(str(unicodedata.decimal(ch)) for ch in normal if ch.isdecimal())


def in_digits(ascii_digits: str, zero: int) -> str:
    """`ascii_digits` written in the script whose digit zero is code point `zero`."""
    return "".join(chr(zero + int(d)) for d in ascii_digits)


# --- pseudonyms ------------------------------------------------------------------------------


def test_derive_key_is_stable_and_depends_on_the_secret() -> None:
    assert derive_key(b"s" * 32) == KEY
    assert len(KEY) == 32
    assert KEY != OTHER_KEY


def test_pseudonym_is_stable() -> None:
    assert pseudonym(KEY, "wa", Identity("phone", "+15551234567")) == PSEUDO


def test_pseudonym_is_16_chars_of_lower_case_base32() -> None:
    assert BASE32.fullmatch(PSEUDO)
    assert BASE32.fullmatch(EMAIL_PSEUDO)


def test_pseudonym_depends_on_key_network_and_identity() -> None:
    assert pseudonym(OTHER_KEY, "wa", PHONE) != PSEUDO
    assert pseudonym(KEY, "ig", PHONE) != PSEUDO
    assert pseudonym(KEY, "wa", Identity("phone", "+15551234568")) != PSEUDO
    assert pseudonym(KEY, "wa", Identity("other", "+15551234567")) != PSEUDO


@given(phones)
def test_pseudonym_and_ghost_never_contain_the_phone_digits(phone: str) -> None:
    pseudo = pseudonym(KEY, "wa", Identity("phone", phone))
    assert BASE32.fullmatch(pseudo)
    for target in (IG, FBM):
        ghost = ghost_localpart(target, "wa", pseudo)
        assert phone.lstrip("+") not in ghost
        assert phone.lstrip("+")[-7:] not in ghost


@given(emails)
def test_pseudonym_and_ghost_never_contain_the_email(email: str) -> None:
    pseudo = pseudonym(KEY, "fbm", Identity("email", email))
    assert BASE32.fullmatch(pseudo)
    for target in (WA, IG):
        ghost = ghost_localpart(target, "fbm", pseudo)
        assert email not in ghost
        assert email_to_localpart(email) not in ghost


# --- ghost localparts ------------------------------------------------------------------------


def test_ghost_localpart_is_prefix_source_and_pseudonym() -> None:
    ghost = ghost_localpart(IG, "wa", PSEUDO)
    assert ghost == f"_tb_wa_{PSEUDO}"
    assert is_valid_localpart(ghost)


@given(st.sampled_from([WA, IG, FBM]), st.sampled_from(["wa", "ig", "fbm"]), phones)
def test_our_ghost_localparts_parse_back_to_their_source(
    target: Network, source: str, phone: str
) -> None:
    ghost = ghost_localpart(target, source, pseudonym(KEY, source, Identity("phone", phone)))
    assert is_valid_localpart(ghost)
    expected = None if source == target.id else source
    assert parse_ghost_localpart(ghost, target, NETWORK_IDS) == expected


@pytest.mark.parametrize(
    "localpart",
    [
        f"_xx_wa_{PSEUDO}",  # wrong prefix
        f"wa_{PSEUDO}",  # no prefix
        f"_tb_tg_{PSEUDO}",  # unknown network
        f"_tb_ig_{PSEUDO}",  # the target's own network: nobody bridges a network to itself
        f"_tb_wa{PSEUDO}",  # no separator
        f"_tb_wa_{PSEUDO[:15]}",  # too short
        f"_tb_wa_{PSEUDO}a",  # too long
        f"_tb_wa_{PSEUDO.upper()}",  # not lower case
        "_tb_wa_0000000000000000",  # 0 and 1 are not base32
        "_tb_wa_8888888888888888",
        "_tb_wa_",
        "tribridge",
        "alice",
    ],
)
def test_parse_ghost_localpart_rejects_what_is_not_ours(localpart: str) -> None:
    assert parse_ghost_localpart(localpart, IG, NETWORK_IDS) is None


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        ("@tribridge:wa.localhost", True),
        (f"@_tb_ig_{PSEUDO}:wa.localhost", True),
        ("@_tb_anything:wa.localhost", True),
        ("@tribridge:ig.localhost", False),  # the bot of another network
        (f"@_tb_ig_{PSEUDO}:ig.localhost", False),  # a ghost, but on another server
        ("@tribridge:wa.localhost:8448", False),
        ("@tribridge2:wa.localhost", False),
        ("@alice:wa.localhost", False),
        ("@+15551234567:wa.localhost", False),
        ("tribridge", False),  # not a user id at all
        ("", False),
    ],
)
def test_is_bridge_user(user_id: str, expected: bool) -> None:
    assert is_bridge_user(user_id, WA) is expected


# --- display names ---------------------------------------------------------------------------

WA_FALLBACK = f"WhatsApp user {PSEUDO[:4]}"
FBM_FALLBACK = f"Messenger user {EMAIL_PSEUDO[:4]}"


def wa_name(display_name: object, *, exposed: bool = False) -> str:
    return ghost_display_name(WA, PHONE, display_name, PSEUDO, exposed=exposed)


def fbm_name(display_name: object, *, exposed: bool = False) -> str:
    return ghost_display_name(FBM, EMAIL, display_name, EMAIL_PSEUDO, exposed=exposed)


def test_a_normal_name_is_shown_with_the_network_label() -> None:
    assert wa_name("Alice") == "Alice (WhatsApp)"
    assert fbm_name("Alice") == "Alice (Messenger)"


def test_someone_elses_number_or_a_short_number_is_not_a_leak() -> None:
    assert wa_name("Alice 2024") == "Alice 2024 (WhatsApp)"
    assert wa_name("Reception +44 7700 900000") == "Reception +44 7700 900000 (WhatsApp)"


@pytest.mark.parametrize(
    "name",
    [
        "+15551234567",  # Synapse's default display name: the localpart
        "15551234567",
        "+1 (555) 123-4567",
        "555 123 4567",
        "555-1234567",
        "Alice +1 555 123 4567",
        "call 123 4567",  # the subscriber number alone
        "\uff0b" + in_digits("15551234567", 0xFF10),  # full-width digits
        "+" + in_digits("15551234567", 0x0660),  # Arabic-Indic digits
        "+" + in_digits("15551234567", 0x06F0),  # Extended Arabic-Indic (Persian) digits
    ],
)
def test_a_name_showing_the_phone_number_falls_back(name: str) -> None:
    assert wa_name(name) == WA_FALLBACK


@pytest.mark.parametrize("name", [None, "", "   ", "\x00\u200b", 42, ["Alice"]])
def test_no_usable_name_falls_back(name: object) -> None:
    assert wa_name(name) == WA_FALLBACK
    assert fbm_name(name) == FBM_FALLBACK


@pytest.mark.parametrize(
    "name",
    [
        "alice@example.com",
        "ALICE@Example.COM",
        "Alice <alice@example.com>",
        "alice=40example.com",  # Synapse's default display name: the escaped localpart
        "ALICE=40EXAMPLE.COM",
    ],
)
def test_a_name_showing_the_email_falls_back(name: str) -> None:
    assert fbm_name(name) == FBM_FALLBACK


def test_when_exposed_the_real_name_and_identity_may_show() -> None:
    assert wa_name("+15551234567", exposed=True) == "+15551234567 (WhatsApp)"
    # Exposing is the owner's choice to show the number: it appears beside the name.
    assert wa_name("Alice", exposed=True) == "Alice (WhatsApp, +15551234567)"
    assert fbm_name("alice@example.com", exposed=True) == "alice@example.com (Messenger)"


def test_when_exposed_the_fallback_is_the_identity() -> None:
    assert wa_name(None, exposed=True) == "+15551234567 (WhatsApp)"
    assert fbm_name("", exposed=True) == "alice@example.com (Messenger)"


def test_control_and_format_characters_are_stripped() -> None:
    result = wa_name("\u202eAl\x00i\u200bce\x07\x1b")
    assert result == "Alice (WhatsApp)"


def test_spaces_are_folded() -> None:
    assert wa_name("  Alice \u00a0  Smith  ") == "Alice Smith (WhatsApp)"


@given(st.text(max_size=2000))
def test_any_name_gives_a_bounded_clean_display_name(name: str) -> None:
    for exposed in (False, True):
        result = wa_name(name, exposed=exposed)
        assert 0 < len(result) <= 256
        assert (
            result.endswith(" (WhatsApp)")
            or result.endswith(" (WhatsApp, +15551234567)")
            or result == WA_FALLBACK
        )
        assert not any(unicodedata.category(ch).startswith("C") for ch in result)


def test_a_long_name_is_bounded() -> None:
    result = wa_name("A" * 10_000)
    assert len(result) <= 256
    assert result.startswith("A" * 100)
    assert result.endswith(" (WhatsApp)")


# --- property: a phone number or email never crosses unless exposed --------------------------

_separators = st.lists(st.sampled_from(["", "", " ", "-", ".", "(", ")", "\u00a0"]), min_size=16)


@st.composite
def names_around_a_phone(draw: st.DrawFn, phone: str) -> str:
    """Random text, or random text around the phone number written with separators."""
    if draw(st.booleans()):
        return draw(st.text(max_size=60))
    seps = draw(_separators)
    digits = phone.lstrip("+")
    written = "".join(d + seps[i] for i, d in enumerate(digits))
    plus = draw(st.sampled_from(["+", "", "00"]))
    return draw(st.text(max_size=30)) + plus + written + draw(st.text(max_size=30))


@given(st.data(), phones)
def test_a_phone_number_never_crosses_unless_exposed(data: st.DataObject, phone: str) -> None:
    identity = Identity("phone", phone)
    pseudo = pseudonym(KEY, "wa", identity)
    name = data.draw(names_around_a_phone(phone))
    result = ghost_display_name(WA, identity, name, pseudo, exposed=False)
    digits = phone.lstrip("+")
    assert digits not in digit_string(result)
    if digits in digit_string(name):
        assert result == f"WhatsApp user {pseudo[:4]}"


@st.composite
def names_around_an_email(draw: st.DrawFn, email: str) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=60))
    shown = draw(st.sampled_from([email, email_to_localpart(email)]))
    upper = draw(st.lists(st.booleans(), min_size=len(shown), max_size=len(shown)))
    shown = "".join(c.upper() if u else c for c, u in zip(shown, upper, strict=True))
    return draw(st.text(max_size=30)) + shown + draw(st.text(max_size=30))


@given(st.data(), emails)
def test_an_email_never_crosses_unless_exposed(data: st.DataObject, email: str) -> None:
    identity = Identity("email", email)
    pseudo = pseudonym(KEY, "fbm", identity)
    name = data.draw(names_around_an_email(email))
    result = ghost_display_name(FBM, identity, name, pseudo, exposed=False)
    assert email not in result.lower()
    assert email_to_localpart(email) not in result.lower()
    if email in name.lower():
        assert result == f"Messenger user {pseudo[:4]}"


def test_forgetting_empties_every_memo_that_holds_an_identity() -> None:
    # "forget me" calls this: no phone number of theirs stays in the process's memory.
    from bridge.core import ids

    phone_user = "@+15550001111:wa.example"
    ids.parse_user_id(phone_user)
    pseudonym(derive_key(b"s" * 32), "wa", Identity("phone", "+15550001111"))
    assert ids._parse_user_id.cache_info().currsize > 0
    assert pseudonym.cache_info().currsize > 0
    forget_remembered()
    assert ids._parse_user_id.cache_info().currsize == 0
    assert pseudonym.cache_info().currsize == 0
