"""Safety numbers: 60 digits that two people compare to check each other's identity keys."""

from __future__ import annotations

import nacl.encoding
import nacl.hash

ITERATIONS = 5200


def _half(identity_key: bytes) -> str:
    digest = identity_key
    for _ in range(ITERATIONS):
        digest = nacl.hash.blake2b(digest + identity_key, digest_size=64,
                                   person=b"tb-e2ee-safety", encoder=nacl.encoding.RawEncoder)
    groups = [int.from_bytes(digest[i:i + 5], "big") % 100_000 for i in range(0, 30, 5)]
    return "".join(f"{g:05d}" for g in groups)


def safety_number(mine: bytes, theirs: bytes) -> str:
    """The same 60 digits on both sides and on every network: the two halves in order."""
    return "".join(sorted((_half(mine), _half(theirs))))


def grouped(number: str) -> str:
    """Twelve groups of five, as people read it aloud."""
    return " ".join(number[i:i + 5] for i in range(0, len(number), 5))
