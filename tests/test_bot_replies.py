"""What a person hears when a homeserver failed their command (bridge/bot/bot.py)."""

from __future__ import annotations

from bridge.bot.bot import failure_reply
from bridge.core.model import Network
from bridge.matrix.client import MatrixError, Unreachable

NETWORKS = {
    "wa": Network("wa", "WhatsApp", "wa.localhost", "phone", "tribridge", "_tb_", False),
    "fbm": Network("fbm", "Messenger", "fbm.localhost", "email", "tribridge", "_tb_", False),
}


def test_a_silent_homeserver_is_named_and_trying_again_is_advised() -> None:
    silent = Unreachable("fbm.localhost: ConnectError: [Errno 111] Connection refused")
    silent.server_name = "fbm.localhost"
    assert failure_reply("link", silent, NETWORKS) == (
        "link failed: Messenger did not answer. Try again in a moment.")


def test_a_busy_homeserver_is_worth_another_try() -> None:
    busy = MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests", 2000, "wa.localhost")
    assert failure_reply("dm", busy, NETWORKS) == (
        "dm failed: WhatsApp could not do it just now (M_LIMIT_EXCEEDED). Try again in a moment.")


def test_a_refusal_says_so_without_the_ids_it_names() -> None:
    refused = MatrixError(403, "M_FORBIDDEN", "User @+15551234567:wa.localhost not in room",
                          None, "wa.localhost")
    reply = failure_reply("invite", refused, NETWORKS)
    assert reply == (
        "invite failed: WhatsApp refused it (M_FORBIDDEN: User @<phone>:wa.localhost not in "
        "room). Trying again will not help; ask the bridge's admin if it should be allowed.")


def test_an_error_of_an_unknown_server_is_a_homeservers() -> None:
    refused = MatrixError(404, "M_NOT_FOUND", "", None, None)
    assert failure_reply("link", refused, NETWORKS).startswith(
        "link failed: a homeserver refused it (M_NOT_FOUND). Trying again will not help")


def test_a_homeserver_that_refuses_the_bridges_token_is_the_admins_to_mend() -> None:
    refused = MatrixError(401, "M_UNKNOWN_TOKEN", "Unrecognised access token", None,
                          "fbm.localhost")
    assert failure_reply("link", refused, NETWORKS) == (
        "link failed: Messenger does not accept the bridge's token, a mistake in the bridge's "
        "setup that its admin must mend (their log says which).")
