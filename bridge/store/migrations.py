"""Numbered schema migrations; ``PRAGMA user_version`` records how far a database has come.

Each migration runs in its own transaction together with the version bump, so a database is
never left half-migrated. Add new steps at the end; never edit a step that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from bridge.store.errors import StoreError


def _v1(db: sqlite_utils.Database) -> None:
    # Events already turned into outbox actions: the dedupe key is the event id, since Synapse
    # reuses transaction ids after a restart (../shared/notes/synapse.md).
    db.table("seen_events").create(
        {"network": str, "event_id": str, "room_id": str, "seen_at": float},
        pk=("network", "event_id"),
    )
    # Transactions answered, as a hint only: the same id with the same body is a retry.
    db.table("transactions").create(
        {"network": str, "txn_id": str, "digest": str, "received_at": float},
        pk=("network", "txn_id"),
    )
    # origin: "config" for [[portals]] entries (the config is authoritative for those), other
    # values for portals made at run time, which a config sync leaves alone.
    db.table("portals").create(
        {"portal_id": str, "origin": str, "created_at": float}, pk="portal_id"
    )
    db.table("portal_rooms").create(
        {"network": str, "room_id": str, "portal_id": str},
        pk=("network", "room_id"),
        foreign_keys=[("portal_id", "portals", "portal_id")],
    )
    db.table("portal_rooms").create_index(["portal_id", "network"], unique=True)
    db.table("ghosts").create(
        {"network": str, "localpart": str, "source_network": str, "display_name": str},
        pk=("network", "localpart"),
        not_null={"source_network"},
    )
    db.table("ghost_rooms").create(
        {"network": str, "localpart": str, "room_id": str}, pk=("network", "localpart", "room_id")
    )
    # Display names of real people as their own network shows them (NULL: they set none).
    db.table("profiles").create(
        {"network": str, "user_id": str, "display_name": str}, pk=("network", "user_id")
    )
    db.table("event_map").create(
        {
            "src_network": str,
            "src_event": str,
            "dst_network": str,
            "src_room": str,
            "dst_room": str,
            "dst_event": str,
            "created_at": float,
        },
        pk=("src_network", "src_event", "dst_network"),
    )
    db.table("event_map").create_index(["dst_network", "dst_event"])
    # The durable queue of actions still to deliver: first in first out per (network, room).
    db.table("outbox").create(
        {
            "id": int,
            "network": str,
            "room_id": str,
            "kind": str,
            # The event this action carries out, for "where did my message get to?".
            "src_network": str,
            "src_event": str,
            "txn_id": str,
            "payload": str,
            "state": str,  # pending | done | failed
            "attempts": int,
            "last_error": str,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"network", "room_id", "kind", "txn_id", "payload", "state"},
        defaults={"state": "pending", "attempts": 0},
    )
    db.table("outbox").create_index(["txn_id", "network"], unique=True)
    db.table("outbox").create_index(["network", "state", "room_id", "id"])
    db.table("outbox").create_index(["src_network", "src_event"])
    # Per portal room, the newest event up to which every event was taken in: reconciliation
    # reads the room's timeline back to here (../shared/design.md, data flow step 6).
    db.table("room_marks").create(
        {"network": str, "room_id": str, "event_id": str, "updated_at": float},
        pk=("network", "room_id"),
    )


def _v2(db: sqlite_utils.Database) -> None:
    """Chat-driven bridging: management rooms, people's settings and links, DM requests."""
    # Who made a portal with a command (NULL for config portals; cleared by "forget me").
    db.table("portals").add_column("creator", str)
    # A person's DM with the bot on their own network, where commands need no prefix.
    db.table("management_rooms").create(
        {"network": str, "room_id": str, "user_id": str, "created_at": float},
        pk=("network", "room_id"),
        not_null={"user_id"},
    )
    db.table("management_rooms").create_index(["network", "user_id"])
    # NULL: the default for the person's identity kind.
    db.table("person_settings").create(
        {"network": str, "user_id": str, "discoverable": int, "show_identity": int},
        pk=("network", "user_id"),
    )
    # Accounts of one person on several networks; `founder` orders them (the earliest first).
    db.table("identity_links").create(
        {"network": str, "user_id": str, "group_id": str, "linked_at": float},
        pk=("network", "user_id"),
        not_null={"group_id"},
    )
    db.table("identity_links").create_index(["group_id"])
    # A pending identity link: only a hash of the code is kept.
    db.table("link_codes").create(
        {"to_network": str, "to_user": str, "from_network": str, "from_user": str,
         "code_hash": str, "expires_at": float, "tries": int},
        pk=("to_network", "to_user", "from_network", "from_user"),
    )
    # Requests for a cross-network DM. `room_id` is the request room on the target's network,
    # `home_room` the requester's side, made once the target accepts.
    db.table("dm_requests").create(
        {"id": int, "from_network": str, "from_user": str, "to_network": str, "to_user": str,
         "to_shown": str, "room_id": str, "home_room": str, "portal_id": str, "state": str,
         "created_at": float},
        pk="id",
        not_null={"from_network", "from_user", "to_network", "to_user", "state"},
    )
    db.table("dm_requests").create_index(["to_network", "room_id"])
    db.table("dm_requests").create_index(["from_network", "from_user"])
    # Steps that ask "are you sure?" ("forget me"): until when the confirmation is accepted.
    db.table("confirmations").create(
        {"network": str, "user_id": str, "what": str, "expires_at": float},
        pk=("network", "user_id", "what"),
    )


def _v3(db: sqlite_utils.Database) -> None:
    """Media, avatars, a ghost's person, and whether a portal mirrors room names and topics."""
    # A file re-uploaded to another network, so a retry or a second message with the same file
    # does not upload it again.
    db.table("media_map").create(
        {"src_network": str, "src_mxc": str, "dst_network": str, "dst_mxc": str,
         "created_at": float},
        pk=("src_network", "src_mxc", "dst_network"),
    )
    # The person's avatar as their own network shows it (an mxc URI there; NULL: none).
    db.table("profiles").add_column("avatar_url", str)
    # Whom a ghost stands for (NULL for ghosts made before v3), so a mention of the ghost can
    # become the real person on their own network; and the source avatar it last got.
    db.table("ghosts").add_column("source_user", str)
    db.table("ghosts").add_column("avatar_source", str)
    # NULL: the bridge's default (bridge.mirror_room_state).
    db.table("portals").add_column("mirror_state", int)


def _v4(db: sqlite_utils.Database) -> None:
    """The outbox's pending rows get an index of their own."""
    # Workers only ever look up pending rows. The index of (network, state, room, id) held every
    # row the outbox keeps (a day of history: a million at scale), and finishing a row moved its
    # entry within it, onto a page of its own. An index of the pending rows alone is a few pages
    # that stay in the cache, and finishing a row takes its entry out: 5-14% of the store's CPU
    # per relayed message (docs/performance.md, item 30). `state` is in it so that the counts
    # (/health, /metrics: every pending row during a backlog) read the index alone.
    db.execute("DROP INDEX IF EXISTS idx_outbox_network_state_room_id_id")
    db.execute(
        "CREATE INDEX outbox_pending ON outbox (network, room_id, id, state) "
        "WHERE state = 'pending'"
    )


def _v5(db: sqlite_utils.Database) -> None:
    """Ghosts a room's moderators removed: not brought back by the bridge."""
    db.table("ghost_removals").create(
        {"network": str, "localpart": str, "room_id": str},
        pk=("network", "localpart", "room_id"),
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4, _v5]
LATEST = len(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    """The schema version `db` is at; refused if this tribridge cannot read it."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > LATEST:
        raise StoreError(
            f"the database is at schema version {version}, newer than this tribridge knows "
            f"({LATEST}): run a newer tribridge or restore a backup"
        )
    return version


def migrate(db: sqlite_utils.Database) -> int:
    """Bring `db` to the latest schema; return the version it was at before."""
    start = schema_version(db)
    for version in range(start + 1, LATEST + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version - 1](db)
            db.execute(f"PRAGMA user_version = {version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return start
