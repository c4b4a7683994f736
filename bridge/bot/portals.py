"""Commands that shape portals: link, unlink, invite."""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from bridge.bot.call import Call, Denied
from bridge.bot.info import discoverable
from bridge.core.actions import BotTask, txn_id
from bridge.core.lookup import user_id_for
from bridge.core.model import Portal
from bridge.core.permissions import Level
from bridge.core.retry import Verdict, classify
from bridge.core.translate import E2EE_ALGORITHM, room_text
from bridge.matrix.client import HomeserverError, MatrixError

if TYPE_CHECKING:
    from bridge.bot.bot import Bot

log = logging.getLogger(__name__)

PORTAL_STATE = "org.tribridge.portal"


async def can_manage(bot: Bot, network: str, room_id: str, user_id: str) -> bool:
    """Whether `user_id` may change the room's state: its power level reaches state_default,
    or it is one of the room's creators, who from room version 12 on have unlimited power and
    are not listed in the power levels."""
    return await _has_power(bot, network, room_id, user_id, "state_default", 50)


async def _has_power(
    bot: Bot, network: str, room_id: str, user_id: str, action: str, default: int
) -> bool:
    """Whether `user_id`'s power level in the room reaches the level of `action` (a key of
    m.room.power_levels: "state_default", "invite"; `default` when the room sets none), or
    it is one of the room's creators (room version 12 on: unlimited power, not listed)."""
    state = await bot.homeservers[network].state_events(room_id)
    create = _state_content(state, "m.room.create")
    version = str(create.get("room_version", "1"))
    if version.isascii() and version.isdigit() and int(version) >= 12:
        creators = {e.get("sender") for e in state if e.get("type") == "m.room.create"}
        extra = create.get("additional_creators")
        if isinstance(extra, list):
            creators.update(extra)
        if user_id in creators:
            return True
    levels = _state_content(state, "m.room.power_levels")
    users = levels.get("users") if isinstance(levels.get("users"), dict) else {}
    assert isinstance(users, dict)
    mine = users.get(user_id, levels.get("users_default", 0))
    needed = levels.get(action, default)
    return isinstance(mine, int) and isinstance(needed, int) and mine >= needed


def _state_content(state: list[dict[str, Any]], event_type: str) -> dict[str, Any]:
    for event in state:
        if event.get("type") == event_type and event.get("state_key") == "":
            content = event.get("content")
            return content if isinstance(content, dict) else {}
    return {}


async def _require_manager(bot: Bot, call: Call) -> None:
    if call.ctx.level >= Level.ADMIN:
        return
    if not await can_manage(bot, call.network, call.room_id, call.sender):
        raise Denied(
            f"{call.invocation.name}: you need the power to change this room's settings "
            "(moderator or above) to do this."
        )


async def _any_can_manage(bot: Bot, network: str, room_id: str, accounts: list[str]) -> bool:
    """Whether one of the person's linked accounts on `network` may manage the room (someone
    may have two accounts there, and manage the room with the second)."""
    for account in accounts:
        if await can_manage(bot, network, room_id, account):
            return True
    return False


async def _publish(bot: Bot, network: str, room_id: str, portal_id: str) -> bool:
    try:
        await bot.homeservers[network].put_state(
            room_id, PORTAL_STATE, "", {"portal_id": portal_id}
        )
    except HomeserverError as exc:
        log.info("portal id not published in %s on %s: %s", room_id, network, exc)
        return False
    return True


async def _pin_all(bot: Bot, portal: Portal) -> list[str]:
    """Publish the portal id in every room of `portal` that lacks it (what PIN_WARNING asks
    for: saying `link` again). The labels of the networks where it still could not be."""
    failed = []
    for net_id, room_id in portal.rooms.items():
        if net_id not in bot.networks:
            continue
        try:
            pinned = (await bot.homeservers[net_id].state(room_id, PORTAL_STATE) or {}).get(
                "portal_id")
        except HomeserverError:
            pinned = None
        if pinned != portal.portal_id and not await _publish(bot, net_id, room_id,
                                                             portal.portal_id):
            failed.append(bot.networks[net_id].label)
    return failed


async def encryption_of(bot: Bot, network: str, room_id: str) -> str | None:
    """The room's end-to-end encryption algorithm, None if it is not encrypted."""
    state = await bot.homeservers[network].state(room_id, "m.room.encryption")
    algorithm = state.get("algorithm") if state else None
    return algorithm if isinstance(algorithm, str) else None


def _refuse_megolm(algorithm: str | None) -> None:
    if algorithm is not None and algorithm != E2EE_ALGORITHM:
        raise Denied(
            "link: this room uses Matrix's own end-to-end encryption, which is bound to one "
            "homeserver and cannot cross networks. Make a room encrypted with tribridge's "
            f"scheme ({E2EE_ALGORITHM}; see docs/e2ee.md) and link that one."
        )


PIN_WARNING = (
    " The bot could not publish the portal id in this room, and encrypted messages are bound "
    "to it: give the bot the power to change room settings, then say `{prefix} link` again."
)


async def link(bot: Bot, call: Call) -> str:
    if call.portal is not None:
        origin, _ = bot.store.portal_info(call.portal.portal_id) or ("command", None)
        if origin == "config":
            raise Denied(
                "link: this portal is declared in the config file ([[portals]]); "
                "the bridge's admin adds rooms to it there."
            )
    await _require_manager(bot, call)
    if "network" in call.args:
        return await _link_existing(bot, call, call.args["network"], call.args["room"])
    if call.portal is None and bot.store.room_in_any_portal(call.room_id):
        raise Denied("link: this room is already in a portal through another network (it is "
                     "federated there); a portal links different rooms.")
    portal = call.portal
    missing = [n for n in bot.networks if portal is None or n not in portal.rooms]
    missing = [n for n in missing if n != call.network]
    hs = bot.homeservers[call.network]
    algorithm = await encryption_of(bot, call.network, call.room_id)
    _refuse_megolm(algorithm)
    # Encrypted messages are bound to the portal id: saying `link` again (as PIN_WARNING
    # asks) publishes it where it is missing.
    unpinned = [] if portal is None or algorithm is None else await _pin_all(bot, portal)
    if not missing:
        if unpinned:
            return ("This room is already bridged to every network, but the bot still may not "
                    f"publish the portal id in its {', '.join(unpinned)} room: give it the "
                    "power to change room settings there, then say "
                    f"{call.say('link')} again.")
        return "This room is already bridged to every network."
    name = (await hs.state(call.room_id, "m.room.name") or {}).get("name")
    topic = (await hs.state(call.room_id, "m.room.topic") or {}).get("topic")
    portal_id = portal.portal_id if portal else str(uuid.uuid4())
    made: dict[str, str] = {}
    for net_id in missing:
        body: dict[str, Any] = {
            "preset": "private_chat",
            "initial_state": [
                {"type": PORTAL_STATE, "state_key": "", "content": {"portal_id": portal_id}}
            ],
        }
        source, target = bot.networks[call.network], bot.networks[net_id]
        if isinstance(name, str) and name:
            body["name"] = room_text(name, "name", source, target, bot.key)
        if isinstance(topic, str) and topic:
            body["topic"] = room_text(topic, "topic", source, target, bot.key)
        if algorithm is not None:
            # An encrypted room's portal is encrypted on every network.
            body["initial_state"].append(
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": algorithm}}
            )
        try:
            made[net_id] = await bot.homeservers[net_id].create_room(body)
        except HomeserverError:
            # Not left behind: the rooms made so far are known nowhere else, and each new try
            # would make more. The bot leaves them (its only member), and the reply says why.
            for other, room in made.items():
                with contextlib.suppress(HomeserverError):
                    await bot.homeservers[other].leave(room)
            raise
    with bot.store.transaction():
        if portal is None:
            bot.store.create_portal({call.network: call.room_id, **made}, "command",
                                    call.sender, portal_id)
        else:
            for net_id, room_id in made.items():
                bot.store.add_portal_room(portal_id, net_id, room_id)
    published = True
    if portal is None:
        published = await _publish(bot, call.network, call.room_id, portal_id)
    rooms = ", ".join(f"{bot.networks[n].label} {r}" for n, r in made.items())
    log.info("portal %s made with %d new room(s)", portal_id, len(made))
    answer = (
        f"This room is now bridged to {rooms}. Bring people in with "
        f"{call.say('invite <network>:<identity>')}."
    )
    if algorithm is not None:
        answer += " The new rooms are end-to-end encrypted too; the bridge cannot read them."
        if not published or unpinned:
            answer += PIN_WARNING.format(prefix=call.ctx.prefix)
    return answer


async def _link_existing(bot: Bot, call: Call, net_id: str, room: str) -> str:
    target = bot.networks[net_id]
    if net_id == call.network:
        raise Denied("link: that room is on this same network; a portal has one room per network.")
    hs = bot.homeservers[net_id]
    room_id = room
    if room.startswith("#"):
        found = await hs.resolve_alias(room)
        if found is None:
            raise Denied(f"link: no room {room} on {target.label}.")
        room_id = found
    if call.portal is not None and net_id in call.portal.rooms:
        raise Denied(
            f"link: this portal already has a {target.label} room ({call.portal.rooms[net_id]}); "
            f"{call.say('unlink')} it there first."
        )
    if bot.store.portal_for_room(net_id, room_id) is not None:
        raise Denied(f"link: {room} is already part of a portal.")
    if bot.store.management_owner(net_id, room_id) is not None:
        # Every message its owner writes there is a command: linked, none would be relayed.
        raise Denied(f"link: {room} is a management room (a direct chat with the bot); link "
                     "a group room.")
    if room_id == call.room_id or bot.store.room_in_any_portal(room_id):
        # The same room, federated between the two homeservers: linked to itself, its
        # messages would go round and round.
        raise Denied(f"link: {room} is this same room, reached from {target.label} by "
                     "federation; a portal links different rooms.")
    not_theirs = Denied(
        f"link: you must be able to manage the {target.label} room too. Link your "
        f"{target.label} account with {call.say('identity link')}, or ask an admin."
    )
    own: list[str] | None = None  # an admin's need not be theirs
    if call.ctx.level < Level.ADMIN:
        # Asked before the bot joins anything: nobody without an account there makes it join
        # rooms of that network, nor learns whether it can.
        own = [u for n, u in bot.store.linked_accounts(call.network, call.sender) if n == net_id]
        if not own:
            raise not_theirs
    joined_now = False
    if await hs.membership(room_id, target.bot_user_id) != "join":
        try:
            await hs.join(room_id)
        except HomeserverError:
            raise Denied(
                f"link: the bot is not in {room}. Invite {target.bot_user_id} there first."
            ) from None
        joined_now = True
    try:
        if own is not None and not await _any_can_manage(bot, net_id, room_id, own):
            raise not_theirs
        here_alg = await encryption_of(bot, call.network, call.room_id)
        _refuse_megolm(here_alg)
        if here_alg != await encryption_of(bot, net_id, room_id):
            raise Denied(
                "link: one of the two rooms is end-to-end encrypted and the other is not; an "
                "encrypted room and an unencrypted one are never linked."
            )
    except (Denied, HomeserverError):
        if joined_now:  # joined for this link only: the bot does not stay where it was refused
            with contextlib.suppress(HomeserverError):
                await hs.leave(room_id)
        raise
    with bot.store.transaction():
        if call.portal is None:
            portal = bot.store.create_portal(
                {call.network: call.room_id, net_id: room_id}, "command", call.sender
            )
            portal_id = portal.portal_id
        else:
            portal_id = call.portal.portal_id
            bot.store.add_portal_room(portal_id, net_id, room_id)
    published = await _publish(bot, net_id, room_id, portal_id)
    if call.portal is None:
        published = await _publish(bot, call.network, call.room_id, portal_id) and published
    here = bot.networks[call.network].label
    await bot.notice(net_id, room_id, f"This room is now bridged with {here}.",
                     about=call.event_id)
    answer = f"This room is now bridged with the {target.label} room {room}."
    if here_alg is not None and not published:
        answer += PIN_WARNING.format(prefix=call.ctx.prefix)
    return answer


async def unlink(bot: Bot, call: Call) -> str:
    portal = call.portal
    assert portal is not None  # the parser only lets unlink through in a portal room
    origin, _ = bot.store.portal_info(portal.portal_id) or ("command", None)
    if origin == "config":
        raise Denied(
            "unlink: this portal is declared in the config file ([[portals]]); "
            "the bridge's admin removes it there."
        )
    await _require_manager(bot, call)
    with bot.store.transaction():
        bot.store.remove_portal_room(call.network, call.room_id)
    await room_left(bot, portal, call.network, "", call.event_id)
    return "This room is no longer bridged; the ghosts have left."


async def mirror(bot: Bot, call: Call) -> str:
    portal = call.portal
    assert portal is not None  # the parser only lets mirror through in a portal room
    value = call.args.get("value")
    default = bot.config().bridge.mirror_room_state
    if value is None:
        now = default if portal.mirror_state is None else portal.mirror_state
        how = "are" if now else "are not"
        origin = " (the bridge's default)" if portal.mirror_state is None else ""
        return (f"Name, topic and avatar changes {how} mirrored across this portal{origin}. "
                f"Say {call.say('mirror on')} or {call.say('mirror off')} to change it.")
    await _require_manager(bot, call)
    with bot.store.transaction():
        bot.store.set_mirror_state(portal.portal_id, value)
    if value:
        return "Name, topic and avatar changes are now mirrored across this portal."
    return "Name, topic and avatar changes are no longer mirrored across this portal."


async def room_left(bot: Bot, before: Portal, network: str, why: str, about: str) -> None:
    """`network`'s room has left the portal `before`: the ghosts leave it, and every other
    room of the portal is told (`why` ends the notice's first sentence)."""
    left = before.rooms[network]
    await leave_ghosts(bot, network, left)
    label = bot.networks[network].label
    rest = {n: r for n, r in before.rooms.items() if n != network}
    for net_id, room_id in rest.items():
        text = f"The {label} room left this portal{why}."
        if len(rest) == 1:
            text += " This room is no longer bridged."
        try:
            await bot.notice(net_id, room_id, text, about=about)
        except HomeserverError as exc:
            log.info("could not tell %s on %s that a room left: %s", room_id, net_id, exc)


class _ElsewhereSilent(HomeserverError):
    """Another network's homeserver did not answer: the task is tried again later (a 503 to
    the retry rules), without this task's own homeserver counting as down."""

    status = 503


async def encryption_changed(bot: Bot, task: BotTask) -> None:
    """A portal room's encryption changed: if it no longer agrees with the portal's other
    rooms (or is Matrix's own, which cannot cross networks), it leaves the portal, and every
    room is told why (invariant 6). The rooms' state is read, not the event's content: a
    task run again, or late, acts on what is true now."""
    portal = bot.store.portal_for_room(task.network, task.room_id)
    if portal is None:
        return
    here = await encryption_of(bot, task.network, task.room_id)
    megolm = here is not None and here != E2EE_ALGORITHM
    matching = not megolm
    for net_id, room_id in portal.rooms.items():
        if net_id == task.network or not matching:
            continue
        try:
            matching = await encryption_of(bot, net_id, room_id) == here
        except MatrixError as exc:
            if classify(exc.status, exc.errcode) is Verdict.RETRY:
                raise _ElsewhereSilent(f"{net_id}: {exc}") from exc
            # The bot cannot read that room (it is not in it): the two cannot be shown to
            # match, and an encrypted room is never left linked on a guess.
            log.info("could not read the encryption of %s on %s: %s", room_id, net_id, exc)
            matching = False
        except HomeserverError as exc:
            raise _ElsewhereSilent(f"{net_id}: {exc}") from exc
    if matching:
        return
    with bot.store.transaction():
        bot.store.remove_portal_room(task.network, task.room_id)
    label = bot.networks[task.network].label
    if megolm:
        why = (" when it turned on Matrix's own end-to-end encryption, which is bound to one "
               "homeserver and cannot cross networks")
    else:
        why = (" when its end-to-end encryption changed: encrypted and unencrypted rooms are "
               "never linked")
    log.warning("portal %s: the %s room's encryption no longer matches; it left the portal",
                portal.portal_id, task.network)
    await room_left(bot, portal, task.network, why, task.about)
    await bot.notice(
        task.network, task.room_id,
        f"This {label} room is no longer bridged: its end-to-end encryption no longer matches "
        "the portal's other rooms, and the bridge never links an encrypted room with an "
        "unencrypted one. To bridge an encrypted conversation, say "
        f"`{bot.config().bridge.command_prefix} link` in an unbridged room encrypted with "
        "tribridge's scheme (docs/e2ee.md): the rooms it makes on the other networks are "
        "encrypted too.", about=task.about)


async def leave_ghosts(bot: Bot, network: str, room_id: str) -> None:
    """Every ghost of ours in the room leaves it."""
    net = bot.networks[network]
    for localpart in bot.store.ghosts_in_room(network, room_id):
        try:
            await bot.homeservers[network].leave(room_id, as_user=net.user_id(localpart))
        except HomeserverError as exc:
            log.info("ghost could not leave %s on %s: %s", room_id, network, exc)
        bot.store.set_ghost_in_room(network, localpart, room_id, False)


async def invite(bot: Bot, call: Call) -> str:
    portal = call.portal
    assert portal is not None
    net_id, identity = call.args["target"]
    target = bot.networks[net_id]
    if net_id == call.network:
        raise Denied("invite: they are on this network; invite them to this room yourself.")
    origin, _ = bot.store.portal_info(portal.portal_id) or ("command", None)
    if origin == "dm":
        raise Denied("invite: this is a chat between two people; to talk with more, make a "
                     f"group and say {call.say('link')} in it.")
    # Whoever may not invite here may not invite there either (the bot does it for them).
    if call.ctx.level < Level.ADMIN and not await _has_power(
        bot, call.network, call.room_id, call.sender, "invite", 0
    ):
        raise Denied("invite: you need the power to invite people to this room to do this.")
    room_id = portal.rooms.get(net_id)
    if room_id is None:
        raise Denied(
            f"invite: this portal has no {target.label} room yet; {call.say('link')} makes one."
        )
    # The same answer, sent before looking anyone up; the lookup runs in a queue of its own,
    # so whether they exist or can be reached shows neither in the words nor in the time.
    answer = (
        f"Invited {net_id}:{identity.value} to this conversation on {target.label}, if they can "
        "be reached. They decide whether to join."
    )
    await bot.notice(call.network, call.room_id, answer, about=call.event_id)
    user_id = user_id_for(target, identity)
    with bot.store.transaction():
        bot.store.enqueue([BotTask(
            net_id, f"invite:{call.event_id}", "invite_person", {"room": room_id, "user": user_id},
            txn_id(call.network, call.event_id, net_id, "invite"), call.event_id,
        )])
    bot.wake(net_id)
    return ""


async def invite_person(bot: Bot, task: BotTask) -> None:
    """The invite itself, if the person can be reached (the task's payload is emptied once
    done: it names them)."""
    room_id, user_id = str(task.data["room"]), str(task.data["user"])
    if not discoverable(bot, task.network, user_id):
        return
    try:
        await bot.homeservers[task.network].invite(room_id, user_id)
    except HomeserverError as exc:
        if exc.status is None or exc.status >= 500 or exc.status == 429:
            raise  # try again later
        log.debug("invite on %s not sent: %s", task.network, exc)
