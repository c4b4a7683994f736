"""The store's part about people (bridge/store/people.py): management rooms, settings, identity
links and codes, confirmations, DM requests, portals made with commands, forgetting a person,
and the v1 -> v2 migration that brought them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from bridge.core.actions import BotTask, SendMessage, txn_id
from bridge.core.model import EventRef, Portal
from bridge.store import DmRequest, LinkCode, Store
from bridge.store.migrations import LATEST, _v1

ALICE = ("wa", "@+15551234567:wa.localhost")
BOB = ("ig", "@bob:ig.localhost")
CAROL = ("fbm", "@carol=40example.com:fbm.localhost")
DAVE = ("wa", "@+15559876543:wa.localhost")


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(":memory:")
    yield s
    s.close()


# --- management rooms -----------------------------------------------------------------------


def test_a_management_room_has_an_owner(store: Store) -> None:
    store.add_management_room("wa", "!m1:wa.localhost", ALICE[1])
    assert store.management_owner("wa", "!m1:wa.localhost") == ALICE[1]
    assert store.management_room("wa", ALICE[1]) == "!m1:wa.localhost"
    assert store.management_owner("ig", "!m1:wa.localhost") is None  # rooms are per network
    assert store.management_room("ig", ALICE[1]) is None
    assert store.management_room("wa", DAVE[1]) is None


def test_dropping_a_management_room_forgets_it(store: Store) -> None:
    store.add_management_room("wa", "!m1:wa.localhost", ALICE[1])
    store.add_management_room("wa", "!m2:wa.localhost", ALICE[1])
    store.drop_management_room("wa", "!m2:wa.localhost")
    assert store.management_owner("wa", "!m2:wa.localhost") is None
    assert store.management_room("wa", ALICE[1]) == "!m1:wa.localhost"
    store.drop_management_room("wa", "!m1:wa.localhost")
    assert store.management_room("wa", ALICE[1]) is None


# --- privacy settings -----------------------------------------------------------------------


def test_settings_default_to_none_until_set(store: Store) -> None:
    assert store.settings(*ALICE) == (None, None)
    store.set_setting(*ALICE, "discoverable", True)
    assert store.settings(*ALICE) == (True, None)
    store.set_setting(*ALICE, "show-identity", False)
    assert store.settings(*ALICE) == (True, False)
    store.set_setting(*ALICE, "discoverable", False)
    assert store.settings(*ALICE) == (False, False)
    assert store.settings(*DAVE) == (None, None)


# --- identity links -------------------------------------------------------------------------


def test_linked_accounts_are_listed_earliest_first_from_any_member(store: Store) -> None:
    assert store.linked_accounts(*ALICE) == []
    store.link_accounts(ALICE, BOB)
    store.link_accounts(BOB, CAROL)
    for member in (ALICE, BOB, CAROL):
        assert store.linked_accounts(*member) == [ALICE, BOB, CAROL]
    assert store.linked_accounts(*DAVE) == []


def test_unlinking_one_of_two_dissolves_the_group(store: Store) -> None:
    store.link_accounts(ALICE, BOB)
    assert store.unlink_account(*BOB) == [ALICE]
    assert store.linked_accounts(*ALICE) == []
    assert store.linked_accounts(*BOB) == []


def test_unlinking_one_of_three_keeps_the_other_two(store: Store) -> None:
    store.link_accounts(ALICE, BOB)
    store.link_accounts(ALICE, CAROL)
    assert store.unlink_account(*BOB) == [ALICE, CAROL]
    assert store.linked_accounts(*ALICE) == [ALICE, CAROL]
    assert store.linked_accounts(*BOB) == []
    assert store.unlink_account(*DAVE) == []


def test_an_account_linked_elsewhere_moves_to_the_new_group(store: Store) -> None:
    store.link_accounts(ALICE, BOB)
    store.link_accounts(CAROL, BOB)
    assert store.linked_accounts(*BOB) == [CAROL, BOB]
    assert store.linked_accounts(*ALICE) == []  # left alone: its group is dissolved


@pytest.mark.parametrize(
    ("again_first", "again_second"), [(ALICE, BOB), (BOB, ALICE)], ids=["same", "reversed"]
)
def test_linking_an_already_linked_pair_again_keeps_them_linked(
    store: Store, again_first: tuple[str, str], again_second: tuple[str, str]
) -> None:
    # Both sides can ask to link (each gets a code); confirming the second code, or confirming
    # after a repeated request, links the pair again.
    store.link_accounts(ALICE, BOB)
    store.link_accounts(again_first, again_second)
    assert store.linked_accounts(*ALICE) == [ALICE, BOB]
    assert store.linked_accounts(*BOB) == [ALICE, BOB]


# --- link codes -----------------------------------------------------------------------------


def test_link_codes_wait_for_the_account_they_were_sent_to(store: Store) -> None:
    store.put_link_code(BOB, ALICE, "hash-a", 1000.0)
    assert store.link_codes(*BOB) == [LinkCode(ALICE[0], ALICE[1], "hash-a", 1000.0, 0)]
    assert store.link_codes(*ALICE) == []
    store.put_link_code(BOB, ALICE, "hash-b", 2000.0)  # asked again: the new code replaces it
    assert store.link_codes(*BOB) == [LinkCode(ALICE[0], ALICE[1], "hash-b", 2000.0, 0)]
    store.drop_link_codes(*BOB)
    assert store.link_codes(*BOB) == []


def test_a_code_whose_notice_failed_is_dropped_alone(store: Store) -> None:
    store.put_link_code(BOB, ALICE, "hash-a", 1000.0)
    store.put_link_code(BOB, CAROL, "hash-c", 1000.0)
    store.drop_link_code(BOB, ALICE)
    assert store.link_codes(*BOB) == [LinkCode(CAROL[0], CAROL[1], "hash-c", 1000.0, 0)]


def test_five_wrong_codes_void_every_code_for_the_account(store: Store) -> None:
    store.put_link_code(BOB, ALICE, "hash-a", 1000.0)
    store.put_link_code(BOB, CAROL, "hash-c", 1000.0)
    store.put_link_code(DAVE, ALICE, "hash-d", 1000.0)
    assert [store.note_wrong_code(*BOB, 5) for _ in range(4)] == [4, 3, 2, 1]
    assert {code.tries for code in store.link_codes(*BOB)} == {4}
    assert store.note_wrong_code(*BOB, 5) == 0
    assert store.link_codes(*BOB) == []
    assert [c.code_hash for c in store.link_codes(*DAVE)] == ["hash-d"]  # someone else's stays


def test_a_wrong_code_with_no_code_waiting_leaves_no_tries(store: Store) -> None:
    assert store.note_wrong_code(*BOB, 5) == 0


# --- confirmations --------------------------------------------------------------------------


def test_a_confirmation_is_taken_once(store: Store) -> None:
    now = time.time()
    store.ask_confirmation(*ALICE, "forget me", now + 60)
    assert store.take_confirmation(*DAVE, "forget me", now) is False
    assert store.take_confirmation(*ALICE, "something else", now) is False
    assert store.take_confirmation(*ALICE, "forget me", now) is True
    assert store.take_confirmation(*ALICE, "forget me", now) is False


def test_an_expired_confirmation_is_refused_and_used_up(store: Store) -> None:
    store.ask_confirmation(*ALICE, "forget me", 100.0)
    assert store.take_confirmation(*ALICE, "forget me", 100.5) is False
    store.ask_confirmation(*ALICE, "forget me", 100.0)
    assert store.take_confirmation(*ALICE, "forget me", 100.0) is True  # the last moment counts


# --- DM requests ----------------------------------------------------------------------------


def test_dm_requests_are_added_updated_and_found(store: Store) -> None:
    first = store.add_dm_request(ALICE, BOB, "bob")
    assert store.dm_request(first) == DmRequest(
        first, *ALICE, *BOB, "bob", None, None, None, "pending"
    )
    store.update_dm_request(first, room_id="!req:ig.localhost", state="accepted")
    store.update_dm_request(first, portal_id="p1", home_room="!home:wa.localhost")
    expected = DmRequest(first, *ALICE, *BOB, "bob", "!req:ig.localhost", "!home:wa.localhost",
                         "p1", "accepted")
    assert store.dm_request(first) == expected
    assert store.dm_request_in_room("ig", "!req:ig.localhost") == expected
    assert store.dm_request_in_room("wa", "!req:ig.localhost") is None
    assert store.dm_request(first + 100) is None

    second = store.add_dm_request(CAROL, ALICE, "+15551234567")
    assert second > first
    assert [r.id for r in store.dm_requests_of(*ALICE)] == [first, second]
    assert [r.id for r in store.dm_requests_of(*BOB)] == [first]
    assert [r.id for r in store.dm_requests_of(*CAROL)] == [second]
    assert store.dm_requests_of(*DAVE) == []


def test_the_newest_request_in_a_room_is_found(store: Store) -> None:
    old = store.add_dm_request(ALICE, BOB, "bob")
    new = store.add_dm_request(DAVE, BOB, "bob")
    for request in (old, new):
        store.update_dm_request(request, room_id="!req:ig.localhost")
    found = store.dm_request_in_room("ig", "!req:ig.localhost")
    assert found is not None and found.id == new


# --- portals made at run time ---------------------------------------------------------------


def test_a_portal_made_by_a_command(store: Store) -> None:
    rooms = {"wa": "!a:wa.localhost", "ig": "!b:ig.localhost"}
    portal = store.create_portal(rooms, "command", ALICE[1], portal_id="p1")
    assert portal == Portal("p1", rooms)
    assert store.portal("p1") == portal
    assert store.portal_for_room("ig", "!b:ig.localhost") == portal
    assert store.portal_info("p1") == ("command", ALICE[1])
    assert store.portals_made_by(ALICE[1]) == [portal]
    assert store.portals_made_by(BOB[1]) == []
    random_id = store.create_portal({"fbm": "!c:fbm.localhost"}, "dm", None)
    assert random_id.portal_id not in ("", "p1")


def test_removing_a_room_from_a_three_room_portal_keeps_the_portal(store: Store) -> None:
    store.create_portal({"wa": "!a:wa.localhost", "ig": "!b:ig.localhost"}, "command", None, "p1")
    store.add_portal_room("p1", "fbm", "!c:fbm.localhost")
    before = store.remove_portal_room("fbm", "!c:fbm.localhost")
    assert before == Portal(
        "p1", {"wa": "!a:wa.localhost", "ig": "!b:ig.localhost", "fbm": "!c:fbm.localhost"}
    )
    assert store.portal("p1") == Portal("p1", {"wa": "!a:wa.localhost", "ig": "!b:ig.localhost"})
    assert store.portal_for_room("fbm", "!c:fbm.localhost") is None


def test_removing_a_room_from_a_two_room_portal_dissolves_it(store: Store) -> None:
    store.create_portal({"wa": "!a:wa.localhost", "ig": "!b:ig.localhost"}, "command", None, "p1")
    before = store.remove_portal_room("wa", "!a:wa.localhost")
    assert before == Portal("p1", {"wa": "!a:wa.localhost", "ig": "!b:ig.localhost"})
    assert store.portal("p1") is None
    assert store.portal_for_room("ig", "!b:ig.localhost") is None
    assert store.portal_info("p1") is None
    assert store.portals() == []
    assert store.remove_portal_room("wa", "!a:wa.localhost") is None


def test_a_room_cannot_be_in_two_portals(store: Store) -> None:
    store.create_portal({"wa": "!a:wa.localhost", "ig": "!b:ig.localhost"}, "command", None, "p1")
    store.create_portal({"fbm": "!c:fbm.localhost"}, "command", None, "p2")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: portal_rooms"):
        store.add_portal_room("p2", "wa", "!a:wa.localhost")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: portal_rooms"):
        store.add_portal_room("p1", "wa", "!other:wa.localhost")  # one room per network


# --- forgetting a person --------------------------------------------------------------------


def sent_by(person: tuple[str, str], event: str, to: str, ghost: str) -> SendMessage:
    return SendMessage(
        network=to,
        room_id=f"!portal:{to}.localhost",
        ghost=ghost,
        source=EventRef(person[0], f"!portal:{person[0]}.localhost", event, person[1]),
        content={"msgtype": "m.text", "body": "hello"},
        txn_id=txn_id(person[0], event, to, "message"),
    )


def test_forget_person_leaves_no_row_about_them_and_keeps_everyone_elses(store: Store) -> None:
    alice_ghost, bob_ghost = "_tb_wa_aaaaaaaaaaaaaaaa", "_tb_ig_bbbbbbbbbbbbbbbb"
    with store.transaction():
        for person, room in ((ALICE, "!ma:wa.localhost"), (BOB, "!mb:ig.localhost")):
            store.add_management_room(person[0], room, person[1])
            store.set_setting(*person, "discoverable", True)
            store.set_profile(*person, "Someone")
            store.ask_confirmation(*person, "forget me", time.time() + 60)
        store.link_accounts(ALICE, BOB)
        store.link_accounts(ALICE, CAROL)
        store.put_link_code(DAVE, ALICE, "h1", time.time() + 600)
        store.put_link_code(ALICE, DAVE, "h2", time.time() + 600)
        store.put_link_code(CAROL, BOB, "h3", time.time() + 600)
        store.add_dm_request(ALICE, BOB, "bob")
        store.add_dm_request(DAVE, ALICE, "+15551234567")
        store.add_dm_request(BOB, CAROL, "carol@example.com")
        store.create_portal({"wa": "!a:wa.localhost", "ig": "!a:ig.localhost"}, "command",
                            ALICE[1], "pa")
        store.create_portal({"wa": "!b:wa.localhost", "ig": "!b:ig.localhost"}, "command",
                            BOB[1], "pb")
        store.save_ghost("ig", alice_ghost, "wa", "Alice (+15551234567)")
        store.set_ghost_in_room("ig", alice_ghost, "!a:ig.localhost", True)
        store.save_ghost("wa", bob_ghost, "ig", "Bob")
        store.set_ghost_in_room("wa", bob_ghost, "!b:wa.localhost", True)
        store.enqueue([sent_by(ALICE, "$a1", "ig", alice_ghost),
                       sent_by(BOB, "$b1", "wa", bob_ghost)])
    for network in ("ig", "wa"):
        for item in store.pending_actions(network, f"!portal:{network}.localhost"):
            store.finish(item.id, "done")
    assert list(store.rows_mentioning([ALICE[1]]))  # there was something to forget

    with store.transaction():
        store.forget_person(*ALICE, ghosts=[("ig", alice_ghost)])

    assert list(store.rows_mentioning([ALICE[1], alice_ghost])) == []
    # Her number stays only where Dave typed it, in his request, which no longer names her
    # account and reads "no answer" like any unanswered one: deleted, it would have vanished
    # from his `status`, telling him the number was someone's on the bridge.
    assert [table for table, _ in store.rows_mentioning(["+15551234567"])] == ["dm_requests"]
    [dave_asked] = store.dm_requests_of(*DAVE)
    assert (dave_asked.to_user, dave_asked.to_shown, dave_asked.state) == (
        "", "+15551234567", "failed")
    assert store.settings(*ALICE) == (None, None)
    assert store.linked_accounts(*ALICE) == []
    assert store.portal_info("pa") == ("command", None)  # the portal stays, without its maker
    assert store.room_position(ALICE[0], "!ma:wa.localhost")[1] is None  # nor their room's time
    # Everyone else's rows stay.
    assert store.room_position(BOB[0], "!mb:ig.localhost")[1] is not None
    assert store.settings(*BOB) == (True, None)
    assert store.profile(*BOB) == (True, "Someone")
    assert store.management_room(*BOB) == "!mb:ig.localhost"
    assert store.take_confirmation(*BOB, "forget me", time.time()) is True
    assert store.linked_accounts(*BOB) == [BOB, CAROL]
    assert [c.code_hash for c in store.link_codes(*CAROL)] == ["h3"]
    assert [(r.from_user, r.to_user) for r in store.dm_requests_of(*BOB)] == [(BOB[1], CAROL[1])]
    assert store.portal_info("pb") == ("command", BOB[1])
    assert store.ghost("wa", bob_ghost) == (True, "Bob")
    assert store.ghost_in_room("wa", bob_ghost, "!b:wa.localhost")
    assert [s.state for s in store.delivery_status("ig", "$b1")] == ["done"]
    assert store.delivery_status("wa", "$a1") == []


def test_finish_with_scrub_empties_a_command_payload(store: Store) -> None:
    def task(event: str, text: str) -> BotTask:
        return BotTask("wa", "!ma:wa.localhost", "command", {"sender": ALICE[1], "text": text},
                       txn_id("wa", event, "wa", "bot"), event)

    store.enqueue([task("$c1", "dm wa:+15559876543"), task("$c2", "dm wa:+15550001111")])
    first, second = store.pending_actions("wa", "!ma:wa.localhost")
    assert isinstance(first.action, BotTask)
    assert first.action.data["text"] == "dm wa:+15559876543"
    store.finish(first.id, "done", scrub=True)
    store.finish(second.id, "failed", "homeserver said no")
    assert list(store.rows_mentioning(["+15559876543"])) == []
    assert len(list(store.rows_mentioning(["+15550001111"]))) == 1  # not scrubbed: kept
    assert [(s.state, s.last_error) for s in store.delivery_status("wa", "$c1")] == [
        ("done", None)
    ]
    assert store.pending_actions("wa", "!ma:wa.localhost") == []


# --- migration ------------------------------------------------------------------------------


def test_a_v1_database_upgrades_to_the_latest_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite_utils.Database(path)
    _v1(db)
    db.execute("PRAGMA user_version = 1")
    db["portals"].insert({"portal_id": "p1", "origin": "config", "created_at": 1.0})
    db["portal_rooms"].insert_all([
        {"network": "wa", "room_id": "!a:wa.localhost", "portal_id": "p1"},
        {"network": "ig", "room_id": "!a:ig.localhost", "portal_id": "p1"},
    ])
    db["profiles"].insert({"network": "wa", "user_id": ALICE[1], "display_name": "Alice"})
    db["seen_events"].insert(
        {"network": "wa", "event_id": "$e1", "room_id": "!a:wa.localhost", "seen_at": 1.0}
    )
    db.conn.commit()
    db.conn.close()

    store = Store(path)
    try:
        assert store.schema_before == 1
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert store.portal("p1") == Portal(
            "p1", {"wa": "!a:wa.localhost", "ig": "!a:ig.localhost"}
        )
        assert store.portal_info("p1") == ("config", None)
        assert store.profile(*ALICE) == (True, "Alice")
        assert store.event_seen("wa", "$e1")
        # The new tables work.
        store.add_management_room("wa", "!m:wa.localhost", ALICE[1])
        store.set_setting(*ALICE, "show-identity", True)
        store.link_accounts(ALICE, BOB)
        assert store.management_room(*ALICE) == "!m:wa.localhost"
        assert store.settings(*ALICE) == (None, True)
        assert store.linked_accounts(*BOB) == [ALICE, BOB]
    finally:
        store.close()
    again = Store(path)
    assert again.schema_before == LATEST
    assert again.management_room(*ALICE) == "!m:wa.localhost"
    again.close()
