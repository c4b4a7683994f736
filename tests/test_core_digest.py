"""The digests behind transaction ids and dedupe are pynacl's BLAKE2b, byte for byte."""

from __future__ import annotations

import nacl.encoding
import nacl.hash
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.digest import blake2b_hex


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64),
       st.binary(max_size=16))
def test_the_same_digest_as_pynacls_public_api(data: bytes, size: int, person: bytes) -> None:
    expected = nacl.hash.blake2b(data, digest_size=size, person=person,
                                 encoder=nacl.encoding.HexEncoder).decode()
    assert blake2b_hex(data, size, person) == expected


@pytest.mark.parametrize(("size", "person"), [(0, b""), (65, b""), (16, b"x" * 17)])
def test_arguments_libsodium_would_misread_are_refused(size: int, person: bytes) -> None:
    with pytest.raises(ValueError, match="BLAKE2b takes"):
        blake2b_hex(b"data", size, person)
