"""Ghosts on the homeservers: registered, named and in their rooms, doing only what the store
says is missing. Delivery uses it before each send; the bot uses it for the rooms it makes for
DMs, and to rename a person's ghosts when their privacy settings change or they are forgotten."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from bridge.core.ghosts import ghost_localpart, pseudonym
from bridge.core.ids import InvalidId, native_identity
from bridge.core.model import Network
from bridge.core.privacy import ghost_display_name
from bridge.core.retry import Verdict, classify
from bridge.core.translate import ghost_for
from bridge.matrix.client import Homeserver, HomeserverError, MatrixError
from bridge.media import MediaCarrier
from bridge.store import Store

log = logging.getLogger(__name__)

AVATAR_SECONDS = 30.0  # a ghost's picture is not worth holding a message back longer
AVATAR_RETRY_SECONDS = 300.0  # after a passing failure, the next try waits this long


class GhostKeeper:
    def __init__(
        self,
        homeservers: Mapping[str, Homeserver],
        networks: Mapping[str, Network],
        store: Store,
        key: bytes,
        media: MediaCarrier | None = None,
    ) -> None:
        self.homeservers = homeservers
        self.networks = networks
        self.store = store
        self.key = key
        self.media = media  # delivery's: without it (the bot's keeper) ghosts get no avatars
        self._avatar_retry: dict[tuple[str, str, str | None], float] = {}

    def exposed(self, network_id: str, user_id: str) -> bool:
        """Whether the person's phone number or email may show: their own choice, else the
        network's ``expose_identity``."""
        _, show = self.store.settings(network_id, user_id)
        return self.networks[network_id].expose_identity if show is None else show

    async def name(
        self, localpart: str, network_id: str, user_id: str, room_hint: str | None = None
    ) -> str:
        """The display name of `localpart`, the ghost standing for `user_id` of `network_id`."""
        source = self.networks[network_id]
        known, name = self.store.profile(network_id, user_id)
        if not known:
            hs = self.homeservers[network_id]
            try:
                try:
                    # Their own profile first: a room's member event may hold a nickname
                    # for that room alone.
                    name, avatar = await hs.profile(user_id)
                except MatrixError as exc:
                    if room_hint is None or exc.status not in (403, 404):
                        raise
                    # A homeserver that shows profiles only to those sharing a room.
                    name, avatar = await hs.member_profile(room_hint, user_id)
            except HomeserverError as exc:
                log.info("could not read a display name on %s: %s", source.server_name, exc)
            else:
                self.store.set_profile(network_id, user_id, name, avatar)
        identity = native_identity(user_id, source.identity, source.server_name)
        pseudo = localpart[-16:]
        return ghost_display_name(
            source, identity, name, pseudo, exposed=self.exposed(network_id, user_id)
        )

    async def profile_changed(
        self, target_id: str, localpart: str, network_id: str, user_id: str, room_id: str,
        name: str | None,
    ) -> None:
        """A member event of the person changed (their name to `name`, if it did; or their
        avatar) in the room whose counterpart here is `room_id`. Their own profile, read from
        their homeserver, says whether it is theirs everywhere: it is stored, and the ghost
        renamed everywhere (`ensure`). A name that is not their own is a room nickname: the
        ghost gets it in `room_id` alone; and a nickname dropped (their own name again) gives
        the ghost its own name there again. A profile that cannot be read raises: the change
        is tried again, not guessed."""
        own, avatar = await self.homeservers[network_id].profile(user_id)
        self.store.set_profile(network_id, user_id, own, avatar)
        await self.ensure(target_id, localpart, network_id, user_id)
        if name is None or self.base_account(target_id, network_id, user_id) != (
                network_id, user_id):
            # No new name; or a linked account's, whose ghost keeps the name of the account
            # it is derived from.
            return
        if not self.store.ghost_in_room(target_id, localpart, room_id):
            return  # not in that room: nothing to name there (a join names it after the profile)
        source = self.networks[network_id]
        identity = native_identity(user_id, source.identity, source.server_name)
        shown = ghost_display_name(source, identity, name, localpart[-16:],
                                   exposed=self.exposed(network_id, user_id))
        target = self.homeservers[target_id]
        ghost = self.networks[target_id].user_id(localpart)
        member = await target.state(room_id, "m.room.member", ghost) or {}
        if member.get("membership") != "join" or member.get("displayname") == shown:
            return
        await target.put_state(room_id, "m.room.member", ghost,
                               {**member, "displayname": shown}, as_user=ghost)

    async def ensure(
        self,
        target_id: str,
        localpart: str,
        network_id: str,
        user_id: str,
        room_id: str | None = None,
        room_hint: str | None = None,
    ) -> str:
        """Register and name the ghost on `target_id`; join it to `room_id` if given.
        Returns its user id."""
        # A ghost found registered, named, pictured and in the room with nothing to do is
        # remembered in the store's memo: until a memoised table is written (which drops the
        # memo, and with it this, so a forgotten person's id does not linger), the same reads
        # would give the same answers, and a message's send skips them (they were 7% of the
        # Python time at batch 1).
        epoch = self.store.memo_epoch
        key = ("settled ghost", target_id, localpart, network_id, user_id, room_id)
        settled = self.store.remembered(key)
        if settled is not None:
            return str(settled)
        target = self.networks[target_id]
        hs = self.homeservers[target_id]
        ghost = target.user_id(localpart)
        registered, current_name = self.store.ghost(target_id, localpart)
        if not registered:
            await hs.register(localpart)
        base = self.base_account(target_id, network_id, user_id)
        if base == (network_id, user_id):
            name = await self.name(localpart, network_id, user_id, room_hint)
        else:
            # Linked accounts share one ghost: it keeps the name of the account it is
            # derived from, rather than flipping with whoever spoke last.
            name = await self.name(localpart, *base)
        if not registered or current_name != name:
            await hs.set_display_name(ghost, name)
            # The account the ghost is derived from (see base_account), not the one speaking.
            self.store.save_ghost(target_id, localpart, base[0], name, base[1])
        pictured = await self._avatar(target_id, localpart, ghost, *base)
        if room_id is not None and not self.store.ghost_in_room(target_id, localpart, room_id):
            if self.store.ghost_removed(target_id, localpart, room_id):
                # A moderator there removed it: the bridge's bot does not undo that.
                raise MatrixError(403, "TB_GHOST_REMOVED",
                                  "the room's moderators removed this person's ghost")
            try:
                await hs.invite(room_id, ghost)
            except MatrixError as exc:
                if exc.status != 403:  # already in the room, or the room is public: try joining
                    raise
            await hs.join(room_id, as_user=ghost)
            self.store.set_ghost_in_room(target_id, localpart, room_id, True)
        elif (self.media is not None and pictured and self.store.memo_epoch == epoch
              and self.store.profile(*base)[0]):
            # Nothing was missing, and nothing memoised was written meanwhile (by this call or,
            # across its waits, by another task): settled until the next such write. (Not
            # while the person's profile is unknown: the next send asks for it again. Nor by
            # the bot's keeper, which has no media and so never sees a picture to carry.)
            self.store.remember(key, ghost)
        return ghost

    async def _avatar(self, target_id: str, localpart: str, ghost: str, network_id: str,
                      user_id: str) -> bool:
        """Give the ghost the person's avatar if it changed since it last got one. Best effort:
        a picture that cannot be carried never holds a message back. True if there was nothing
        to do."""
        if self.media is None:
            return True  # the bot's own keeper: avatars are the delivery workers' business
        wanted = self.store.avatar(network_id, user_id)
        if wanted == self.store.ghost_avatar(target_id, localpart):
            return True
        key = (target_id, localpart, wanted)
        if trio.current_time() < self._avatar_retry.get(key, 0.0):
            return False  # failed a moment ago for a passing reason: not before every message
        hs = self.homeservers[target_id]
        done = False
        with trio.move_on_after(AVATAR_SECONDS):
            try:
                copy = "" if wanted is None else await self.media.carry(
                    network_id, wanted, target_id, ghost)
                await hs.set_avatar_url(ghost, copy)
                done = True
            except HomeserverError as exc:
                log.info("a ghost's avatar was not set on %s: %s", target_id, exc)
                # A picture that can never be carried (gone, too big) is noted as done: it is
                # tried again only when the person changes it.
                done = classify(exc.status, exc.errcode) is Verdict.PERMANENT
        if done:
            self.store.set_ghost_avatar(target_id, localpart, wanted)
            self._avatar_retry.pop(key, None)
        else:
            log.info("a ghost's avatar on %s waits %g s before another try", target_id,
                     AVATAR_RETRY_SECONDS)
            self._avatar_retry[key] = trio.current_time() + AVATAR_RETRY_SECONDS
        return False

    def base_account(self, target_id: str, network_id: str, user_id: str) -> tuple[str, str]:
        """The account whose identity gives the person's ghost on `target_id` (see
        core.translate.ghost_for): the earliest linked account not on `target_id`."""
        for net_id, user in self.store.linked_accounts(network_id, user_id):
            if net_id != target_id and net_id in self.networks:
                return net_id, user
        return network_id, user_id

    def ghosts_of(
        self, network_id: str, user_id: str, *, own_only: bool = False
    ) -> list[tuple[str, str]]:
        """(network, localpart) of every ghost that may stand for the person: their own on each
        other network, and the ones their identity links give them (with `own_only`, only those
        derived from this very account)."""
        source = self.networks[network_id]
        linked = self.store.linked_accounts(network_id, user_id)
        found: set[tuple[str, str]] = set()
        try:
            identity = native_identity(user_id, source.identity, source.server_name)
        except InvalidId:
            return []
        own = pseudonym(self.key, network_id, identity)
        for target_id, target in self.networks.items():
            if target_id == network_id:
                continue
            found.add((target_id, ghost_localpart(target, network_id, own)))
            via_links = ghost_for(user_id, source, target, self.networks, self.key, linked)
            mine = self.base_account(target_id, network_id, user_id) == (network_id, user_id)
            if via_links is not None and (mine or not own_only):
                found.add((target_id, via_links))
        return sorted(found)

    async def rename(self, network_id: str, user_id: str) -> tuple[int, list[str]]:
        """Set the display name of the person's registered ghosts again (after a privacy
        change); returns how many changed, and the networks whose homeserver failed (each is
        tried on its own: one silent homeserver does not keep the others' names)."""
        changed, failed = 0, []
        # Their own ghosts only: a ghost shared through an identity link whose earliest
        # account is someone else's is named after that account, not this one.
        for target_id, localpart in self.ghosts_of(network_id, user_id, own_only=True):
            registered, current = self.store.ghost(target_id, localpart)
            if not registered:
                continue
            try:
                name = await self.name(localpart, network_id, user_id)
                if name == current:
                    continue
                ghost = self.networks[target_id].user_id(localpart)
                await self.homeservers[target_id].set_display_name(ghost, name)
            except HomeserverError as exc:
                # The stored name stays the old one: the ghost's next send (ensure) sees the
                # difference and sets the new name then.
                log.info("a ghost was not renamed on %s: %s", target_id, exc)
                failed.append(target_id)
                continue
            self.store.save_ghost(target_id, localpart, network_id, name)
            changed += 1
        return changed, failed

    async def neutralise(
        self, network_id: str, user_id: str
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """Give the person's registered ghosts the neutral fallback name ("forget me"). Returns
        the ghosts that may stand for them and were dealt with, for the store to forget, and
        the networks whose homeserver failed to reset theirs: those stay on record, so that
        a `forget me` said again finds them, and the person is told."""
        source = self.networks[network_id]
        done: list[tuple[str, str]] = []
        failed: list[str] = []
        for target_id, localpart in self.ghosts_of(network_id, user_id, own_only=True):
            registered, _ = self.store.ghost(target_id, localpart)
            if not registered:
                done.append((target_id, localpart))
                continue
            name = f"{source.label} user {localpart[-16:][:4]}"
            ghost = self.networks[target_id].user_id(localpart)
            hs = self.homeservers[target_id]
            # The store forgets which rooms the ghost is in, so it leaves them now: nothing
            # could make it leave later. It comes back if the person speaks again. Left first:
            # Synapse copies a new profile into a member event in every room the user is in,
            # in a background task of its own, which would race with these leaves and put two
            # needless events in each room.
            try:
                for room_id in self.store.ghost_rooms_of(target_id, localpart):
                    try:
                        await hs.leave(room_id, as_user=ghost)
                    except MatrixError as exc:  # not in it any more, say: nothing to undo
                        log.info("a forgotten person's ghost could not leave a room: %s", exc)
                await hs.set_display_name(ghost, name)
                await hs.set_avatar_url(ghost, "")  # their picture goes with their name
            except HomeserverError as exc:
                log.warning("could not reset a forgotten person's ghost on %s: %s", target_id,
                            exc)
                failed.append(target_id)
                continue
            done.append((target_id, localpart))
        return done, sorted(set(failed))
