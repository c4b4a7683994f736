"""Why a ciphertext, a key share or a device announcement was refused."""

from __future__ import annotations


class Rejected(ValueError):
    """Refused input; `reason` is one stable word for tests and logs, the message says more."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
