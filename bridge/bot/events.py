"""The bot's answers to events addressed to it: invites, removals, DM answers."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from bridge.bot.portals import room_left
from bridge.core.actions import BotTask
from bridge.core.ghosts import is_bridge_user
from bridge.matrix.client import HomeserverError, MatrixError

if TYPE_CHECKING:
    from bridge.bot.bot import Bot

log = logging.getLogger(__name__)


async def invited(bot: Bot, task: BotTask) -> None:
    """Someone invited the bot into a room that is not a portal: a DM makes their management
    room; another room is one they may want to bridge."""
    inviter = str(task.data.get("inviter", ""))
    hs = bot.homeservers[task.network]
    direct, new = bool(task.data.get("is_direct")), False
    if direct:
        # Theirs before the bot joins: a command pushed right after the join is then one. And
        # read from the invitation on: a client that creates a direct chat with its first
        # message sends that message before the bot can join, and it is never pushed.
        stamped = task.data.get("invited_at")
        with bot.store.transaction():
            new = bot.store.add_management_room(
                task.network, task.room_id, inviter,
                since=stamped / 1000 if type(stamped) is int else None)
    try:
        await hs.join(task.room_id)
    except MatrixError as exc:
        # Dropped if made by this run, or if the bot cannot be in the room (a retried task's
        # join may fail for a while, as in a proxy's 502, in a room that works).
        if direct and (new or exc.status in (403, 404)):
            with bot.store.transaction():
                bot.store.drop_management_room(task.network, task.room_id)
        log.info("could not join a room on %s it was invited to: %s", task.network, exc)
        return
    if direct and await hs.state(task.room_id, "m.room.encryption"):
        await management_encrypted(bot, task)
        return
    if direct and await _others_in(bot, task.network, task.room_id, inviter):
        # A "direct" chat of several (some clients mark a group DM so): the answers about
        # the inviter would be read by the others. An ordinary room, then.
        with bot.store.transaction():
            bot.store.drop_management_room(task.network, task.room_id)
        direct = False
    if direct:
        # What was said before the join; asked for before the greeting goes out, so that a
        # command pushed meanwhile reads it first and keeps its place after the earlier one.
        bot.read_room(task.network, task.room_id)
        await bot.notice(task.network, task.room_id, bot.greeting(task.network, inviter),
                         about=task.about)
        return
    prefix = bot.config().bridge.command_prefix
    text = (
        f"Hello! Say `{prefix} link` to bridge this room with the other networks, or "
        f"`{prefix} help` for everything the bot does."
    )
    if task.data.get("is_direct"):
        text += (" Other people are in this chat, so it is not a management room: for "
                 "commands about yourself, start a direct chat with the bot alone.")
    if await hs.state(task.room_id, "m.room.encryption"):
        # The bot holds no key here, by design: encrypted commands are unreadable to it.
        text += (
            " This room is end-to-end encrypted and the bot cannot read it: type commands "
            f"unencrypted, or use your management room (a direct chat with "
            f"{bot.networks[task.network].bot_user_id})."
        )
    await bot.notice(task.network, task.room_id, text, about=task.about)


ENCRYPTED_MANAGEMENT = (
    "This chat is end-to-end encrypted, so the bot cannot read what you write here, by design: "
    "it holds no keys. For commands, make a room without encryption (in Element: a new room "
    "with \"Enable end-to-end encryption\" turned off), invite {bot} to it, and mark it as a "
    "direct chat, or invite the bot to it and use it as your management room. The bot leaves "
    "this one."
)


async def management_encrypted(bot: Bot, task: BotTask) -> None:
    """A management room that is (or just became) encrypted: the bot could read no command
    there, and would answer none. It says so, and leaves, rather than stay silent."""
    # Told and left first, forgotten last: a notice that fails is tried again (the task is
    # retried, and finds the room still a management room).
    bot_id = bot.networks[task.network].bot_user_id
    await bot.notice(task.network, task.room_id, ENCRYPTED_MANAGEMENT.format(bot=bot_id),
                     about=task.about)
    with contextlib.suppress(HomeserverError):
        await bot.homeservers[task.network].leave(task.room_id)
    with bot.store.transaction():
        bot.store.drop_management_room(task.network, task.room_id)
    log.info("left an encrypted management room on %s", task.network)


async def _others_in(bot: Bot, network: str, room_id: str, owner: str) -> list[str]:
    """Members (joined or invited) of the room besides its owner and the bridge's own users."""
    me = bot.networks[network]
    others = []
    for event in await bot.homeservers[network].state_events(room_id):
        user, content = event.get("state_key"), event.get("content")
        if (event.get("type") == "m.room.member" and isinstance(user, str) and user != owner
                and isinstance(content, dict) and content.get("membership") in ("join", "invite")
                and user != me.bot_user_id and not is_bridge_user(user, me)):
            others.append(user)
    return others


async def management_shared(bot: Bot, task: BotTask) -> None:
    """Someone else joined (or was invited to) a management room: it is one no longer, since
    every answer about its owner would be read there. The bot says so, and leaves."""
    owner = bot.store.management_owner(task.network, task.room_id)
    if owner is None:
        return
    # Told and left first, forgotten last (see management_encrypted). Meanwhile a command
    # there is refused by the ordering of the room's queue: this task goes first.
    await bot.notice(
        task.network, task.room_id,
        "Someone else is in this chat now, so it is no longer your management room: the "
        "bot's answers about you would be read here. For commands, start a new direct chat "
        f"with {bot.networks[task.network].bot_user_id}. The bot leaves this one.",
        about=task.about)
    with contextlib.suppress(HomeserverError):
        await bot.homeservers[task.network].leave(task.room_id)
    with bot.store.transaction():
        bot.store.drop_management_room(task.network, task.room_id)


async def encryption_in_management(bot: Bot, task: BotTask) -> None:
    """Encryption turned on in a management room (read from the room: a task run late acts
    on what is true now)."""
    if await bot.homeservers[task.network].state(task.room_id, "m.room.encryption"):
        await management_encrypted(bot, task)


async def removed(bot: Bot, task: BotTask) -> None:
    """The bot was kicked or banned, or the owner left their management room."""
    portal = bot.store.portal_for_room(task.network, task.room_id)
    origin = bot.store.portal_info(portal.portal_id) if portal else None
    with bot.store.transaction():
        bot.store.drop_management_room(task.network, task.room_id)
        bot.store.remove_portal_room(task.network, task.room_id)
    if portal is None:
        # The owner left their management room: the bot leaves too (if it was kicked, there
        # is nothing to leave and the homeserver says so).
        with contextlib.suppress(HomeserverError):
            await bot.homeservers[task.network].leave(task.room_id)
        return
    in_config = origin is not None and origin[0] == "config"
    log.warning("the bot was removed from portal room %s on %s; the room left its portal%s",
                task.room_id, task.network,
                " (it is in the config: remove it there)" if in_config else "")
    await room_left(bot, portal, task.network, ": the bot was removed from it", task.about)


def ghost_moderated(bot: Bot, task: BotTask) -> None:
    """A moderator removed one of the bridge's ghosts from a portal room (or invited it back):
    the store remembers, so that the ghost is not brought back by the bridge meanwhile."""
    ghost = str(task.data.get("ghost", ""))
    removed = task.task == "ghost_removed"
    with bot.store.transaction():
        bot.store.set_ghost_removed(task.network, ghost, task.room_id, removed)
    if removed:
        log.info("a moderator removed a ghost from a portal room on %s", task.network)
