"""Commands about oneself: privacy, identity links, forget me."""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING

import nacl.encoding
import nacl.hash
import nacl.utils

from bridge.bot.call import Call, Denied
from bridge.bot.info import discoverable
from bridge.core.actions import BotTask, txn_id
from bridge.core.ghosts import forget_remembered
from bridge.core.ids import native_identity
from bridge.core.lookup import user_id_for
from bridge.matrix.client import HomeserverError

if TYPE_CHECKING:
    from bridge.bot.bot import Bot

log = logging.getLogger(__name__)

CODE_SECONDS = 600  # an identity link code is good for 10 minutes
CODE_TRIES = 5  # wrong tries before a code is void
FORGET_SECONDS = 300  # "forget me confirm" must follow "forget me" within 5 minutes
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud, typed on phones
CODE_LENGTH = 8


async def privacy(bot: Bot, call: Call) -> str:
    setting = call.args.get("setting")
    if setting is None:
        found = "on" if discoverable(bot, call.network, call.sender) else "off"
        shown = "on" if bot.ghosts.exposed(call.network, call.sender) else "off"
        return (
            f"discoverable: {found} (others can reach you with dm and invite)\n"
            f"show-identity: {shown} (your phone number or email beside your name elsewhere)\n"
            f"Change one with {call.say('privacy <setting> on|off')}."
        )
    value = bool(call.args["value"])
    with bot.store.transaction():
        bot.store.set_setting(call.network, call.sender, setting, value)
    if setting == "discoverable":
        return (
            "You can now be reached with dm and invite." if value
            else "You can no longer be reached with dm and invite; people who try learn nothing."
        )
    renamed, failed = await bot.ghosts.rename(call.network, call.sender)
    what = "now shows" if value else "no longer shows"
    answer = f"Your phone number or email {what} on other networks ({renamed} name(s) updated)."
    if failed:
        labels = " and ".join(bot.networks[n].label for n in failed)
        answer += (f" On {labels} it could not be changed now: your name there changes with "
                   "the next message the bridge carries there for you, or say this again "
                   "later.")
    return answer


def _code_hash(bot: Bot, code: str) -> str:
    digest = nacl.hash.blake2b(code.encode(), key=bot.key, person=b"tribridge-code",
                               encoder=nacl.encoding.HexEncoder)
    return bytes(digest).decode("ascii")


def new_code() -> str:
    raw = nacl.utils.random(CODE_LENGTH)
    return "".join(_CODE_ALPHABET[b % len(_CODE_ALPHABET)] for b in raw)  # 256 % 32 == 0


async def identity_link(bot: Bot, call: Call) -> str:
    net_id, identity = call.args["target"]
    target = bot.networks[net_id]
    if net_id == call.network:
        raise Denied("identity link: give an account on another network than this one.")
    other = user_id_for(target, identity)
    if (net_id, other) in bot.store.linked_accounts(call.network, call.sender):
        return f"This account is already linked with {net_id}:{identity.value}."
    answer = (
        f"If {net_id}:{identity.value} has a management room with the bot on {target.label}, a "
        f"one-time code was sent there. Say `identity confirm <code>` in that room within "
        f"{CODE_SECONDS // 60} minutes."
    )
    await bot.notice(call.network, call.room_id, answer, about=call.event_id)
    # The code goes out in a queue of its own, as `dm`'s lookups do: done here, it would hold
    # this room's next command back by a round trip exactly when the other account has a
    # management room, and the time of that answer would say so.
    with bot.store.transaction():
        bot.store.enqueue([BotTask(
            net_id, f"link:{call.event_id}", "link_code",
            {"to": other, "from_network": call.network, "from_user": call.sender},
            txn_id(call.network, call.event_id, net_id, "link_code"), call.event_id,
        )])
    bot.wake(net_id)
    return ""


async def send_link_code(bot: Bot, task: BotTask) -> None:
    """The one-time code of an `identity link`, to the other account's management room on
    `task.network`, if it has one."""
    to = (task.network, str(task.data.get("to", "")))
    asker = (str(task.data.get("from_network", "")), str(task.data.get("from_user", "")))
    room = bot.store.management_room(*to)
    if room is None or asker[0] not in bot.networks:
        return
    now = time.time()
    if any((c.from_network, c.from_user) == asker and c.expires_at >= now
           for c in bot.store.link_codes(*to)):
        # One live code per asking account: asking again and again must not flood the room
        # with codes (and nothing tells the asker either way).
        log.info("a link code on %s not sent: one from the same account is still live",
                 task.network)
        return
    code = new_code()
    with bot.store.transaction():
        bot.store.put_link_code(to, asker, _code_hash(bot, code), now + CODE_SECONDS)
    here = bot.networks[asker[0]].label
    # Named as this network shows them (a ghost's name: never their number or email unless
    # they chose to show it), so that a request from a stranger does not look like one's own.
    who = await _shown_here(bot, task.network, *asker)
    try:
        await bot.notice(
            task.network, room,
            f"{who} on {here} asked to link their account with this one. Only if that is "
            f"your own account, say `identity confirm {code}` here within "
            f"{CODE_SECONDS // 60} minutes: linked, it shares your ghost on the other networks "
            "and sees your linked accounts. If not, ignore this.",
            about=task.about,
        )
    except HomeserverError as exc:
        # Not retried: a retry would send its new code under the same transaction id, which
        # the homeserver answers with the first notice, and the codes would not match. The
        # code nobody received is dropped, so that asking again sends a new one.
        log.info("could not send a link code on %s: %s", task.network, exc)
        with bot.store.transaction():
            bot.store.drop_link_code(to, asker)


async def _shown_here(bot: Bot, network: str, asker_network: str, asker: str) -> str:
    """How `network` shows the person `asker` of `asker_network`: their ghost's name there."""
    for net_id, localpart in bot.ghosts.ghosts_of(asker_network, asker, own_only=True):
        if net_id == network:
            try:
                return f'"{await bot.ghosts.name(localpart, asker_network, asker)}"'
            except HomeserverError:
                break
    return "Someone"


async def identity_confirm(bot: Bot, call: Call) -> str:
    codes = bot.store.link_codes(call.network, call.sender)
    if not codes:
        return "No identity link is waiting for this account."
    now = time.time()
    live = [c for c in codes if c.expires_at >= now]
    if not live:
        with bot.store.transaction():
            bot.store.drop_link_codes(call.network, call.sender)
        return "That code has expired. Ask again with `identity link` from your other account."
    given = _code_hash(bot, str(call.args["code"]))
    match = next((c for c in live if hmac.compare_digest(c.code_hash, given)), None)
    if match is None:
        with bot.store.transaction():
            left = bot.store.note_wrong_code(call.network, call.sender, CODE_TRIES)
        if left == 0:
            return (
                f"Wrong code {CODE_TRIES} times: the code is void. Ask again with "
                "`identity link` from your other account."
            )
        return f"Wrong code; {left} tr{'y' if left == 1 else 'ies'} left."
    with bot.store.transaction():
        bot.store.link_accounts((match.from_network, match.from_user), (call.network, call.sender))
        bot.store.drop_link_codes(call.network, call.sender)
    source = bot.networks[match.from_network]
    shown = native_identity(match.from_user, source.identity, source.server_name).value
    room = bot.store.management_room(match.from_network, match.from_user)
    here = bot.networks[call.network]
    mine = native_identity(call.sender, here.identity, here.server_name).value
    if room is not None:
        try:
            await bot.notice(match.from_network, room,
                             f"Linked with {call.network}:{mine} on {here.label}.",
                             about=call.event_id)
        except HomeserverError as exc:
            log.info("could not confirm a link on %s: %s", match.from_network, exc)
    return (
        f"Linked with {match.from_network}:{shown} on {source.label}. Other networks now see "
        "your accounts as one person."
    )


async def identity_unlink(bot: Bot, call: Call) -> str:
    with bot.store.transaction():
        others = bot.store.unlink_account(call.network, call.sender)
    if not others:
        return "This account is not linked with any other."
    return f"Unlinked from {len(others)} account(s). Other networks see them apart again."


async def forget_me(bot: Bot, call: Call) -> str:
    if not call.args.get("confirm"):
        with bot.store.transaction():
            bot.store.ask_confirmation(call.network, call.sender, "forget",
                                       time.time() + FORGET_SECONDS)
        return (
            "This erases what the bridge stores about you: identity links, privacy settings, "
            "chat requests, your profile as the bridge knows it, and this management room. "
            "Your ghosts on other networks go back to a neutral name. Messages already relayed "
            "stay where they are. To go ahead, say "
            f"{call.say('forget me confirm')} within {FORGET_SECONDS // 60} minutes."
        )
    with bot.store.transaction():
        asked = bot.store.take_confirmation(call.network, call.sender, "forget", time.time())
    if not asked:
        return (
            f"Say {call.say('forget me')} first, then {call.say('forget me confirm')} within "
            f"{FORGET_SECONDS // 60} minutes."
        )
    ghosts, failed = await bot.ghosts.neutralise(call.network, call.sender)
    # Every management room they have: all are forgotten, and the bot leaves them all.
    rooms = bot.store.management_rooms_of(call.network, call.sender)
    with bot.store.transaction():
        bot.store.forget_person(call.network, call.sender, ghosts)
    forget_remembered()  # memos that hold identities (phone numbers, emails) in memory
    log.info("forgot a person on %s", call.network)
    if failed:
        labels = ", ".join(bot.networks[n].label for n in failed)
        done = (f"Done, except on {labels}: that homeserver did not answer, so your ghost "
                "there keeps its name, and the bridge still knows it. Say "
                f"{call.say('forget me')} again later to finish.")
    else:
        done = "Done: the bridge has forgotten you."
    await bot.notice(
        call.network, call.room_id,
        done + " Messages already relayed stay where they are."
        + (" The bot leaves this room now; invite it again any time." if rooms else ""),
        about=call.event_id,
    )
    for room_id in rooms:
        try:
            await bot.homeservers[call.network].leave(room_id)
        except HomeserverError as exc:
            log.info("could not leave a management room on %s: %s", call.network, exc)
    return ""
