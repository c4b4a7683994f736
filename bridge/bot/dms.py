"""Cross-network DMs: the request (``dm``), and the target's answer.

The requester's ghost on the target's network makes a DM room and invites the target: that
invite is the message request, and it shows only the ghost's display name and network label.
Only when the target joins does the target's ghost make the matching room on the requester's
network and invite the requester; the two rooms then form a portal. A decline, an identity
that is not discoverable and one that does not exist all leave the requester with the same
"no answer". The reply to ``dm`` goes out first, and the lookup runs as a task of its own, in a
queue of its own: neither the reply, nor its timing, nor the timing of the requester's next
command depends on whether the person exists or hides.

Each step records what it made before it awaits anything else and reuses it when run again,
so a step cut off by an error or a crash is retried without making a second room.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from bridge.bot.call import Call, Denied
from bridge.bot.info import discoverable
from bridge.core.actions import BotTask, txn_id
from bridge.core.lookup import user_id_for
from bridge.core.translate import ghost_for
from bridge.matrix.client import HomeserverError

if TYPE_CHECKING:
    from bridge.bot.bot import Bot

log = logging.getLogger(__name__)


async def dm(bot: Bot, call: Call) -> str:
    net_id, identity = call.args["target"]
    target = bot.networks[net_id]
    if net_id == call.network:
        raise Denied("dm: they are on this network; start a chat with them yourself.")
    await bot.notice(
        call.network, call.room_id,
        f"Message request sent to {net_id}:{identity.value}. If they accept, you get an invite "
        f"to a chat with them here; if they do not, you hear nothing more "
        f"({call.say('status')} shows 'no answer').",
        about=call.event_id,
    )
    to_user = user_id_for(target, identity)
    asked = [r for r in bot.store.dm_requests_of(call.network, call.sender)
             if (r.from_network, r.from_user, r.to_network, r.to_user)
             == (call.network, call.sender, net_id, to_user)]
    unsent = [r for r in asked if r.state == "pending" and r.room_id is None]
    if unsent:
        # Asked before, and nothing reached them yet (not discoverable then, say): the same
        # request is tried again, no new one made.
        with bot.store.transaction():
            bot.store.enqueue([BotTask(
                net_id, f"dm-request:{unsent[0].id}", "dm_request", {"request": unsent[0].id},
                txn_id(call.network, call.event_id, net_id, "dm_request"), call.event_id,
            )])
        bot.wake(net_id)
        return ""
    if any(r.state in ("pending", "declined") for r in asked):
        # Once is enough: one waiting, or already declined, is not asked again (a new room and
        # an invite each time would let anyone pester a discoverable person). The same words
        # were answered: whether they exist still does not show.
        return ""
    with bot.store.transaction():
        request_id = bot.store.add_dm_request(
            (call.network, call.sender), (net_id, to_user), identity.value
        )
        # Its own queue (a room key of its own): see the module's docstring.
        bot.store.enqueue([BotTask(
            net_id, f"dm-request:{request_id}", "dm_request", {"request": request_id},
            txn_id(call.network, call.event_id, net_id, "dm_request"), call.event_id,
        )])
    bot.wake(net_id)
    return ""


async def send_request(bot: Bot, task: BotTask) -> None:
    """The message request itself, on the target's network, if they can be reached."""
    request = bot.store.dm_request(int(task.data["request"]))
    if request is None or request.state != "pending":
        return
    net_id, to_user = request.to_network, request.to_user
    if net_id not in bot.networks or request.from_network not in bot.networks:
        return
    if not discoverable(bot, net_id, to_user):
        return
    target, here = bot.networks[net_id], bot.networks[request.from_network]
    linked = bot.store.linked_accounts(here.id, request.from_user)
    ghost = ghost_for(request.from_user, here, target, bot.networks, bot.key, linked)
    if ghost is None:
        return
    hs = bot.homeservers[net_id]
    room_id = request.room_id
    if room_id is None:
        ghost_id = await bot.ghosts.ensure(net_id, ghost, here.id, request.from_user)
        try:
            room_id = await hs.create_room(
                {"preset": "private_chat", "is_direct": True,
                 "invite": [to_user, target.bot_user_id]},
                as_user=ghost_id,
            )
        except HomeserverError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                # No such person (or they cannot be invited): the same silence as a decline.
                log.debug("DM request on %s not made: %s", net_id, exc)
                with bot.store.transaction():
                    bot.store.update_dm_request(request.id, state="failed")
                return
            raise
        # Recorded before anything else is awaited, so the target's join, pushed any moment
        # now, finds its request.
        with bot.store.transaction():
            bot.store.set_ghost_in_room(net_id, ghost, room_id, True)
            bot.store.update_dm_request(request.id, room_id=room_id)
    await hs.join(room_id)
    if await hs.membership(room_id, to_user) == "join":
        # They joined before the request was on record, so no push will tell: accept now.
        await accepted(bot, BotTask(net_id, room_id, "dm_accepted", {"request": request.id},
                                    "", task.about))


async def accepted(bot: Bot, task: BotTask) -> None:
    request_id = int(task.data["request"])
    if request_id in bot.busy:
        return  # the same acceptance, seen twice at once (push and check): one is enough
    bot.busy.add(request_id)
    try:
        await _accept(bot, request_id)
    finally:
        bot.busy.discard(request_id)


async def _accept(bot: Bot, request_id: int) -> None:
    request = bot.store.dm_request(request_id)
    if request is None or request.state != "pending" or request.room_id is None:
        return
    if request.to_network not in bot.networks or request.from_network not in bot.networks:
        return
    source, home = bot.networks[request.to_network], bot.networks[request.from_network]
    linked = bot.store.linked_accounts(request.to_network, request.to_user)
    ghost = ghost_for(request.to_user, source, home, bot.networks, bot.key, linked)
    if ghost is None:
        return
    hs = bot.homeservers[home.id]
    room_id = request.home_room
    ghost_id = home.user_id(ghost)
    if room_id is None:
        ghost_id = await bot.ghosts.ensure(home.id, ghost, source.id, request.to_user)
        now = bot.store.dm_request(request.id)
        if now is None or now.state != "pending":
            return  # declined (or forgotten) meanwhile: nothing made yet, nothing to undo
        room_id = await hs.create_room(
            {"preset": "private_chat", "is_direct": True,
             "invite": [request.from_user, home.bot_user_id]},
            as_user=ghost_id,
        )
        with bot.store.transaction():
            bot.store.set_ghost_in_room(home.id, ghost, room_id, True)
            bot.store.update_dm_request(request.id, home_room=room_id)
    await hs.join(room_id)
    with bot.store.transaction():
        now = bot.store.dm_request(request.id)
        gone = now is None or now.state != "pending"
        if not gone:
            portal = bot.store.create_portal(
                {source.id: request.room_id, home.id: room_id}, "dm", None
            )
            bot.store.update_dm_request(request.id, state="accepted",
                                        portal_id=portal.portal_id)
    if gone:
        # Declined (or its target forgotten) while this acceptance was on its way: the decline
        # stands. The requester's invitation is taken back and the room left, or it would say
        # that the person exists and answered.
        log.info("a DM request on %s was no longer pending when accepted", source.id)
        with contextlib.suppress(HomeserverError):
            await hs.kick(room_id, request.from_user, as_user=ghost_id)
        for who in (ghost_id, None):
            with contextlib.suppress(HomeserverError):
                await hs.leave(room_id, as_user=who)
        with bot.store.transaction():
            bot.store.set_ghost_in_room(home.id, ghost, room_id, False)
        return
    log.info("a DM request from %s to %s was accepted", home.id, source.id)


async def declined(bot: Bot, task: BotTask) -> None:
    request = bot.store.dm_request(int(task.data["request"]))
    if request is None or request.state != "pending" or request.room_id is None:
        return
    if request.to_network not in bot.networks:
        return
    with bot.store.transaction():
        bot.store.update_dm_request(request.id, state="declined")
    net = bot.networks[request.to_network]
    hs = bot.homeservers[request.to_network]
    for localpart in bot.store.ghosts_in_room(net.id, request.room_id):
        try:
            await hs.leave(request.room_id, as_user=net.user_id(localpart))
        except HomeserverError as exc:
            log.info("ghost could not leave a declined DM on %s: %s", net.id, exc)
        bot.store.set_ghost_in_room(net.id, localpart, request.room_id, False)
    try:
        await hs.leave(request.room_id)
    except HomeserverError as exc:
        log.info("bot could not leave a declined DM on %s: %s", net.id, exc)
