"""The store's part about people and the rooms they make with commands: management rooms,
privacy settings, identity links and their codes, DM requests, confirmations, and portals made
at run time. Mixed into ``Store``; every method runs on its one connection."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from bridge.core.model import Portal
from bridge.store.cache import Memo, invalidates, memoised


@dataclass(frozen=True)
class DmRequest:
    id: int
    from_network: str
    from_user: str
    to_network: str
    to_user: str
    to_shown: str
    room_id: str | None
    home_room: str | None
    portal_id: str | None
    state: str  # pending | accepted | declined | failed


@dataclass(frozen=True)
class LinkCode:
    from_network: str
    from_user: str
    code_hash: str
    expires_at: float
    tries: int


_DM_COLUMNS = (
    "id, from_network, from_user, to_network, to_user, to_shown, room_id, home_room, portal_id, "
    "state"
)


class PeopleStore:
    conn: sqlite3.Connection
    _memo: Memo

    def _one(self, sql: str, params: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        raise NotImplementedError  # provided by Store

    def transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError  # provided by Store

    def room_enters(self, network: str, room_id: str, at: float | None = None) -> None:
        raise NotImplementedError  # provided by Store

    def room_leaves(self, network: str, room_id: str) -> None:
        raise NotImplementedError  # provided by Store

    # -- management rooms ----------------------------------------------------------------------

    @memoised
    def management_owner(self, network: str, room_id: str) -> str | None:
        row = self._one(
            "SELECT user_id FROM management_rooms WHERE network = ? AND room_id = ?",
            (network, room_id),
        )
        return row[0] if row else None

    def management_room(self, network: str, user_id: str) -> str | None:
        """The person's newest management room on `network`."""
        row = self._one(
            "SELECT room_id FROM management_rooms WHERE network = ? AND user_id = ? "
            "ORDER BY created_at DESC LIMIT 1",
            (network, user_id),
        )
        return row[0] if row else None

    def management_rooms_of(self, network: str, user_id: str) -> list[str]:
        """Every management room of the person on `network`, oldest first."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT room_id FROM management_rooms WHERE network = ? AND user_id = ? "
                "ORDER BY created_at", (network, user_id),
            )
        ]

    def management_rooms(self, network: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT room_id FROM management_rooms WHERE network = ?", (network,)
            )
        ]

    @invalidates
    def add_management_room(self, network: str, room_id: str, user_id: str,
                            since: float | None = None) -> bool:
        """`room_id` is `user_id`'s management room on `network`, its commands read from the
        wall-clock time `since` (the bot's invitation; by default, now). True if it was not
        one before."""
        new = self._one(
            "SELECT 1 FROM management_rooms WHERE network = ? AND room_id = ?", (network, room_id)
        ) is None
        self.conn.execute(
            "INSERT OR REPLACE INTO management_rooms (network, room_id, user_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            (network, room_id, user_id, time.time()),
        )
        if new:  # (the invitation's task run again must not take the commands since as history)
            self.room_enters(network, room_id, since)  # commands said from then on are read
        return new

    @invalidates
    def drop_management_room(self, network: str, room_id: str) -> None:
        self.conn.execute(
            "DELETE FROM management_rooms WHERE network = ? AND room_id = ?", (network, room_id)
        )
        self.room_leaves(network, room_id)

    # -- privacy settings ----------------------------------------------------------------------

    @memoised
    def settings(self, network: str, user_id: str) -> tuple[bool | None, bool | None]:
        """(discoverable, show_identity) as the person set them; None where they did not."""
        row = self._one(
            "SELECT discoverable, show_identity FROM person_settings "
            "WHERE network = ? AND user_id = ?",
            (network, user_id),
        )
        if row is None:
            return None, None
        return tuple(None if v is None else bool(v) for v in row)  # type: ignore[return-value]

    @invalidates
    def set_setting(self, network: str, user_id: str, name: str, value: bool) -> None:
        column = {"discoverable": "discoverable", "show-identity": "show_identity"}[name]
        self.conn.execute(
            "INSERT OR IGNORE INTO person_settings (network, user_id) VALUES (?, ?)",
            (network, user_id),
        )
        self.conn.execute(
            f"UPDATE person_settings SET {column} = ? WHERE network = ? AND user_id = ?",
            (int(value), network, user_id),
        )

    # -- identity links ------------------------------------------------------------------------

    @memoised
    def linked_accounts(self, network: str, user_id: str) -> list[tuple[str, str]]:
        """Every account linked with this one, itself included, the earliest linked first;
        [] when it is linked with none."""
        row = self._one(
            "SELECT group_id FROM identity_links WHERE network = ? AND user_id = ?",
            (network, user_id),
        )
        if row is None:
            return []
        rows = self.conn.execute(
            "SELECT network, user_id FROM identity_links WHERE group_id = ? "
            "ORDER BY linked_at, rowid",
            (row[0],),
        ).fetchall()
        return [(n, u) for n, u in rows]

    @invalidates
    def link_accounts(self, first: tuple[str, str], second: tuple[str, str]) -> None:
        """Put `second` in `first`'s group (made if needed); `second` leaves any other group."""
        if second in self.linked_accounts(*first):
            return  # already together: linking again must not undo it
        now = time.time()
        row = self._one(
            "SELECT group_id FROM identity_links WHERE network = ? AND user_id = ?", first
        )
        group = row[0] if row else str(uuid.uuid4())
        if row is None:
            self.conn.execute(
                "INSERT INTO identity_links (network, user_id, group_id, linked_at) "
                "VALUES (?, ?, ?, ?)",
                (*first, group, now),
            )
        self.unlink_account(*second)
        self.conn.execute(
            "INSERT INTO identity_links (network, user_id, group_id, linked_at) "
            "VALUES (?, ?, ?, ?)",
            (*second, group, now + 1e-6),
        )

    @invalidates
    def unlink_account(self, network: str, user_id: str) -> list[tuple[str, str]]:
        """Take the account out of its group; a group left with one account is dissolved.
        Returns the accounts it was linked with."""
        others = [a for a in self.linked_accounts(network, user_id) if a != (network, user_id)]
        self.conn.execute(
            "DELETE FROM identity_links WHERE network = ? AND user_id = ?", (network, user_id)
        )
        if len(others) == 1:
            self.conn.execute(
                "DELETE FROM identity_links WHERE network = ? AND user_id = ?", others[0]
            )
        return others

    def put_link_code(
        self, to: tuple[str, str], from_: tuple[str, str], code_hash: str, expires_at: float
    ) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO link_codes (to_network, to_user, from_network, from_user, "
            "code_hash, expires_at, tries) VALUES (?, ?, ?, ?, ?, ?, 0)",
            (*to, *from_, code_hash, expires_at),
        )

    def link_codes(self, network: str, user_id: str) -> list[LinkCode]:
        """The codes waiting for this account to confirm them."""
        rows = self.conn.execute(
            "SELECT from_network, from_user, code_hash, expires_at, tries FROM link_codes "
            "WHERE to_network = ? AND to_user = ?",
            (network, user_id),
        ).fetchall()
        return [LinkCode(*row) for row in rows]

    def note_wrong_code(self, network: str, user_id: str, void_after: int) -> int:
        """Count a wrong try against every code for this account; void those at the limit.
        Returns the tries left (0: voided)."""
        self.conn.execute(
            "UPDATE link_codes SET tries = tries + 1 WHERE to_network = ? AND to_user = ?",
            (network, user_id),
        )
        row = self._one(
            "SELECT MAX(tries) FROM link_codes WHERE to_network = ? AND to_user = ?",
            (network, user_id),
        )
        tries = int(row[0]) if row and row[0] is not None else void_after
        if tries >= void_after:
            self.drop_link_codes(network, user_id)
            return 0
        return void_after - tries

    def drop_link_code(self, to: tuple[str, str], from_: tuple[str, str]) -> None:
        """The one code `from_` asked `to` for (its notice never went out)."""
        self.conn.execute(
            "DELETE FROM link_codes WHERE to_network = ? AND to_user = ? AND from_network = ? "
            "AND from_user = ?", (*to, *from_))

    def drop_link_codes(self, network: str, user_id: str) -> None:
        self.conn.execute(
            "DELETE FROM link_codes WHERE to_network = ? AND to_user = ?", (network, user_id)
        )

    # -- confirmations -------------------------------------------------------------------------

    def ask_confirmation(self, network: str, user_id: str, what: str, until: float) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO confirmations (network, user_id, what, expires_at) "
            "VALUES (?, ?, ?, ?)",
            (network, user_id, what, until),
        )

    def take_confirmation(self, network: str, user_id: str, what: str, now: float) -> bool:
        """Whether a confirmation was asked for and is still open; it is used up either way."""
        row = self._one(
            "SELECT expires_at FROM confirmations WHERE network = ? AND user_id = ? AND what = ?",
            (network, user_id, what),
        )
        self.conn.execute(
            "DELETE FROM confirmations WHERE network = ? AND user_id = ? AND what = ?",
            (network, user_id, what),
        )
        return row is not None and row[0] >= now

    # -- DM requests ---------------------------------------------------------------------------

    @invalidates
    def add_dm_request(
        self, from_: tuple[str, str], to: tuple[str, str], to_shown: str
    ) -> int:
        cursor = self.conn.execute(
            "INSERT INTO dm_requests (from_network, from_user, to_network, to_user, to_shown, "
            "state, created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            (*from_, *to, to_shown, time.time()),
        )
        return int(cursor.lastrowid or 0)

    @invalidates
    def update_dm_request(self, request_id: int, **fields: Any) -> None:
        allowed = {"room_id", "home_room", "portal_id", "state"}
        assert set(fields) <= allowed, fields
        for column, value in fields.items():
            self.conn.execute(
                f"UPDATE dm_requests SET {column} = ? WHERE id = ?", (value, request_id)
            )

    def dm_request(self, request_id: int) -> DmRequest | None:
        row = self._one(f"SELECT {_DM_COLUMNS} FROM dm_requests WHERE id = ?", (request_id,))
        return DmRequest(*row) if row else None

    @memoised
    def dm_request_in_room(self, network: str, room_id: str) -> DmRequest | None:
        """The request whose room on the target's network is `room_id`."""
        row = self._one(
            f"SELECT {_DM_COLUMNS} FROM dm_requests WHERE to_network = ? AND room_id = ? "
            "ORDER BY id DESC LIMIT 1",
            (network, room_id),
        )
        return DmRequest(*row) if row else None

    def dm_requests_of(self, network: str, user_id: str) -> list[DmRequest]:
        """Requests this person made or received, the oldest first."""
        rows = self.conn.execute(
            f"SELECT {_DM_COLUMNS} FROM dm_requests WHERE (from_network = ? AND from_user = ?) "
            "OR (to_network = ? AND to_user = ?) ORDER BY id",
            (network, user_id, network, user_id),
        ).fetchall()
        return [DmRequest(*row) for row in rows]

    # -- portals made at run time --------------------------------------------------------------

    @invalidates
    def create_portal(
        self, rooms: dict[str, str], origin: str, creator: str | None, portal_id: str = ""
    ) -> Portal:
        portal_id = portal_id or str(uuid.uuid4())
        self.conn.execute(
            "INSERT INTO portals (portal_id, origin, created_at, creator) VALUES (?, ?, ?, ?)",
            (portal_id, origin, time.time(), creator),
        )
        for network, room_id in rooms.items():
            self.add_portal_room(portal_id, network, room_id)
        return Portal(portal_id, dict(rooms))

    @invalidates
    def add_portal_room(self, portal_id: str, network: str, room_id: str) -> None:
        self.conn.execute(
            "INSERT INTO portal_rooms (network, room_id, portal_id) VALUES (?, ?, ?)",
            (network, room_id, portal_id),
        )
        self.room_enters(network, room_id)

    @invalidates
    def remove_portal_room(self, network: str, room_id: str) -> Portal | None:
        """Take a room out of its portal; a portal left with fewer than two rooms is dissolved.
        Returns the portal as it was before."""
        found = self._one(
            "SELECT portal_id FROM portal_rooms WHERE network = ? AND room_id = ?",
            (network, room_id),
        )
        if found is None:
            return None
        portal_id = found[0]
        rows = self.conn.execute(
            "SELECT network, room_id FROM portal_rooms WHERE portal_id = ?", (portal_id,)
        ).fetchall()
        self.conn.execute(
            "DELETE FROM portal_rooms WHERE network = ? AND room_id = ?", (network, room_id)
        )
        self.room_leaves(network, room_id)
        if len(rows) <= 2:
            self.delete_portal(portal_id)
        return Portal(portal_id, {n: r for n, r in rows})

    @invalidates
    def delete_portal(self, portal_id: str) -> None:
        self.conn.execute(
            "DELETE FROM room_marks WHERE (network, room_id) IN "
            "(SELECT network, room_id FROM portal_rooms WHERE portal_id = ?)", (portal_id,)
        )
        self.conn.execute("DELETE FROM portal_rooms WHERE portal_id = ?", (portal_id,))
        self.conn.execute("DELETE FROM portals WHERE portal_id = ?", (portal_id,))

    def room_in_any_portal(self, room_id: str) -> bool:
        """Whether `room_id` is in a portal under any network (a room federated between two
        bridged homeservers has one id on both)."""
        return self._one("SELECT 1 FROM portal_rooms WHERE room_id = ?", (room_id,)) is not None

    def portal_info(self, portal_id: str) -> tuple[str, str | None] | None:
        """(origin, creator) of a portal."""
        row = self._one("SELECT origin, creator FROM portals WHERE portal_id = ?", (portal_id,))
        return (row[0], row[1]) if row else None

    def portals_made_by(self, user_id: str) -> list[Portal]:
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT portal_id FROM portals WHERE creator = ? ORDER BY rowid", (user_id,)
            )
        ]
        found: list[Portal] = []
        for portal_id in ids:
            rows = self.conn.execute(
                "SELECT network, room_id FROM portal_rooms WHERE portal_id = ?", (portal_id,)
            ).fetchall()
            if rows:
                found.append(Portal(portal_id, {n: r for n, r in rows}))
        return found

    def ghosts_in_room(self, network: str, room_id: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT localpart FROM ghost_rooms WHERE network = ? AND room_id = ?",
                (network, room_id),
            )
        ]

    def ghost_rooms_of(self, network: str, localpart: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT room_id FROM ghost_rooms WHERE network = ? AND localpart = ?",
                (network, localpart),
            )
        ]

    # -- forgetting ----------------------------------------------------------------------------

    @invalidates
    def forget_person(self, network: str, user_id: str, ghosts: Iterable[tuple[str, str]]) -> None:
        """Erase every row about one person: their settings, links, codes, requests, management
        rooms, profile, the ghosts standing for them (network, localpart), and the finished
        outbox rows that name them. Call inside a transaction."""
        me = (network, user_id)
        self.unlink_account(*me)
        statements = [
            ("DELETE FROM person_settings WHERE network = ? AND user_id = ?", me),
            ("DELETE FROM profiles WHERE network = ? AND user_id = ?", me),
            # The marks of their management rooms go with the rooms (as drop_management_room).
            ("DELETE FROM room_marks WHERE network = ? AND room_id IN (SELECT room_id FROM "
             "management_rooms WHERE network = ? AND user_id = ?)", (network, *me)),
            ("DELETE FROM management_rooms WHERE network = ? AND user_id = ?", me),
            ("DELETE FROM confirmations WHERE network = ? AND user_id = ?", me),
            ("DELETE FROM link_codes WHERE (to_network = ? AND to_user = ?) "
             "OR (from_network = ? AND from_user = ?)", me + me),
            ("DELETE FROM dm_requests WHERE from_network = ? AND from_user = ?", me),
            # Requests others made to them stay the requesters' (what they typed, and how it
            # went): deleted, they would vanish from the requester's `status` and say that the
            # number or address was someone's on the bridge. An unanswered one is answered no.
            ("UPDATE dm_requests SET to_user = '', state = CASE state WHEN 'pending' THEN "
             "'failed' ELSE state END WHERE to_network = ? AND to_user = ?", me),
            ("UPDATE portals SET creator = NULL WHERE creator = ?", (user_id,)),
            ("DELETE FROM outbox WHERE state != 'pending' AND src_network = ? "
             "AND json_extract(payload, '$.source.sender') = ?", me),
            ("DELETE FROM outbox WHERE state != 'pending' AND src_network = ? "
             "AND json_extract(payload, '$.person') = ?", me),
            ("UPDATE ghosts SET source_user = NULL WHERE source_network = ? AND source_user = ?",
             me),
        ]
        for sql, params in statements:
            self.conn.execute(sql, params)
        for ghost in ghosts:
            self.conn.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND network = ? "
                "AND json_extract(payload, '$.ghost') = ?",
                ghost,
            )
            self.conn.execute("DELETE FROM ghosts WHERE network = ? AND localpart = ?", ghost)
            self.conn.execute(
                "DELETE FROM ghost_rooms WHERE network = ? AND localpart = ?", ghost
            )
            self.conn.execute(
                "DELETE FROM ghost_removals WHERE network = ? AND localpart = ?", ghost
            )

    def rows_mentioning(self, needles: Iterable[str]) -> Iterator[tuple[str, str]]:
        """(table, row) of every row in which one of `needles` appears: for tests and audits."""
        tables = [
            r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        wanted = [n for n in needles if n]
        for table in tables:
            # `table` comes from sqlite_master, not from input.
            for row in self.conn.execute(f"SELECT * FROM {table}"):
                text = " ".join(str(v) for v in row)
                if any(n in text for n in wanted):
                    yield table, text

    # -- figures -------------------------------------------------------------------------------

    def pending_count(self, network: str, room_id: str) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM outbox WHERE network = ? AND state = 'pending' AND room_id = ?",
            (network, room_id),
        )
        return int(row[0]) if row else 0

    def counts(self) -> dict[str, int]:
        """Row counts of the tables an admin asks about."""
        out: dict[str, int] = {}
        for label, table in (
            ("portals", "portals"), ("portal rooms", "portal_rooms"), ("ghosts", "ghosts"),
            ("management rooms", "management_rooms"), ("identity links", "identity_links"),
            ("DM requests", "dm_requests"), ("relayed events", "event_map"),
        ):
            row = self._one(f"SELECT COUNT(*) FROM {table}")  # fixed table names
            out[label] = int(row[0]) if row else 0
        return out
