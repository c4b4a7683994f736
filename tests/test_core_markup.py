"""The bot's replies as HTML (bridge/core/markup.py)."""

from __future__ import annotations

from bridge.core.markup import to_html


def test_one_plain_line_needs_no_html() -> None:
    assert to_html("You can now be reached with dm and invite.") is None


def test_code_lists_and_line_breaks_are_formatted() -> None:
    text = ("tribridge commands. In this room, start commands with !tb.\n"
            "- `!tb help [<command>]`: list the commands\n"
            "- `!tb ping`: round trip\n"
            "Say `!tb help <command>` for more about one.")
    assert to_html(text) == (
        "tribridge commands. In this room, start commands with !tb.<br>"
        "<ul><li><code>!tb help [&lt;command&gt;]</code>: list the commands</li>"
        "<li><code>!tb ping</code>: round trip</li></ul>"
        "Say <code>!tb help &lt;command&gt;</code> for more about one.")


def test_what_someone_typed_is_escaped_not_obeyed() -> None:
    html = to_html("Unknown command '<b>x</b>'. Say `help` for the list.")
    assert html == ("Unknown command &#x27;&lt;b&gt;x&lt;/b&gt;&#x27;. Say <code>help</code> "
                    "for the list.")
