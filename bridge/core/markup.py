"""The bot's plain-text replies as HTML too, for clients that show formatting.

Replies are written for reading as text: `code` between backticks, lists as lines that start with
"- ". Sent as body alone, a client shows the backticks, and people who copy a command from the
help copy them too. The HTML keeps the same words: code as <code>, list lines as a list, other
line breaks as <br>. Everything else is escaped: a reply may quote what someone typed.
"""

from __future__ import annotations

import html
import re

_CODE = re.compile(r"`([^`\n]+)`")


def to_html(text: str) -> str | None:
    """`text` as HTML, or None when it has nothing to format (one plain line)."""
    if "`" not in text and "\n" not in text:
        return None
    out: list[str] = []
    items: list[str] = []
    for line in text.split("\n"):
        if line.startswith("- "):
            items.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
            items = []
        out.append(_inline(line) + "<br>")
    if items:
        out.append("<ul>" + "".join(items) + "</ul>")
    joined = "".join(out)
    return joined.removesuffix("<br>")


def _inline(line: str) -> str:
    parts = _CODE.split(line)  # odd items are the code
    return "".join(
        f"<code>{html.escape(part)}</code>" if i % 2 else html.escape(part)
        for i, part in enumerate(parts)
    )
