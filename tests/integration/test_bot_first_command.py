"""A direct chat with the bot, created with its first message: the command in it is answered."""

from __future__ import annotations

import signal
import sqlite3
from typing import Any
from urllib.parse import quote

import pytest

from bridge.localnet.people import wait_until

from .conftest import Cast, Daemon
from .test_reconcile import start_window_swept

pytestmark = pytest.mark.synapse

BOT = "@tribridge:wa.localhost"


def _answers(events: list[dict[str, Any]]) -> list[str]:
    """The bot's answers to `whoami` among `events` (its greeting aside)."""
    return [str(e["content"]["body"]) for e in events
            if e.get("sender") == BOT and e.get("type") == "m.room.message"
            and str(e.get("content", {}).get("body", "")).startswith("You are ")]


async def test_a_command_sent_before_the_bot_joined_its_management_room_is_answered(
    cast: Cast, daemon: Daemon
) -> None:
    # Another network's portal, so that the start's window of distrust ends with a sweep that
    # shows: from then on pushes are trusted, and no push reads its room first.
    dave, erin = await cast.person("wa", "Dave"), await cast.person("ig", "Erin")
    await daemon.start([{"wa": await cast.room("wa", dave), "ig": await cast.room("ig", erin)}])
    alice = await cast.person("wa", "Alice")
    await start_window_swept(daemon)
    # As a client that creates a direct chat with its first message does: the room, the
    # bot's invitation and the command at once. The bridge is frozen meanwhile, so the bot
    # joins only after the command, which Synapse never pushes (the bot was not in the room).
    daemon.signal(signal.SIGSTOP)
    try:
        room = await alice.create_room(None, invite=[BOT], is_direct=True)
        await alice.send_text(room, "whoami")
    finally:
        daemon.signal(signal.SIGCONT)
    events = await alice.wait_for(room, lambda evs: bool(_answers(evs)), within=20,
                                  what="the answer to whoami")
    (answer,) = _answers(events)
    assert "on WhatsApp" in answer, answer
    assert f"{room} on wa: 1 event(s) taken in from the timeline" in daemon.log()
    # The room is theirs for what follows, pushed as usual; the first command was run once.
    assert (await alice.command(room, "whoami")).startswith("You are ")
    assert len(_answers(await alice.messages(room, 50))) == 2


async def test_an_invitation_withdrawn_before_the_bot_answered_leaves_no_management_room(
    cast: Cast, daemon: Daemon
) -> None:
    await daemon.start([])
    alice = await cast.person("wa", "Alice")
    assert await daemon.stop() == 0
    room = await alice.create_room(None, invite=[BOT], is_direct=True)
    await alice.call("POST", f"/rooms/{quote(room)}/kick", {"user_id": BOT})
    await daemon.start()  # the invitation is pushed now; the bot can no longer join

    def rows() -> list[Any]:
        with sqlite3.connect(f"file:{daemon.database}?mode=ro", uri=True) as db:
            return db.execute("SELECT room_id FROM management_rooms").fetchall()

    async def answered() -> bool:
        return "could not join a room on wa it was invited to" in daemon.log()

    async def none_left() -> bool:
        return rows() == []

    await wait_until(answered, within=20, what="the bot's failed join")
    # Made the person's management room before the join, so that a command pushed right
    # after it is one, and dropped again when the join failed.
    await wait_until(none_left, within=10, what="no management room left")
    # Its next direct chat works as any.
    other = await alice.create_room(None, invite=[BOT], is_direct=True)
    await alice.wait_for(other, lambda evs: any(
        e.get("sender") == BOT and e.get("type") == "m.room.message" for e in evs),
        what="the greeting")
    assert [r[0] for r in rows()] == [other]
