"""Commands that tell: help, version, ping, whoami, status and the admin views."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from bridge import __version__
from bridge.bot.call import Call
from bridge.core.commands import help_text
from bridge.core.ids import native_identity
from bridge.core.permissions import Level
from bridge.core.translate import ghost_for
from bridge.matrix.client import HomeserverError

if TYPE_CHECKING:
    from bridge.bot.bot import Bot


async def help_(bot: Bot, call: Call) -> str:
    return help_text(call.ctx, call.args.get("command"))


async def version(bot: Bot, call: Call) -> str:
    return f"tribridge {__version__}"


async def ping(bot: Bot, call: Call) -> str:
    results: dict[str, str] = {}

    async def one(net_id: str) -> None:
        started = trio.current_time()
        try:
            await bot.homeservers[net_id].versions()
        except HomeserverError as exc:
            results[net_id] = f"no answer ({exc})"
        else:
            results[net_id] = f"{(trio.current_time() - started) * 1000:.0f} ms"

    async with trio.open_nursery() as nursery:
        for net_id in bot.networks:
            nursery.start_soon(one, net_id)
    lines = ["Round trips from the bridge:"]
    for net_id, network in bot.networks.items():
        lines.append(f"- {network.label} ({network.server_name}): {results[net_id]}")
    return "\n".join(lines)


def discoverable(bot: Bot, network: str, user_id: str) -> bool:
    """Whether others may reach the person with dm and invite: their choice, else on for
    handles and off for phone numbers and emails."""
    choice, _ = bot.store.settings(network, user_id)
    if choice is not None:
        return choice
    return bot.networks[network].identity == "handle"


async def whoami(bot: Bot, call: Call) -> str:
    here = bot.networks[call.network]
    identity = native_identity(call.sender, here.identity, here.server_name)
    kind = identity.kind if identity.kind != "other" else "account"
    lines = [f"You are {identity.value} ({kind}) on {here.label}, level {call.ctx.level.label}."]
    linked = bot.store.linked_accounts(call.network, call.sender)
    for target_id, target in bot.networks.items():
        if target_id == call.network:
            continue
        ghost = ghost_for(call.sender, here, target, bot.networks, bot.key, linked)
        if ghost is None:
            continue
        # A ghost shared by linked accounts carries the name of the account it derives from.
        base = bot.ghosts.base_account(target_id, call.network, call.sender)
        name = await bot.ghosts.name(ghost, *base)
        lines.append(f"On {target.label} you appear as \"{name}\".")
    show = "on" if bot.ghosts.exposed(call.network, call.sender) else "off"
    lines.append(
        f"Discoverable with dm and invite: "
        f"{'on' if discoverable(bot, call.network, call.sender) else 'off'}. "
        f"Phone number or email shown on other networks: {show}."
    )
    me = (call.network, call.sender)
    others = [f"{n}:{_shown(bot, n, u)}" for n, u in linked if (n, u) != me]
    lines.append(f"Linked accounts: {', '.join(others) if others else 'none'}.")
    return "\n".join(lines)


def _shown(bot: Bot, network: str, user_id: str) -> str:
    net = bot.networks.get(network)
    if net is None:  # a network since removed from the config
        return user_id
    return native_identity(user_id, net.identity, net.server_name).value


async def status(bot: Bot, call: Call) -> str:
    lines: list[str] = []
    if call.portal is not None:
        lines.append(f"This room is bridged (portal {call.portal.portal_id}):")
        for net_id, room_id in sorted(call.portal.rooms.items()):
            net = bot.networks.get(net_id)
            if net is None:
                continue
            health = "reachable" if bot.reachable(net_id) else "not answering"
            waiting = bot.store.pending_count(net_id, room_id)
            here = " (this room)" if net_id == call.network else ""
            lines.append(f"- {net.label}: {room_id}{here}: {health}, {waiting} waiting")
    elif not call.ctx.in_management:
        # Your chats name the people you asked for: not for a group room's eyes.
        lines.append(f"This room is not bridged; {call.say('link')} bridges it.")
    else:
        requests = bot.store.dm_requests_of(call.network, call.sender)
        chats = []
        for r in requests:
            if (r.from_network, r.from_user) == (call.network, call.sender):
                state = "open" if r.state == "accepted" else "no answer"
                chats.append(f"- with {r.to_network}:{r.to_shown}: {state}")
            elif r.state == "accepted" and r.from_network in bot.networks:
                chats.append(f"- with a {bot.networks[r.from_network].label} user: open")
        lines.append("Your chats across networks:" if chats else "No chats across networks yet.")
        lines += chats
        made = bot.store.portals_made_by(call.sender)
        if made:
            lines.append("Portals you made:")
            for portal in made:
                rooms = ", ".join(f"{n} {r}" for n, r in sorted(portal.rooms.items()))
                lines.append(f"- {portal.portal_id}: {rooms}")
    if call.ctx.level >= Level.ADMIN:
        depth = bot.store.outbox_depth()
        lines.append(
            "Outbox: " + ", ".join(f"{n} {depth.get(n, 0)}" for n in sorted(bot.networks))
        )
    return "\n".join(lines)


async def admin_portals(bot: Bot, call: Call) -> str:
    portals = bot.store.portals()
    if not portals:
        return "No portals."
    lines = [f"{len(portals)} portal(s):"]
    for portal in portals:
        origin, _ = bot.store.portal_info(portal.portal_id) or ("?", None)
        rooms = ", ".join(f"{n} {r}" for n, r in sorted(portal.rooms.items()))
        lines.append(f"- {portal.portal_id} ({origin}): {rooms}")
    return "\n".join(lines)


async def admin_stats(bot: Bot, call: Call) -> str:
    counts = bot.store.counts()
    depth = bot.store.outbox_depth()
    lines = ["Store:"] + [f"- {name}: {n}" for name, n in counts.items()]
    lines.append(
        "Outbox waiting: " + ", ".join(f"{n} {depth.get(n, 0)}" for n in sorted(bot.networks))
    )
    return "\n".join(lines)


async def admin_reload(bot: Bot, call: Call) -> str:
    return bot.reload()
