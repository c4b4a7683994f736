"""What of a person may cross to another network.

The rule (../shared/design.md, invariant 5): a phone number or email never crosses unless its
owner opted in. Display names are where it leaks in practice: a Synapse user who never set one is
shown by their localpart, which on a phone network is the phone number itself. So a display name
that reveals the person's own phone number or email is replaced by a neutral fallback.
"""

from __future__ import annotations

import re
import unicodedata

from bridge.core.ids import Identity, email_to_localpart
from bridge.core.model import Network

MAX_NAME = 200  # leaves room for " (<label>)" within Matrix's 256-character display names
_SPACE = re.compile(r"\s+")


def clean_display_name(name: object) -> str | None:
    """A display name fit to show: control and format characters out, spaces folded, bounded."""
    if not isinstance(name, str):
        return None
    kept = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    folded = _SPACE.sub(" ", kept).strip()
    return folded[:MAX_NAME].rstrip() or None


def decimal_digits(text: str) -> str:
    """Every decimal digit in `text`, in any script (Arabic-Indic, full-width, ...), as 0-9."""
    out = []
    for ch in unicodedata.normalize("NFKC", text):
        value = unicodedata.decimal(ch, None)
        if value is not None:
            out.append(str(value))
    return "".join(out)


def reveals_identity(name: str, identity: Identity) -> bool:
    """Whether `name` shows `identity`'s phone number or email, however it is written."""
    lowered = name.lower()
    if identity.kind == "phone":
        phone_digits = identity.value.lstrip("+")
        name_digits = decimal_digits(name)
        # Seven trailing digits identify a subscriber in every numbering plan.
        return len(name_digits) >= 7 and (
            name_digits in phone_digits or phone_digits[-7:] in name_digits
        )
    if identity.kind == "email":
        return identity.value in lowered or email_to_localpart(identity.value) in lowered
    if identity.kind == "other":
        return identity.value.lower() in lowered
    return False


def ghost_display_name(
    source: Network, identity: Identity, display_name: object, pseudo: str, *, exposed: bool
) -> str:
    """The display name of the ghost standing for a person of `source` on another network.

    `exposed` is whether the person's native identity may be shown (the network's
    ``expose_identity``, or the person's own ``privacy show-identity on``). An exposed phone
    number or email is shown beside the name, since showing it is what its owner asked for;
    an exposed handle only stands in for a missing name.
    """
    name = clean_display_name(display_name)
    if name is not None and not exposed and reveals_identity(name, identity):
        name = None
    if exposed and identity.kind in ("phone", "email"):
        shown = identity.value
        if name is None or reveals_identity(name, identity):
            return f"{shown[:MAX_NAME]} ({source.label})"
        return f"{name} ({source.label}, {shown})"
    if name is None and exposed:
        name = identity.value[:MAX_NAME]
    if name is None:
        return f"{source.label} user {pseudo[:4]}"  # already names the network
    return f"{name} ({source.label})"
