"""Typed functions over the tribridge database.

One connection, used from the trio thread. Writes that belong together go through
``transaction()``: BEGIN IMMEDIATE ... COMMIT, so an inbound transaction's seen-events, profile
updates and outbox rows land together or not at all. synchronous=FULL (the default durability)
means a COMMIT that returned is on disk, so the HTTP 200 that follows it is honest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlite_utils

from bridge.core.actions import Action, from_payload
from bridge.core.model import Portal
from bridge.store.cache import MAX_ENTRIES, Memo, invalidates, memoised
from bridge.store.errors import StoreError
from bridge.store.migrations import migrate, schema_version
from bridge.store.people import PeopleStore

log = logging.getLogger(__name__)

SYNCHRONOUS = {"full": "FULL", "process": "NORMAL"}
# Pages of 2 KiB, not SQLite's 4: a pushed message's commit rewrites about 19 pages, most of them
# in indexes keyed by hashes (a random page each time), so a smaller page cuts the bytes written
# and synced by about 40%, and the copying inside SQLite, for a tree one level deeper at most.
# bench/store.py: 0.79x the store's CPU per push at 100,000 messages (docs/performance.md).
SENDING_KEPT = 50_000  # sends remembered as begun: far more than a lost commit can hold
PAGE_SIZE = 2048
WAL_BYTES = 4 * 1024 * 1024
# Deferred blocks that may wait for one commit: what a crash could take back at most (those
# actions go again, with their transaction ids) and how far the WAL grows meanwhile.
MAX_DEFERRED = 256


@dataclass(frozen=True)
class DeliveryStatus:
    network: str  # the target network
    kind: str
    state: str  # pending | done | failed
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class Compacted:
    """What Store.compact() did: page sizes and file sizes (bytes) before and after."""

    page_before: int
    page_after: int
    bytes_before: int  # the WAL's included
    bytes_after: int


@dataclass(frozen=True)
class OutboxItem:
    id: int
    attempts: int
    action: Action


class _Deferred:
    """Store.deferred()'s block: a savepoint inside the open deferred transaction."""

    __slots__ = ("store",)

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store._open_deferred()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.store._close_deferred(kind is not None)


def _outbox_row(item: OutboxItem | int) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause for one outbox row. Given the item a worker read, it names the row by
    its transaction id as well: a worker may send an action whose row is not committed yet
    (bridge/commits.py), and if that commit fails SQLite hands the same id to the next row
    written, which the late "done" of the first must not touch. The same transaction id is the
    same action, whatever its id."""
    if isinstance(item, int):
        return "WHERE id = ?", (item,)
    return ("WHERE id = ? AND network = ? AND txn_id = ?",
            (item.id, item.action.network, item.action.txn_id))


def _checkpoint_by_bytes(conn: sqlite3.Connection) -> None:
    """SQLite's default checkpoint interval is 1,000 pages, whatever their size: keep the WAL at
    about WAL_BYTES between checkpoints, as with SQLite's own 4-KiB pages."""
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BYTES // page}")


class Store(PeopleStore):
    def __init__(self, path: Path | str, durability: str = "full", *, upgrade: bool = True) -> None:
        """Open (or, with `upgrade`, make) the store at `path`, and bring it to the latest
        schema. Without `upgrade` (the `db` commands) it is opened as it is: never made, never
        migrated; `schema_before` tells its version."""
        try:
            if str(path) != ":memory:":
                where = Path(path)
                # Not made: a typo in bridge.database must not start the bridge on an empty
                # store in a new directory, its portals and event map elsewhere.
                if not where.parent.is_dir():
                    raise StoreError(f"cannot open the database {path}: there is no directory "
                                     f"{where.parent} (check bridge.database)")
                new = not where.exists()
                if new and not upgrade:
                    raise StoreError(f"no database at {path} (check bridge.database)")
                # Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
                os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
                if new:
                    # Worth seeing at a start that was not the first: the path may be wrong.
                    log.info("no database at %s: made a new, empty one (right at the first "
                             "start; otherwise check bridge.database)", path)
            conn = sqlite3.connect(str(path), isolation_level=None)
            # Before WAL mode, which fixes a new file's page size (an existing store keeps its
            # own: changing it takes a VACUUM, see `tribridge db compact`).
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode = WAL")
            _checkpoint_by_bytes(conn)
            conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[durability]}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            # 8 MB of pages (the default is 2): the indexes' upper levels stay in memory when
            # the event map and outbox hold millions of rows (bench/scale.py).
            conn.execute("PRAGMA cache_size = -8192")
            self.db = sqlite_utils.Database(conn)
            self.schema_before = migrate(self.db) if upgrade else schema_version(self.db)
            if not upgrade and self.schema_before == 0:
                conn.close()
                raise StoreError(f"{path} is not a tribridge database")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the database {path}: {exc}") from exc
        self.conn = conn
        self._memo = Memo()  # see bridge/store/cache.py
        self._deferred_open = False  # a write transaction holds deferred writes
        self._deferred_changes = 0  # conn.total_changes when it began
        self._deferred_listeners: list[Callable[[], None]] = []
        self._lost_listeners: list[Callable[[], object]] = []
        self._cancel_listeners: list[Callable[[str, str, int], object]] = []
        self._deferred_writes = 0  # deferred blocks in the open transaction
        self._deferred_depth = 0  # deferred blocks open now (one may hold another)
        # Each deferred transaction is numbered, so that a writer can learn later whether its
        # writes reached the disk (committed) or not (rolled back with the others).
        self._epoch = 0
        # The last failed write (what SQLite said), until a commit gets through: /health
        # reports it (a full disk shows there, not only as pushes answered 500).
        self.write_failure: str | None = None
        self._lost: set[int] = set()
        self._deferred_block = _Deferred(self)
        # Rows from this id on were written by this process, since its last lost commit: a
        # pending one of them that was never tried has provably never been sent. An older
        # pending row may have been, its "done" lost to a crash or a failed commit.
        self._unsent_from = self._next_outbox_id()
        # Transaction ids whose send began in this process, the newest SENDING_KEPT of them,
        # in the order begun: see cancel_pending. An OrderedDict: dropping a plain dict's
        # oldest key, once full, cost 40 us a send (its iterator walks every key deleted
        # before it; docs/performance.md, item 44).
        self._sending: OrderedDict[str, None] = OrderedDict()

    @property
    def memo_epoch(self) -> int:
        """Changes whenever a memoised table may have been written (bridge/store/cache.py)."""
        return self._memo.epoch

    def remembered(self, key: tuple[Any, ...]) -> Any:
        """What `remember` kept under `key` (None if nothing): a fact derived from memoised
        reads, dropped with them at the next write to a memoised table."""
        return self._memo.get(key)

    def remember(self, key: tuple[Any, ...], value: Any) -> None:
        """Keep `value`, derived from memoised reads, until the next write to a memoised table
        (or a rollback). `key` must not look like a memoised read's: start it with a name no
        store method has (one with a space in it)."""
        if len(self._memo) >= MAX_ENTRIES:
            self._memo.clear()
        self._memo[key] = value

    def close(self) -> None:
        self.commit_deferred()
        self.conn.close()

    def backup(self, destination: Path) -> None:
        """A consistent copy of the database, taken online (the daemon may keep running)."""
        if destination.exists():
            raise StoreError(f"{destination} exists; give a new file name")
        try:
            target = sqlite3.connect(str(destination))
            with target:
                self.conn.backup(target)
            target.close()
            destination.chmod(0o600)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"backup to {destination} failed: {exc}") from exc

    def compact(self) -> Compacted:
        """Rewrite the database with VACUUM: free pages (rows pruned) given back to the file
        system, and pages of PAGE_SIZE (a store made before 2-KiB pages keeps 4-KiB ones until
        then). Only with no other connection open: the daemon must be stopped."""
        self.commit_deferred()
        path = self.conn.execute("PRAGMA database_list").fetchone()[2]
        if not path:
            raise StoreError("an in-memory store has nothing to compact")
        before = self.conn.execute("PRAGMA page_size").fetchone()[0]
        size = sum(f.stat().st_size for f in (Path(path), Path(path + "-wal")) if f.exists())
        # Locks taken are kept until the end, so that a daemon started meanwhile waits (and
        # fails after busy_timeout; systemd restarts it) instead of putting the store back
        # into WAL mode between the switch below and the VACUUM, which would then keep the
        # old pages.
        self.conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            self._vacuum(path)
        except BaseException as exc:  # a Ctrl-C in a long VACUUM too: WAL mode comes back
            trouble = self._back_to_wal()
            if trouble and isinstance(exc, StoreError):
                raise StoreError(f"{exc}; and {trouble}") from exc
            raise
        trouble = self._back_to_wal()
        if trouble:
            raise StoreError(f"{path} was compacted, but {trouble}")
        after = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return Compacted(before, after, size, Path(path).stat().st_size)

    def _vacuum(self, path: str) -> None:
        try:
            # VACUUM changes the page size only outside WAL mode, and leaving WAL mode needs
            # the database to itself: this is where a running daemon is found out.
            mode = self.conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot compact {path}: {exc} (stop the daemon first)") from exc
        if mode != "delete":
            raise StoreError(f"cannot compact {path}: it is in use (stop the daemon first)")
        try:
            synchronous = self.conn.execute("PRAGMA synchronous").fetchone()[0]
            self.conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            # Outside WAL mode, durability "process" would let a power cut take the copy.
            self.conn.execute("PRAGMA synchronous = FULL")
            try:
                self.conn.execute("VACUUM")  # all or nothing: a full disk leaves it as it was
            finally:
                self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        except sqlite3.Error as exc:
            raise StoreError(f"could not compact {path}: {exc}") from exc

    def _back_to_wal(self) -> str | None:
        """Normal locking and WAL mode again, after compact(); what went wrong, if anything."""
        self._memo.clear()  # VACUUM may renumber the rowids of tables without a key of their own
        try:
            self.conn.execute("PRAGMA locking_mode = NORMAL")
            # The exclusive lock goes at the next access (WAL mode set in exclusive locking
            # mode could not go back to normal locking).
            self.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            _checkpoint_by_bytes(self.conn)
        except sqlite3.Error as exc:
            mode = str(exc)
        if mode == "wal":
            return None
        # Nothing lost: the daemon's start puts it back into WAL mode.
        return f"it was left out of WAL mode ({mode}); tribridge run puts it back"

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Writes that are on disk when the block ends, or not written at all.

        Deferred writes waiting for their commit (see `deferred`) are committed with them:
        one fsync serves both."""
        if self.conn.in_transaction and not self._deferred_open:
            raise RuntimeError("Store.transaction() does not nest")
        if self._deferred_open:
            with self._savepoint("tx"):
                yield
            self.commit_deferred()
            return
        self.conn.execute("BEGIN IMMEDIATE")
        changes = self.conn.total_changes
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException as exc:
            self._memo.clear()  # it may hold what this transaction wrote and now never was
            if isinstance(exc, sqlite3.OperationalError):
                self.write_failure = str(exc)
            if self.conn.in_transaction:  # a failed COMMIT may leave it open
                self.conn.execute("ROLLBACK")
            raise
        if self.conn.total_changes != changes:  # a COMMIT that wrote nothing proves nothing
            self.write_failure = None

    def deferred(self) -> _Deferred:
        """Writes that land together or not at all, and may wait a moment for their commit:
        the record that an action was delivered, and a pushed transaction whose answer waits
        for that commit (bridge/commits.py). Losing them to a crash only means that actions go
        again with the same transaction ids, which the homeserver recognises. Deferred writes
        are committed by the next `transaction`, by `commit_deferred` (bridge/commits.py calls
        it when the bridge is idle), after MAX_DEFERRED of them, or at close: many writes
        share one fsync. Reads on this connection see them at once.
        A context manager; one object serves every block (its state is the store's), since
        blocks open three times per relayed message: a generator-based one cost 3% of a push."""
        return self._deferred_block

    def _begin_deferred(self) -> None:
        if not self._deferred_open:
            if self.conn.in_transaction:
                raise RuntimeError("Store.deferred() inside Store.transaction()")
            self.conn.execute("BEGIN IMMEDIATE")
            self._deferred_changes = self.conn.total_changes
            self._deferred_open = True
            self._deferred_writes = 0
            self._epoch += 1
            for listener in self._deferred_listeners:
                listener()

    def _open_deferred(self) -> None:
        self._begin_deferred()
        self.conn.execute("SAVEPOINT deferred")
        self._deferred_depth += 1

    def _close_deferred(self, failed: bool) -> None:
        self._deferred_depth -= 1
        if failed:
            self._memo.clear()  # it may hold what the block wrote and now never was
            self.conn.execute("ROLLBACK TO deferred")
            self.conn.execute("RELEASE deferred")
            return
        self.conn.execute("RELEASE deferred")
        self._one_more_deferred()

    def _one_more_deferred(self) -> None:
        self._deferred_writes += 1
        if self._deferred_writes >= MAX_DEFERRED and not self._deferred_depth:
            # Under a load that never leaves the loop idle nobody else would commit them: bound
            # what a crash can take back (and the WAL's growth) by a count instead of a timer.
            try:
                self.commit_deferred()
            except sqlite3.Error as exc:
                # Not this block's failure: its writes are lost with the others, as in a crash
                # (their actions go again; a push waiting on them learns it from
                # deferred_lost and is not acknowledged).
                log.error("could not commit %d deferred writes (%s)", MAX_DEFERRED, exc)

    @property
    def deferred_epoch(self) -> int | None:
        """The number of the deferred transaction now open (None if none is)."""
        return self._epoch if self._deferred_open else None

    @property
    def latest_deferred(self) -> int:
        """The number of the deferred transaction the latest deferred writes went into, open
        or not (0 before any)."""
        return self._epoch

    def deferred_lost(self, epoch: int) -> bool:
        """Whether the deferred transaction numbered `epoch` was rolled back, not committed."""
        return epoch in self._lost

    def commit_deferred(self) -> None:
        if self._deferred_open:
            self._deferred_open = False
            try:
                self.conn.execute("COMMIT")
            except BaseException as exc:
                # A full or failing disk: what waited is lost (its actions go again, with the
                # same transaction ids), and the connection must not stay inside a transaction.
                if isinstance(exc, sqlite3.OperationalError):
                    self.write_failure = str(exc)
                self._lost.add(self._epoch)
                self._memo.clear()
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                with contextlib.suppress(sqlite3.Error):
                    self._unsent_from = self._next_outbox_id()
                for listener in self._lost_listeners:
                    listener()
                raise
            if self.conn.total_changes != self._deferred_changes:
                self.write_failure = None

    def on_deferred(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever deferred writes start waiting for a commit."""
        self._deferred_listeners.append(listener)

    def on_cancel(self, listener: Callable[[str, str, int], object]) -> None:
        """Call `listener(network, room_id, row id)` for each pending action cancelled."""
        self._cancel_listeners.append(listener)

    def on_lost(self, listener: Callable[[], object]) -> None:
        """Call `listener` whenever deferred writes are rolled back by a failed commit: the
        actions they had marked done are pending again, and must be looked for."""
        self._lost_listeners.append(listener)

    @contextmanager
    def _savepoint(self, name: str) -> Iterator[None]:
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._memo.clear()
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            raise
        self.conn.execute(f"RELEASE {name}")

    def _one(self, sql: str, params: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        row = self.conn.execute(sql, tuple(params)).fetchone()
        return tuple(row) if row is not None else None

    # -- inbound dedupe ------------------------------------------------------------------------

    def transaction_seen(self, network: str, txn_id: str, digest: str) -> bool:
        """Whether this exact transaction (same id, same body) was already taken in."""
        row = self._one(
            "SELECT digest FROM transactions WHERE network = ? AND txn_id = ?", (network, txn_id)
        )
        return row is not None and row[0] == digest

    def record_transaction(self, network: str, txn_id: str, digest: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO transactions (network, txn_id, digest, received_at) "
            "VALUES (?, ?, ?, ?)",
            (network, txn_id, digest, time.time()),
        )

    def last_transaction(self, network: str) -> str | None:
        """The id of the transaction last taken in from `network`, across restarts."""
        newest = self.newest_transaction(network)
        return newest[1] if newest else None

    def newest_transaction(self, network: str) -> tuple[int, str] | None:
        """(rowid, transaction id) of the record of the transaction last taken in."""
        # INSERT OR REPLACE gives the newest row the highest rowid, so the table read backwards
        # (NOT INDEXED: through the primary key's index SQLite would fetch all of this
        # network's rows and sort them) stops at this network's newest row: 0.1 ms with 900,000
        # rows, where sorting by received_at took 170 ms at each start. A clock set back cannot
        # fool it either.
        row = self._one(
            "SELECT rowid, txn_id FROM transactions NOT INDEXED WHERE network = ? "
            "ORDER BY rowid DESC LIMIT 1",
            (network,),
        )
        return (row[0], row[1]) if row else None

    def event_seen(self, network: str, event_id: str) -> bool:
        return (
            self._one(
                "SELECT 1 FROM seen_events WHERE network = ? AND event_id = ?", (network, event_id)
            )
            is not None
        )

    def mark_event_seen(self, network: str, event_id: str, room_id: str) -> bool:
        """Note that the event was taken in; False if it had been already (one statement for
        the check and the note: taking in an event costs no SELECT)."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO seen_events (network, event_id, room_id, seen_at) "
            "VALUES (?, ?, ?, ?)",
            (network, event_id, room_id, time.time()),
        )
        return cursor.rowcount > 0

    # -- portals -------------------------------------------------------------------------------

    @memoised
    def portal_for_room(self, network: str, room_id: str) -> Portal | None:
        row = self._one(
            "SELECT portal_id FROM portal_rooms WHERE network = ? AND room_id = ?",
            (network, room_id),
        )
        return self.portal(row[0]) if row else None

    @memoised
    def portal_id_of(self, network: str, room_id: str) -> str | None:
        row = self._one(
            "SELECT portal_id FROM portal_rooms WHERE network = ? AND room_id = ?",
            (network, room_id),
        )
        return row[0] if row else None

    def portal(self, portal_id: str) -> Portal | None:
        rows = self.conn.execute(
            "SELECT network, room_id FROM portal_rooms WHERE portal_id = ?", (portal_id,)
        ).fetchall()
        if not rows:
            return None
        mirror = self._one("SELECT mirror_state FROM portals WHERE portal_id = ?", (portal_id,))
        mirror_state = None if mirror is None or mirror[0] is None else bool(mirror[0])
        return Portal(portal_id, {n: r for n, r in rows}, mirror_state)

    @invalidates
    def set_mirror_state(self, portal_id: str, mirror: bool | None) -> None:
        self.conn.execute(
            "UPDATE portals SET mirror_state = ? WHERE portal_id = ?",
            (None if mirror is None else int(mirror), portal_id),
        )

    def portals(self) -> list[Portal]:
        ids = [r[0] for r in self.conn.execute("SELECT portal_id FROM portals ORDER BY rowid")]
        return [p for p in (self.portal(i) for i in ids) if p is not None]

    @invalidates
    def sync_config_portals(self, declared: Iterable[Mapping[str, str]]) -> list[Portal]:
        """Make the store's config portals exactly the config's ``[[portals]]``.

        A declared portal keeps the id of the stored portal that already holds one of its rooms
        (so adding a room keeps the id); otherwise it gets a new random id. Config portals no
        longer declared, and rooms no longer listed, stop being bridged.
        """
        result: list[Portal] = []
        with self.transaction():
            before = set(self.conn.execute("SELECT network, room_id FROM portal_rooms"))
            kept: set[str] = set()
            for rooms in declared:
                portal_id = None
                for net, room in sorted(rooms.items()):
                    found = self._one(
                        "SELECT portal_id FROM portal_rooms WHERE network = ? AND room_id = ?",
                        (net, room),
                    )
                    if found and found[0] not in kept:
                        portal_id = found[0]
                        break
                if portal_id is None:
                    portal_id = str(uuid.uuid4())
                    self.conn.execute(
                        "INSERT INTO portals (portal_id, origin, created_at) VALUES (?, ?, ?)",
                        (portal_id, "config", time.time()),
                    )
                kept.add(portal_id)
                self.conn.execute("DELETE FROM portal_rooms WHERE portal_id = ?", (portal_id,))
                for net, room in rooms.items():
                    self.conn.execute(
                        "DELETE FROM portal_rooms WHERE network = ? AND room_id = ?", (net, room)
                    )
                    self.conn.execute(
                        "INSERT INTO portal_rooms (network, room_id, portal_id) VALUES (?, ?, ?)",
                        (net, room, portal_id),
                    )
                result.append(Portal(portal_id, dict(rooms)))
            configured = self.conn.execute("SELECT portal_id FROM portals WHERE origin = 'config'")
            stale = [row[0] for row in configured if row[0] not in kept]
            for portal_id in stale:
                self.conn.execute("DELETE FROM portal_rooms WHERE portal_id = ?", (portal_id,))
                self.conn.execute("DELETE FROM portals WHERE portal_id = ?", (portal_id,))
            # Rooms no longer bridged lose their marks; rooms new to the portals have none from
            # an earlier time they were (their time of entry comes when the bot is in them:
            # rooms_joined, at the start). Rooms that stay, even in another portal, keep theirs.
            after = set(self.conn.execute("SELECT network, room_id FROM portal_rooms"))
            for net, room in before ^ after:
                self.room_leaves(net, room)
        return result

    # -- profiles and ghosts -------------------------------------------------------------------

    @memoised
    def profile(self, network: str, user_id: str) -> tuple[bool, str | None]:
        """(known, display name) of a real person as their own network shows them."""
        row = self._one(
            "SELECT display_name FROM profiles WHERE network = ? AND user_id = ?",
            (network, user_id),
        )
        return (row is not None, row[0] if row else None)

    @memoised
    def avatar(self, network: str, user_id: str) -> str | None:
        """The person's avatar (an mxc URI on their own network), if the bridge saw one."""
        row = self._one(
            "SELECT avatar_url FROM profiles WHERE network = ? AND user_id = ?",
            (network, user_id),
        )
        return row[0] if row else None

    @invalidates
    def set_profile(
        self, network: str, user_id: str, display_name: str | None, avatar_url: str | None = None
    ) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO profiles (network, user_id, display_name, avatar_url) "
            "VALUES (?, ?, ?, ?)",
            (network, user_id, display_name, avatar_url),
        )

    @memoised
    def ghost(self, network: str, localpart: str) -> tuple[bool, str | None]:
        """(registered, display name last set) of a ghost."""
        row = self._one(
            "SELECT display_name FROM ghosts WHERE network = ? AND localpart = ?",
            (network, localpart),
        )
        return (row is not None, row[0] if row else None)

    @invalidates
    def save_ghost(
        self,
        network: str,
        localpart: str,
        source_network: str,
        display_name: str | None,
        source_user: str | None = None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO ghosts (network, localpart, source_network, display_name, source_user) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (network, localpart) DO UPDATE SET "
            "source_network = excluded.source_network, display_name = excluded.display_name, "
            "source_user = COALESCE(excluded.source_user, source_user)",
            (network, localpart, source_network, display_name, source_user),
        )

    @memoised
    def ghost_owner(self, network: str, localpart: str) -> tuple[str, str] | None:
        """(network, user id) of the person a ghost stands for, if the store knows."""
        row = self._one(
            "SELECT source_network, source_user FROM ghosts WHERE network = ? AND localpart = ?",
            (network, localpart),
        )
        return (row[0], row[1]) if row and row[1] else None

    @memoised
    def ghost_avatar(self, network: str, localpart: str) -> str | None:
        """The source avatar (mxc on the person's network) the ghost last got."""
        row = self._one(
            "SELECT avatar_source FROM ghosts WHERE network = ? AND localpart = ?",
            (network, localpart),
        )
        return row[0] if row else None

    @invalidates
    def set_ghost_avatar(self, network: str, localpart: str, source_mxc: str | None) -> None:
        self.conn.execute(
            "UPDATE ghosts SET avatar_source = ? WHERE network = ? AND localpart = ?",
            (source_mxc, network, localpart),
        )

    # -- media ---------------------------------------------------------------------------------

    def media_copy(self, src_network: str, src_mxc: str, dst_network: str) -> str | None:
        """The mxc URI on `dst_network` of a file already carried there."""
        row = self._one(
            "SELECT dst_mxc FROM media_map WHERE src_network = ? AND src_mxc = ? "
            "AND dst_network = ?",
            (src_network, src_mxc, dst_network),
        )
        return row[0] if row else None

    def save_media_copy(self, src_network: str, src_mxc: str, dst_network: str,
                        dst_mxc: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO media_map (src_network, src_mxc, dst_network, dst_mxc, "
            "created_at) VALUES (?, ?, ?, ?, ?)",
            (src_network, src_mxc, dst_network, dst_mxc, time.time()),
        )

    @memoised
    def ghost_in_room(self, network: str, localpart: str, room_id: str) -> bool:
        return (
            self._one(
                "SELECT 1 FROM ghost_rooms WHERE network = ? AND localpart = ? AND room_id = ?",
                (network, localpart, room_id),
            )
            is not None
        )

    @invalidates
    def set_ghost_in_room(self, network: str, localpart: str, room_id: str, inside: bool) -> None:
        if inside:
            sql = "INSERT OR IGNORE INTO ghost_rooms (network, localpart, room_id) VALUES (?, ?, ?)"
        else:
            sql = "DELETE FROM ghost_rooms WHERE network = ? AND localpart = ? AND room_id = ?"
        self.conn.execute(sql, (network, localpart, room_id))

    def ghost_removed(self, network: str, localpart: str, room_id: str) -> bool:
        """Whether a moderator of the room removed the ghost (and nobody invited it since)."""
        return self._one(
            "SELECT 1 FROM ghost_removals WHERE network = ? AND localpart = ? AND room_id = ?",
            (network, localpart, room_id),
        ) is not None

    @invalidates
    def set_ghost_removed(self, network: str, localpart: str, room_id: str,
                          removed: bool) -> None:
        if removed:
            self.conn.execute("INSERT OR IGNORE INTO ghost_removals (network, localpart, room_id) "
                              "VALUES (?, ?, ?)", (network, localpart, room_id))
            self.conn.execute("DELETE FROM ghost_rooms WHERE network = ? AND localpart = ? "
                              "AND room_id = ?", (network, localpart, room_id))
        else:
            self.conn.execute("DELETE FROM ghost_removals WHERE network = ? AND localpart = ? "
                              "AND room_id = ?", (network, localpart, room_id))

    # -- outbox and event map ------------------------------------------------------------------

    def enqueue(self, actions: Sequence[Action]) -> list[OutboxItem] | None:
        """Queue actions (inside the caller's transaction); an action already queued is kept.
        The rows written, as `pending_actions` would read them back, so that a worker can be
        handed them instead of reading them; None if some action was queued before (which
        rows were written is then not known)."""
        if not actions:
            return []
        now = time.time()
        cursor = self.conn.executemany(
            "INSERT OR IGNORE INTO outbox (network, room_id, kind, src_network, src_event, txn_id, "
            "payload, state, attempts, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
            [
                (a.network, a.room_id, a.kind, *a.origin, a.txn_id, json.dumps(a.to_payload()),
                 now, now)
                for a in actions
            ],
        )
        if cursor.rowcount != len(actions):
            return None
        # executemany tells no row ids, but SQLite gives each new row the largest rowid in the
        # table plus one, and nothing else writes on this connection meanwhile: the rows are
        # the last len() ids. (Only once a row holds the largest possible rowid does SQLite pick
        # at random: then the first row is not where this says, and nothing is handed.)
        last: int = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        first = last - len(actions) + 1
        check = self.conn.execute("SELECT txn_id FROM outbox WHERE id = ?", (first,)).fetchone()
        if check is None or check[0] != actions[0].txn_id:
            return None
        return [OutboxItem(id=first + n, attempts=0, action=a) for n, a in enumerate(actions)]

    def pending_rooms(self, network: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT room_id FROM outbox WHERE network = ? AND state = 'pending'",
                (network,),
            )
        ]

    def pending_actions(self, network: str, room_id: str, limit: int = 50) -> list[OutboxItem]:
        """The oldest pending actions for one room, in the order they were queued."""
        rows = self.conn.execute(
            "SELECT id, kind, txn_id, payload, attempts FROM outbox "
            "WHERE network = ? AND state = 'pending' AND room_id = ? ORDER BY id LIMIT ?",
            (network, room_id, limit),
        ).fetchall()
        return [
            OutboxItem(
                id=row_id,
                attempts=attempts,
                action=from_payload(kind, network, room_id, txn, json.loads(payload)),
            )
            for row_id, kind, txn, payload, attempts in rows
        ]

    def cancel_pending(
        self, src_network: str, src_event: str, why: str
    ) -> list[tuple[int, str, str]]:
        """Mark the still-pending sends of one source event done without sending them; (row id,
        target network, room) of each. Whoever holds those rows in memory is told too
        (`on_cancel`): they must not be sent."""
        # Only what provably never left: written by this process since its last lost commit,
        # never tried, and no send of it (by transaction id) begun. Another may have reached
        # the homeserver with its record lost (a crash; a failed commit, after which the
        # homeserver pushes it again as a new row): it goes out again, idempotently, and the
        # redaction after it finds it.
        candidates = self.conn.execute(
            "SELECT id, txn_id FROM outbox WHERE src_network = ? AND src_event = ? "
            "AND state = 'pending' AND kind = 'message' AND id >= ? AND attempts = 0",
            (src_network, src_event, self._unsent_from),
        ).fetchall()
        rows = []
        for row_id, txn in candidates:
            if txn in self._sending:
                continue
            rows.extend(self.conn.execute(
                "UPDATE outbox SET state = 'done', last_error = ?, updated_at = ? WHERE id = ? "
                "RETURNING id, network, room_id", (why, time.time(), row_id),
            ).fetchall())
        for row_id, network, room_id in rows:
            for listener in self._cancel_listeners:
                listener(network, room_id, row_id)
        return rows

    def sending(self, txn_id: str) -> None:
        """A send with this transaction id is about to leave (see cancel_pending)."""
        sending = self._sending
        sending[txn_id] = None
        if len(sending) > SENDING_KEPT:
            sending.popitem(last=False)

    def _next_outbox_id(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM outbox").fetchone()
        return int(row[0])

    def replace_action(self, item: OutboxItem, action: Action) -> bool:
        """Put `action` in place of `item`'s (the same row, kind and transaction id): what is
        sent from now on, after a crash too. False if the row is not there."""
        where, key = _outbox_row(item)
        cursor = self.conn.execute(
            "UPDATE outbox SET payload = ?, updated_at = ? " + where,
            (json.dumps(action.to_payload()), time.time(), *key),
        )
        return cursor.rowcount == 1

    def note_attempt(self, item: OutboxItem | int, error: str) -> None:
        where, key = _outbox_row(item)
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, updated_at = ? " + where,
            (error[:500], time.time(), *key),
        )

    def finish(
        self, item: OutboxItem | int, state: str, error: str | None = None, *,
        scrub: bool = False,
    ) -> bool:
        """Mark an action done or failed; `scrub` empties its payload (a command's text may
        hold a phone number: it is not kept once carried out). False if the row is not there
        any more: its push's commit failed, and the homeserver will push it again."""
        assert state in ("done", "failed")
        where, key = _outbox_row(item)
        cursor = self.conn.execute(
            "UPDATE outbox SET state = ?, last_error = ?, updated_at = ?"
            + (", payload = '{}'" if scrub else "") + " " + where,
            (state, error[:500] if error else None, time.time(), *key),
        )
        return cursor.rowcount > 0

    def delivered(self, item: OutboxItem, src_network: str, src_room: str, src_event: str,
                  dst_event: str) -> None:
        """`item`, a relayed event, went out as `dst_event`: its copy mapped and its action
        done, deferred as a `deferred` block's writes are, but without the block's savepoint
        (two statements of four, once per send; item 44). None is needed: the copy is mapped
        first, so a failure between the two leaves the copy mapped, which is true, and the
        action not marked done by this call (the caller then marks it as after any failure
        of its own; a send tried again has the same transaction id, and the homeserver
        answers with the same event)."""
        action = item.action
        self._begin_deferred()
        try:
            self.map_event(src_network, src_room, src_event, action.network, action.room_id,
                           dst_event)
            self.finish(item, "done")
        except BaseException:
            self._memo.clear()  # as after a failed block
            raise
        self._one_more_deferred()

    def map_event(
        self,
        src_network: str,
        src_room: str,
        src_event: str,
        dst_network: str,
        dst_room: str,
        dst_event: str,
    ) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO event_map (src_network, src_event, dst_network, src_room, "
            "dst_room, dst_event, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (src_network, src_event, dst_network, src_room, dst_room, dst_event, time.time()),
        )

    def mapped_event(self, src_network: str, src_event: str, dst_network: str) -> str | None:
        row = self._one(
            "SELECT dst_event FROM event_map WHERE src_network = ? AND src_event = ? "
            "AND dst_network = ?",
            (src_network, src_event, dst_network),
        )
        return row[0] if row else None

    def counterpart(self, network: str, event_id: str, target: str) -> str | None:
        """The id on `target` of the event that is `event_id` on `network`: its relayed copy, or,
        if `event_id` is itself a copy of an event from `target`, that original."""
        copy = self.mapped_event(network, event_id, target)
        if copy is not None:
            return copy
        row = self._one(
            "SELECT src_network, src_event FROM event_map WHERE dst_network = ? AND dst_event = ?",
            (network, event_id),
        )
        if row is None:
            return None
        if row[0] == target:
            return str(row[1])
        return self.mapped_event(row[0], row[1], target)  # a copy of a third network's event

    def delivery_status(self, src_network: str, src_event: str) -> list[DeliveryStatus]:
        """Where the actions for one source event got to, one row per action."""
        rows = self.conn.execute(
            "SELECT network, kind, state, attempts, last_error FROM outbox "
            "WHERE src_network = ? AND src_event = ? ORDER BY id",
            (src_network, src_event),
        ).fetchall()
        return [DeliveryStatus(*row) for row in rows]

    def outbox_depth(self) -> dict[str, int]:
        """Pending actions per target network."""
        rows = self.conn.execute(
            "SELECT network, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY network"
        )
        return {network: count for network, count in rows}

    def room_enters(self, network: str, room_id: str, at: float | None = None) -> None:
        """`room_id` begins to be watched (a portal room, a management room): it has no mark
        yet, and its first read takes in what was said from now on (or from the wall-clock
        time `at`: never later than now) (Reconciler), even if the bridge stops before that
        read. A mark left from an earlier time it was watched goes: read back to, it would
        replay what was said while it was not."""
        now = time.time()
        self.conn.execute(
            "INSERT OR REPLACE INTO room_marks (network, room_id, event_id, updated_at) "
            "VALUES (?, ?, NULL, ?)",
            (network, room_id, now if at is None else min(at, now)),
        )

    def rooms_joined(self, network: str, joins: Iterable[tuple[str, float]], *,
                     invited: bool = False) -> None:
        """The bot joined these rooms (room, the wall-clock time just before it asked to): those
        of them that are portal rooms with neither a mark nor a time of entry (new in the
        config) are watched from then. With `invited` (the bot was not in them: it joins at
        an invitation), their marks go too: one set by reading a world-readable room before
        the bot was in it would relay what was said there before it joined."""
        self.conn.executemany(
            f"INSERT OR {'REPLACE' if invited else 'IGNORE'} INTO room_marks "
            "(network, room_id, event_id, updated_at) "
            "SELECT ?1, ?2, NULL, ?3 WHERE EXISTS "
            "(SELECT 1 FROM portal_rooms WHERE network = ?1 AND room_id = ?2)",
            ((network, room_id, at) for room_id, at in joins),
        )

    def room_leaves(self, network: str, room_id: str) -> None:
        """`room_id` is not watched any more: its mark (or time of entry) goes with it."""
        self.conn.execute(
            "DELETE FROM room_marks WHERE network = ? AND room_id = ?", (network, room_id)
        )

    def room_position(self, network: str, room_id: str) -> tuple[str | None, float | None]:
        """Where a read of `room_id` stops, from one row: its mark, or, before it has one,
        the time it began to be watched (each None when it has none)."""
        row = self._one(
            "SELECT event_id, updated_at FROM room_marks WHERE network = ? AND room_id = ?",
            (network, room_id),
        )
        if row is None:
            return None, None
        return (str(row[0]), None) if row[0] is not None else (None, float(row[1]))

    def set_room_mark(self, network: str, room_id: str, event_id: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO room_marks (network, room_id, event_id, updated_at) "
            "VALUES (?, ?, ?, ?)",
            (network, room_id, event_id, time.time()),
        )
