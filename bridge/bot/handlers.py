"""Command name to handler: one entry per row of bridge/core/commands.py's table."""

from __future__ import annotations

from collections.abc import Mapping

from bridge.bot import dms, info, people, portals
from bridge.bot.call import Handler
from bridge.core.commands import COMMANDS

HANDLERS: Mapping[str, Handler] = {
    "help": info.help_,
    "version": info.version,
    "ping": info.ping,
    "whoami": info.whoami,
    "status": info.status,
    "link": portals.link,
    "unlink": portals.unlink,
    "mirror": portals.mirror,
    "invite": portals.invite,
    "dm": dms.dm,
    "privacy": people.privacy,
    "identity link": people.identity_link,
    "identity confirm": people.identity_confirm,
    "identity unlink": people.identity_unlink,
    "forget me": people.forget_me,
    "admin portals": info.admin_portals,
    "admin stats": info.admin_stats,
    "admin reload": info.admin_reload,
}

assert set(HANDLERS) == {spec.name for spec in COMMANDS}, "every command needs a handler"
