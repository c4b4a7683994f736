"""Dispatch of the bot's tasks, and what every handler shares: replying, room context.

A task comes out of the outbox (bridge/delivery.py) and runs once. Every reply is a notice from
the bot with a transaction id derived from the event that asked, so a reply cannot be sent twice.
Handlers return the reply text; a `Denied` raised anywhere becomes the reply, so that a check deep
in a handler reads as plainly as one at its top.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from bridge.bot import dms, events, people, portals
from bridge.bot.call import Call, Denied, Handler
from bridge.bot.handlers import HANDLERS
from bridge.config import Config
from bridge.core.actions import BotTask, txn_id
from bridge.core.commands import Context, Refusal, help_text, parse
from bridge.core.markup import to_html
from bridge.core.model import Network
from bridge.core.retry import Verdict, classify, misconfigured
from bridge.ghostkeeper import GhostKeeper
from bridge.logs import mask_private
from bridge.matrix.client import Homeserver, HomeserverError, MatrixError, TooBig, Unreachable
from bridge.store import Store

log = logging.getLogger(__name__)

__all__ = ["Bot", "Call", "Denied"]


class Bot:
    def __init__(
        self,
        config: Callable[[], Config],
        homeservers: Mapping[str, Homeserver],
        store: Store,
        key: bytes,
        *,
        reachable: Callable[[str], bool] = lambda network: True,
        reload: Callable[[], str] = lambda: "reload is not available here",
        wake: Callable[[str], object] = lambda network: None,  # its answer is not used
        read_room: Callable[[str, str], object] = lambda network, room_id: None,
    ) -> None:
        self.config = config
        self.homeservers = homeservers
        self.store = store
        self.key = key
        self.networks: dict[str, Network] = {
            n: net.network for n, net in config().networks.items()
        }
        self.ghosts = GhostKeeper(homeservers, self.networks, store, key)
        self.reachable = reachable
        self.reload = reload
        self.wake = wake  # new bot tasks were queued for a network
        # Have a room's timeline read soon (Reconciler.read_soon): for what was said in a new
        # management room before the bot was in it.
        self.read_room = read_room
        self._replies: dict[str, int] = {}
        self.busy: set[int] = set()  # DM requests being accepted right now
        self.handlers: Mapping[str, Handler] = HANDLERS

    # -- entry point ---------------------------------------------------------------------------

    async def __call__(self, task: BotTask) -> None:
        # Replies are numbered from 0 on every run, so a task run again (after an error) sends
        # its replies with the same transaction ids, which the homeserver sends only once.
        self._replies[task.about] = 0
        if task.task == "command":
            await self.command(task)
        elif task.task == "invited":
            await events.invited(self, task)
        elif task.task == "removed":
            await events.removed(self, task)
        elif task.task == "dm_request":
            await dms.send_request(self, task)
        elif task.task == "invite_person":
            await portals.invite_person(self, task)
        elif task.task == "dm_accepted":
            await dms.accepted(self, task)
        elif task.task == "dm_declined":
            await dms.declined(self, task)
        elif task.task == "encryption":
            if self.store.management_owner(task.network, task.room_id) is not None:
                await events.encryption_in_management(self, task)
            else:
                await portals.encryption_changed(self, task)
        elif task.task == "management_shared":
            await events.management_shared(self, task)
        elif task.task == "edited_command":
            await self.reply(task, "An edit of a command is not run (it could run it twice): "
                                   "send the command again.")
        elif task.task == "link_code":
            await people.send_link_code(self, task)
        elif task.task in ("ghost_removed", "ghost_invited"):
            events.ghost_moderated(self, task)
        else:
            log.warning("unknown bot task %r on %s", task.task, task.network)

    async def command(self, task: BotTask) -> None:
        sender, text = str(task.data.get("sender", "")), str(task.data.get("text", ""))
        ctx = self.context(task.network, task.room_id, sender)
        parsed = parse(text, ctx)
        if isinstance(parsed, Refusal):
            await self.reply(task, parsed.message)
            return
        call = Call(task.network, task.room_id, sender, task.about, parsed, ctx,
                    self.store.portal_for_room(task.network, task.room_id))
        handler = self.handlers[parsed.name]
        log.info("command %s on %s", parsed.name, task.network)  # never its arguments
        try:
            answer = await handler(self, call)
        except Denied as exc:
            answer = str(exc)
        except HomeserverError as exc:
            log.warning("command %s on %s failed: %s", parsed.name, task.network, exc)
            answer = failure_reply(parsed.name, exc, self.networks)
        except Exception:
            # A bug of ours: the person still gets an answer, and the daemon goes on.
            log.exception("command %s on %s failed unexpectedly", parsed.name, task.network)
            answer = f"{parsed.name} failed because of an error in the bridge; it is logged."
        if answer:
            await self.reply(task, answer)

    def context(self, network: str, room_id: str, sender: str) -> Context:
        config = self.config()
        return Context(
            networks=self.networks,
            here=network,
            level=config.permissions.level(sender),
            in_portal=self.store.portal_for_room(network, room_id) is not None,
            in_management=self.store.management_owner(network, room_id) == sender,
            prefix=config.bridge.command_prefix,
            default_country_code=config.bridge.default_country_code,
        )

    # -- replies -------------------------------------------------------------------------------

    async def reply(self, task: BotTask, text: str) -> None:
        await self.notice(task.network, task.room_id, text, about=task.about)

    async def notice(self, network: str, room_id: str, text: str, *, about: str) -> None:
        """A notice from the bot; `about` (an event id, or any stable tag) plus a counter make
        its transaction id, so running the same task again sends nothing twice."""
        n = self._replies.get(about, 0)
        if len(self._replies) > 10_000:
            # A bound, not a cache: counters only matter within a task, but the running task's
            # is kept, or its next notice would reuse a transaction id and never be sent.
            self._replies.clear()
        self._replies[about] = n + 1
        txn = txn_id(network, about, network, f"reply{n}")
        content = {"msgtype": "m.notice", "body": text}
        formatted = to_html(text)
        if formatted is not None:
            content |= {"format": "org.matrix.custom.html", "formatted_body": formatted}
        await self.homeservers[network].send_event(
            room_id, "m.room.message", content, txn, self.networks[network].bot_user_id
        )

    def greeting(self, network: str, user_id: str) -> str:
        ctx = Context(self.networks, network, self.config().permissions.level(user_id), False,
                      True, self.config().bridge.command_prefix)
        return "Hello! This is your management room with the tribridge bot.\n" + help_text(ctx)


def failure_reply(command: str, exc: HomeserverError, networks: Mapping[str, Network]) -> str:
    """What the person hears when a homeserver failed their command: which network, whether
    trying again can help, and the refusal's words (masked: another network's homeserver may
    name people by ids that are phone numbers)."""
    label = next((n.label for n in networks.values() if n.server_name == exc.server_name),
                 "a homeserver")
    if isinstance(exc, TooBig):
        return f"{command} failed: {label} answered with more than the bridge takes."
    if isinstance(exc, Unreachable) or exc.status is None:
        return f"{command} failed: {label} did not answer. Try again in a moment."
    if misconfigured(exc.status, exc.errcode):
        return (f"{command} failed: {label} does not accept the bridge's token, a mistake in "
                "the bridge's setup that its admin must mend (their log says which).")
    if classify(exc.status, exc.errcode) is Verdict.RETRY:
        return (f"{command} failed: {label} could not do it just now ({exc.errcode}). Try "
                "again in a moment.")
    said = mask_private(exc.message)[:200] if isinstance(exc, MatrixError) else ""
    return (f"{command} failed: {label} refused it ({exc.errcode}{': ' + said if said else ''}"
            "). Trying again will not help; ask the bridge's admin if it should be allowed.")
