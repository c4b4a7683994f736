"""Unkeyed BLAKE2b digests for ids: transaction ids of actions, dedupe digests of pushes.

Straight through pynacl's own libsodium binding, the one `nacl.hash.blake2b` ends in. The public
wrappers check every argument on every call (ten checks, 14 µs here) around a 1-µs hash, and a
relayed message asks for three digests; the arguments here are fixed and checked once, at import.
Keyed digests (pseudonyms, codes) keep the public API: they are few, and remembered.
"""

from __future__ import annotations

import nacl.bindings  # noqa: F401  (importing it runs sodium_init(), as libsodium asks)
from nacl._sodium import ffi, lib  # pynacl's binding of libsodium

_PERSON_BYTES = int(lib.crypto_generichash_blake2b_personalbytes())
_MAX_DIGEST = int(lib.crypto_generichash_blake2b_bytes_max())


def blake2b_hex(data: bytes, size: int, person: bytes = b"") -> str:
    """The hex BLAKE2b digest of `data`, `size` bytes long, with the personalisation `person`
    (zero-padded to 16 bytes, as pynacl pads it), no key and no salt."""
    if not 1 <= size <= _MAX_DIGEST or len(person) > _PERSON_BYTES:
        raise ValueError(f"BLAKE2b takes a size of 1-{_MAX_DIGEST} bytes and a person of at "
                         f"most {_PERSON_BYTES}")
    out = ffi.new("unsigned char[]", size)
    # libsodium reads 16 bytes of salt and of person: NULL means zeros, and the person is
    # padded here. Neither is kept by libsodium past the call.
    padded = person.ljust(_PERSON_BYTES, b"\0") if person else ffi.NULL
    if lib.crypto_generichash_blake2b_salt_personal(
            out, size, data, len(data), ffi.NULL, 0, ffi.NULL, padded) != 0:
        raise RuntimeError("libsodium refused a BLAKE2b digest")
    return bytes(ffi.buffer(out, size)).hex()
