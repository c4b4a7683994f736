"""JSON from a homeserver, as text SQLite and every other network can take.

JSON may escape half of a UTF-16 surrogate pair on its own (`"\\ud800"`), and Python's parser
then gives a str that cannot be encoded as UTF-8: SQLite refuses it, and so would the JSON sent
on to another homeserver. A conforming homeserver never sends one (Synapse cannot store it), but
one that did would make a push fail on every retry. Such halves become U+FFFD, as a decoder
does with broken UTF-8.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A JSON escape of a surrogate: a lone one, or half of a pair that json.loads joins again.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads(raw: bytes) -> Any:
    """`json.loads` of UTF-8 (strictly: the spec's encoding; json.loads of bytes would let
    surrogates encoded as bytes through, and guess UTF-16), with lone surrogates from escapes
    replaced; raises ValueError (UnicodeDecodeError, JSONDecodeError) or RecursionError."""
    doc = json.loads(raw.decode("utf-8"))
    if b"\\u" in raw and _SURROGATE_ESCAPE.search(raw):
        # Rare (escaped emoji, or a broken sender): a second round trip is affordable here.
        text = json.dumps(doc, ensure_ascii=False)
        doc = json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    return doc
