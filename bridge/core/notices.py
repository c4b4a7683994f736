"""What the bot tells people when something they sent could not be delivered.

So that nobody believes a message arrived that did not (../shared/design.md, data flow step 5),
a permanent refusal by a target homeserver becomes one notice in the sender's room, as a reply to
the message that was refused.
"""

from __future__ import annotations

from bridge.core.actions import SendNotice, txn_id
from bridge.core.model import EventRef

# errcode -> what it means for the sender, in their words.
_REASONS = {
    "M_FORBIDDEN": "the room refused it",
    "M_TOO_LARGE": "it is too large",
    "M_NOT_FOUND": "the room no longer exists there",
    "M_UNKNOWN_TOKEN": "the bridge is not allowed on that server",
    "M_BAD_JSON": "that server could not read it",
    "M_NOT_JSON": "that server could not read it",
    "TB_MEDIA_GONE": "the file could not be fetched from your server",
    "TB_GHOST_REMOVED": "the room's moderators there removed you from it",
    "TB_INTERNAL": "an error of the bridge's own (logged for its admin)",
}


def failure_reason(errcode: str | None) -> str:
    if errcode in _REASONS:
        return _REASONS[errcode]
    return f"that server refused it ({errcode})" if errcode else "that server refused it"


def _reply(source: EventRef, body: str, target_network: str, what: str) -> SendNotice:
    """A notice in the sender's room, as a reply to `source`; its transaction id names
    (source, target, what), so that it is sent once however often its cause comes again."""
    return SendNotice(
        network=source.network,
        room_id=source.room_id,
        about=source.event_id,
        content={"msgtype": "m.notice", "body": body,
                 "m.relates_to": {"m.in_reply_to": {"event_id": source.event_id}}},
        txn_id=txn_id(source.network, source.event_id, target_network, what),
    )


def failure_notice(source: EventRef, target_network: str, target_label: str,
                   errcode: str | None) -> SendNotice:
    """The notice for the sender of `source` that it did not reach `target_label`."""
    body = f"Not delivered to {target_label}: {failure_reason(errcode)}."
    return _reply(source, body, target_network, "failure-notice")


def untranslated_notice(source: EventRef) -> SendNotice:
    """The notice for the sender of `source`, which the bridge itself failed on (a bug of its
    own, logged): it reached none of the other networks."""
    body = ("Not bridged to the other networks: the bridge failed on this message (an error "
            "of its own, logged for its admin).")
    return _reply(source, body, source.network, "untranslated")


def file_not_carried_notice(source: EventRef, target_network: str, target_label: str,
                            why: str) -> SendNotice:
    """The notice for the sender of `source`, whose file could not be carried to
    `target_label` (`why`, in the sender's own words: it stays on their network): the
    message goes there without it."""
    body = f"Your file does not reach {target_label} ({why}); the message goes without it."
    return _reply(source, body, target_network, "file-notice")
