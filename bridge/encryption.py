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
import math
from collections.abc import Iterable, Mapping

import trio

from bridge.core.model import Portal
from bridge.core.retry import Verdict, classify, misconfigured
from bridge.core.translate import E2EE_ALGORITHM
from bridge.matrix.client import Homeserver, HomeserverError, MatrixError
from bridge.store import Store

log = logging.getLogger(__name__)


RECHECK_SECONDS = 30.0


async def refuse_mixed_portals(
    homeservers: Mapping[str, Homeserver], store: Store, portals: Iterable[Portal],
    within: float | None = None, *, again: bool = False,
) -> tuple[list[Portal], list[Portal]]:
    """Stop bridging every portal whose rooms disagree on encryption. Returns those, and the
    portals not checked: a homeserver did not answer, or `within` seconds ran out first (the
    start waits for this; one silent homeserver must not hold READY past systemd's limit)."""
    refused: list[Portal] = []
    unchecked: list[Portal] = []
    todo = list(portals)
    done = 0
    with trio.move_on_after(within if within is not None else math.inf):
        for portal in todo:
            verdict = await _check(homeservers, store, portal, again)
            if verdict == "refused":
                refused.append(portal)
            elif verdict == "unchecked":
                unchecked.append(portal)
            done += 1
    cut = todo[done:]
    if cut:  # never asked, or cut off mid-read: nothing was said about them yet
        log.warning("the encryption of %d portal(s) was not read within %.0f s (%s): bridged "
                    "meanwhile, checked every %.0f s until it is read", len(cut), within,
                    ", ".join(p.portal_id for p in cut[:5]) + (", ..." if len(cut) > 5 else ""),
                    RECHECK_SECONDS)
    return refused, unchecked + cut


async def _check(homeservers: Mapping[str, Homeserver], store: Store, portal: Portal,
                 again: bool = False) -> str:
    """"refused" (and no longer bridged), "unchecked" (to be asked again) or "ok". `again`:
    a recheck, whose "still unchecked" was said already (at debug: a homeserver down for an
    hour would otherwise give a warning per portal every RECHECK_SECONDS)."""
    unchecked_level = logging.DEBUG if again else logging.WARNING
    algorithms: dict[str, str | None] = {}
    try:
        for net_id, room_id in portal.rooms.items():
            state = await homeservers[net_id].state(room_id, "m.room.encryption")
            algorithm = state.get("algorithm") if state else None
            algorithms[net_id] = algorithm if isinstance(algorithm, str) else None
    except MatrixError as exc:
        if classify(exc.status, exc.errcode) is not Verdict.RETRY or misconfigured(
                exc.status, exc.errcode):
            # Asking again will not help (a wrong token, mended only by a restart, which
            # checks again): the log says so once, and the bot checks the room when its
            # encryption changes.
            log.warning("could not read the encryption of portal %s (%s): not checked",
                        portal.portal_id, exc)
            return "ok"
        log.log(unchecked_level, "could not read the encryption of portal %s (%s): bridged "
                "meanwhile, checked every %.0f s until it is read", portal.portal_id, exc,
                RECHECK_SECONDS)
        return "unchecked"
    except HomeserverError as exc:  # no answer at all
        log.log(unchecked_level, "could not read the encryption of portal %s (%s): bridged "
                "meanwhile, checked every %.0f s until it is read", portal.portal_id, exc,
                RECHECK_SECONDS)
        return "unchecked"
    kinds = set(algorithms.values())
    megolm = [a for a in kinds if a is not None and a != E2EE_ALGORITHM]
    if len(kinds) <= 1 and not megolm:
        return "ok"
    why = (
        "uses Matrix's own encryption, which cannot cross networks" if megolm
        else "mixes encrypted and unencrypted rooms ("
        + ", ".join(f"{n}: {'encrypted' if a else 'not encrypted'}"
                    for n, a in sorted(algorithms.items())) + ")"
    )
    rooms = ", ".join(f"{n} {r}" for n, r in sorted(portal.rooms.items()))
    log.error("portal %s (%s) %s: not bridged; fix its [[portals]] entry", portal.portal_id,
              rooms, why)
    with store.transaction():
        store.delete_portal(portal.portal_id)
    return "refused"


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
            _, unchecked = await refuse_mixed_portals(homeservers, store, current, again=True)
            left = {portal.portal_id for portal in unchecked}
            checking -= waiting - left
            waiting = left
    finally:
        checking -= waiting
