"""Invariant 6 for config portals: an encrypted room and an unencrypted one are never linked.

`link` refuses such a pair itself (bridge/bot/portals.py); a `[[portals]]` entry is checked at
start and on reload, once the bot has joined its rooms. A portal whose rooms disagree (or that
uses Matrix's own Megolm encryption, which cannot cross networks) is not bridged, and the log
says which entry and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from bridge.core.model import Portal
from bridge.core.translate import E2EE_ALGORITHM
from bridge.matrix.client import Homeserver, HomeserverError
from bridge.store import Store

log = logging.getLogger(__name__)


async def refuse_mixed_portals(
    homeservers: Mapping[str, Homeserver], store: Store, portals: Iterable[Portal]
) -> list[Portal]:
    """Stop bridging every portal whose rooms disagree on encryption; returns those."""
    refused = []
    for portal in portals:
        algorithms: dict[str, str | None] = {}
        try:
            for net_id, room_id in portal.rooms.items():
                state = await homeservers[net_id].state(room_id, "m.room.encryption")
                algorithm = state.get("algorithm") if state else None
                algorithms[net_id] = algorithm if isinstance(algorithm, str) else None
        except HomeserverError as exc:
            log.info("could not read the encryption of portal %s: %s", portal.portal_id, exc)
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
    return refused
