"""User ids in relayed text never carry a phone number or email to another network."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.ghosts import derive_key
from bridge.core.mentions import rewrite_user_ids
from bridge.core.model import Network

KEY = derive_key(b"k" * 32)
WA = Network("wa", "WhatsApp", "wa.localhost", "phone", "tribridge", "_tb_", False)
IG = Network("ig", "Instagram", "ig.localhost", "handle", "tribridge", "_tb_", True)
FBM = Network("fbm", "Messenger", "fbm.localhost", "email", "tribridge", "_tb_", False)


def test_a_phone_user_named_in_text_becomes_their_ghost() -> None:
    out = rewrite_user_ids("> <@+15551234567:wa.localhost> hi", WA, IG, KEY)
    assert "5551234567" not in out
    assert out.startswith("> <@_tb_wa_") and out.endswith(":ig.localhost> hi")


def test_a_matrix_to_pill_with_an_encoded_email_id_is_rewritten() -> None:
    user = "@bob=40example.com:fbm.localhost"
    html = f'<a href="https://matrix.to/#/{quote(user, safe="")}">Bob</a> and {user}'
    out = rewrite_user_ids(html, FBM, WA, KEY)
    assert "example.com" not in out and "bob" not in out.lower().replace("bob</a>", "")
    assert "%40_tb_fbm_" in out and "%3Awa.localhost" in out and "@_tb_fbm_" in out


def test_the_same_person_gets_the_same_ghost_as_their_messages() -> None:
    a = rewrite_user_ids("@+15551234567:wa.localhost", WA, IG, KEY)
    b = rewrite_user_ids("ping @+15551234567:wa.localhost", WA, IG, KEY)
    assert b == "ping " + a


def test_bridge_users_other_servers_and_longer_hosts_are_left_alone() -> None:
    text = (
        "@_tb_ig_abcdefghijklmnop:wa.localhost @tribridge:wa.localhost "
        "@alice:elsewhere.org @+15551234567:wa.localhost.evil.com"
    )
    assert rewrite_user_ids(text, WA, IG, KEY) == text


@given(st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True), st.text(max_size=40))
def test_no_source_phone_id_survives(phone: str, around: str) -> None:
    # Ids as clients write them: delimited (a letter glued to the end names another host).
    text = f"{around} @{phone}:wa.localhost {around}%40{quote(phone, safe='')}%3Awa.localhost\""
    out = rewrite_user_ids(text, WA, FBM, KEY)
    assert f"@{phone}:wa.localhost" not in out
    assert f"%40{quote(phone, safe='')}%3Awa.localhost" not in out
