"""Invariant 6 for config portals: an encrypted room and an unencrypted one are never linked.

`link` refuses such a pair itself (bridge/bot/portals.py); a `[[portals]]` entry is checked at
start and on reload, once the bot has joined its rooms. A portal whose rooms disagree (or that
uses Matrix's own Megolm encryption, which cannot cross networks) is not bridged, and the log
says which entry and why. A portal whose rooms could not all be read (a homeserver down) is
bridged meanwhile and checked again every RECHECK_SECONDS until it is. (A room that turns
encryption on later leaves its portal: bridge/bot/portals.py, `encryption_changed`.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import trio

from bridge.core.model import Portal
from bridge.core.retry import Verdict, classify
from bridge.core.translate import E2EE_ALGORITHM
from bridge.matrix.client import Homeserver, HomeserverError, MatrixError
from bridge.store import Store

log = logging.getLogger(__name__)


RECHECK_SECONDS = 30.0


async def refuse_mixed_portals(
    homeservers: Mapping[str, Homeserver], store: Store, portals: Iterable[Portal]
) -> tuple[list[Portal], list[Portal]]:
    """Stop bridging every portal whose rooms disagree on encryption. Returns those, and the
    portals not checked because a homeserver did not answer."""
    refused, unchecked = [], []
    for portal in portals:
        algorithms: dict[str, str | None] = {}
        try:
            for net_id, room_id in portal.rooms.items():
                state = await homeservers[net_id].state(room_id, "m.room.encryption")
                algorithm = state.get("algorithm") if state else None
                algorithms[net_id] = algorithm if isinstance(algorithm, str) else None
        except MatrixError as exc:
            if classify(exc.status, exc.errcode) is Verdict.RETRY:
                log.warning("could not read the encryption of portal %s (%s): bridged "
                            "meanwhile, checked again in %.0f s", portal.portal_id, exc,
                            RECHECK_SECONDS)
                unchecked.append(portal)
            else:
                # Asking again will not help (the bot is not in a room, say): the log says so
                # once, and the bot checks the room when its encryption changes.
                log.warning("could not read the encryption of portal %s (%s): not checked",
                            portal.portal_id, exc)
            continue
        except HomeserverError as exc:  # no answer at all
            log.warning("could not read the encryption of portal %s (%s): bridged meanwhile, "
                        "checked again in %.0f s", portal.portal_id, exc, RECHECK_SECONDS)
            unchecked.append(portal)
            continue
        kinds = set(algorithms.values())
        megolm = [a for a in kinds if a is not None and a != E2EE_ALGORITHM]
        if len(kinds) > 1 or megolm:
            why = (
                "uses Matrix's own encryption, which cannot cross networks" if megolm
                else "mixes encrypted and unencrypted rooms ("
                + ", ".join(f"{n}: {'encrypted' if a else 'not encrypted'}"
                            for n, a in sorted(algorithms.items())) + ")"
            )
            log.error("portal %s %s: not bridged; fix its [[portals]] entry", portal.portal_id, why)
            with store.transaction():
                store.delete_portal(portal.portal_id)
            refused.append(portal)
    return refused, unchecked


async def check_until_done(
    homeservers: Mapping[str, Homeserver], store: Store, portals: Iterable[Portal],
    checking: set[str],
) -> None:
    """Check `portals` (as `refuse_mixed_portals` does) every RECHECK_SECONDS until each one
    was read whole, or is gone (a reload, an unlink). `checking` holds the ids of the portals
    a check is waiting for, shared by all of them: a portal already there is left to its
    check (reloads during an outage start no second one)."""
    waiting = {portal.portal_id for portal in portals} - checking
    checking |= waiting
    try:
        while waiting:
            await trio.sleep(RECHECK_SECONDS)  # the retry period, not a wait for an event
            current = [p for p in (store.portal(i) for i in waiting) if p is not None]
            _, unchecked = await refuse_mixed_portals(homeservers, store, current)
            left = {portal.portal_id for portal in unchecked}
            checking -= waiting - left
            waiting = left
    finally:
        checking -= waiting
