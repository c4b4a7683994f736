"""Hypothesis strategies for the HTTP grammar, shared by the tests of both strict readers
(tests/test_http_wire.py: responses; tests/test_http_reader.py: requests)."""

from __future__ import annotations

import string

from hypothesis import strategies as st

TOKEN = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
VISIBLE = "".join(map(chr, range(0x21, 0x7F)))


def field_names(excluded: set[str]) -> st.SearchStrategy[str]:
    """Field names of token characters, none of them (in any case) in `excluded`."""
    return st.text(TOKEN, min_size=1, max_size=16).filter(lambda n: n.lower() not in excluded)


_words = st.text(VISIBLE, min_size=1, max_size=10)
# Visible ASCII, with spaces and tabs inside (never at either end: every reader strips them).
field_values = st.one_of(
    st.just(""),
    st.builds(lambda first, rest: first + "".join(gap + word for gap, word in rest),
              _words, st.lists(st.tuples(st.sampled_from([" ", "\t", "  ", " \t "]), _words),
                               max_size=3)),
)
