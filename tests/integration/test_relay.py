"""People on three real homeservers talk in one portal through the daemon."""

from __future__ import annotations

import re
import secrets
from typing import Any

import pytest
import trio

from bridge.demo import has_body
from bridge.localnet.people import Person

from .conftest import Cast, Daemon

pytestmark = pytest.mark.synapse


def bodies_from(events: list[dict[str, Any]], sender_prefix: str) -> list[str]:
    return [
        e["content"].get("body")
        for e in events
        if e.get("type") == "m.room.message" and e["sender"].startswith(sender_prefix)
    ]


async def three_way(cast: Cast, daemon: Daemon, names: tuple[str | None, ...] = (None,) * 3,
                    ) -> tuple[dict[str, Person], dict[str, str]]:
    people, rooms = {}, {}
    for net_id, name in zip(("wa", "ig", "fbm"), names, strict=True):
        people[net_id] = await cast.person(net_id, name)
        rooms[net_id] = await cast.room(net_id, people[net_id])
    await daemon.start([rooms])
    return people, rooms


async def test_every_direction_with_translated_names(cast: Cast, daemon: Daemon) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    for net_id, person in people.items():
        await person.send_text(rooms[net_id], f"hello from {net_id}")
    labels = {"wa": "WhatsApp", "ig": "Instagram", "fbm": "Messenger"}
    names = {"wa": "Alice", "ig": "Bob", "fbm": "Carol"}
    for net_id, person in people.items():
        for src in people:
            if src == net_id:
                continue
            events = await person.wait_for(rooms[net_id], has_body(f"hello from {src}"),
                                           what=f"{src}'s message")
            (event,) = [e for e in events if e["content"].get("body") == f"hello from {src}"]
            # Sent by a ghost on the reader's own network, named after the source network.
            assert re.fullmatch(rf"@_tb_{src}_[a-z2-7]{{16}}:{net_id}\.localhost", event["sender"])
            members = await person.members(rooms[net_id])
            assert members[event["sender"]] == f"{names[src]} ({labels[src]})"


async def test_no_phone_number_or_email_crosses(cast: Cast, daemon: Daemon) -> None:
    # Nobody set a display name: Synapse then shows the localpart, i.e. the number and the email.
    people, rooms = await three_way(cast, daemon)
    phone = people["wa"].user_id[1:].split(":")[0]
    email_localpart = people["fbm"].user_id[1:].split(":")[0]
    email = email_localpart.replace("=40", "@")
    await people["wa"].send_text(rooms["wa"], "from the phone user")
    await people["fbm"].send_text(rooms["fbm"], "from the email user")
    for reader in ("ig",):
        await people[reader].wait_for(rooms[reader], has_body("from the phone user"))
        await people[reader].wait_for(rooms[reader], has_body("from the email user"))
        members = await people[reader].members(rooms[reader])
        shown = " ".join(f"{uid} {name}" for uid, name in members.items())
        assert phone not in shown and phone.lstrip("+") not in shown
        assert email not in shown and email_localpart not in shown
        assert re.search(r"WhatsApp user [a-z2-7]{4}", shown)
        assert re.search(r"Messenger user [a-z2-7]{4}", shown)
    await people["fbm"].wait_for(rooms["fbm"], has_body("from the phone user"))
    fbm_view = " ".join(f"{u} {n}" for u, n in (await people["fbm"].members(rooms["fbm"])).items())
    assert phone.lstrip("+") not in fbm_view
    # Nor does it reach the daemon's log at INFO, and no token ever does.
    log = daemon.log()
    assert phone.lstrip("+") not in log and email not in log and email_localpart not in log
    for token in [*daemon.net.as_tokens.values(), *daemon.net.hs_tokens.values()]:
        assert token not in log


async def test_nothing_is_echoed_back(cast: Cast, daemon: Daemon) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await people["wa"].send_text(rooms["wa"], "one")
    await people["ig"].send_text(rooms["ig"], "two")
    for net_id in ("wa", "ig", "fbm"):
        await people[net_id].wait_for(
            rooms[net_id], lambda evs: has_body("one")(evs) and has_body("two")(evs)
        )
    # A marker sent last: once it is everywhere, any echo of "one"/"two" would be there too.
    await people["fbm"].send_text(rooms["fbm"], "marker")
    for net_id in ("wa", "ig"):
        await people[net_id].wait_for(rooms[net_id], has_body("marker"))
    for net_id, person in people.items():
        texts = [body for _, body in await person.texts(rooms[net_id])]
        assert texts.count("one") == 1 and texts.count("two") == 1, (net_id, texts)


async def test_twenty_quick_messages_arrive_in_order(cast: Cast, daemon: Daemon) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    sent = [f"message {i:02d}" for i in range(20)]
    for text in sent:
        await people["wa"].send_text(rooms["wa"], text)
    for net_id in ("ig", "fbm"):
        events = await people[net_id].wait_for(rooms[net_id], has_body(sent[-1]), within=30)
        assert bodies_from(events, "@_tb_wa_") == sent


def pushed_text(sender: Person, room_id: str, text: str) -> dict[str, Any]:
    """A message by `sender`, as its homeserver would push it (the test pushes it itself)."""
    return {
        "type": "m.room.message",
        "event_id": f"$fake-{secrets.token_hex(8)}",
        "room_id": room_id,
        "sender": sender.user_id,
        "content": {"msgtype": "m.text", "body": text},
        "origin_server_ts": 1,
    }


async def test_a_transaction_pushed_twice_relays_once(cast: Cast, daemon: Daemon) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    text = f"pushed twice {secrets.token_hex(3)}"
    event = pushed_text(people["wa"], rooms["wa"], text)
    for _ in range(3):
        assert (await daemon.push("wa", "777", {"events": [event]})).status_code == 200
    # The same event in another transaction id, as after a Synapse restart.
    assert (await daemon.push("wa", "1", {"events": [event]})).status_code == 200
    await people["wa"].send_text(rooms["wa"], "after the pushes")
    for net_id in ("ig", "fbm"):
        events = await people[net_id].wait_for(rooms[net_id], has_body("after the pushes"))
        assert bodies_from(events, "@_tb_wa_").count(text) == 1


@pytest.mark.alone  # a promise in time: the sends are answered within pacing.MOST
async def test_a_push_is_answered_once_the_other_networks_took_its_message(
    cast: Cast, daemon: Daemon
) -> None:
    # Pacing (bridge/pacing.py): Synapse hears back only once ig and fbm have the message, so
    # that what its users say meanwhile comes to the bridge in one transaction.
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    # Alice's ghosts made and in the rooms first: the wait is then for one send each.
    await people["wa"].send_text(rooms["wa"], "warming up")
    for net_id in ("ig", "fbm"):
        await people[net_id].wait_for(rooms[net_id], has_body("warming up"))
    text = f"answered after {secrets.token_hex(3)}"
    event = pushed_text(people["wa"], rooms["wa"], text)
    assert (await daemon.push("wa", "778", {"events": [event]})).status_code == 200
    for net_id in ("ig", "fbm"):  # read at once, not waited for
        texts = [body for _, body in await people[net_id].texts(rooms[net_id])]
        assert text in texts, (net_id, texts)


async def test_bad_tokens_and_bad_json_are_refused_and_relaying_goes_on(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    forged = {
        "events": [{
            "type": "m.room.message", "event_id": "$forged", "room_id": rooms["wa"],
            "sender": people["wa"].user_id, "content": {"msgtype": "m.text", "body": "forged"},
        }]
    }
    wrong = await daemon.push("wa", "f1", forged, token="not-the-hs-token-at-all")
    assert wrong.status_code == 403 and wrong.json()["errcode"] == "M_FORBIDDEN"
    missing = await daemon.push("wa", "f2", forged, token="")
    assert missing.status_code == 401
    # Another network's as_token is no hs_token either.
    as_token = daemon.net.as_tokens["wa"]
    assert (await daemon.push("wa", "f3", forged, token=as_token)).status_code == 403
    bad = await daemon.push("wa", "f4", None, raw=b"{not json")
    assert bad.status_code == 400 and bad.json()["errcode"] == "M_NOT_JSON"
    await people["wa"].send_text(rooms["wa"], "still relaying")
    for net_id in ("ig", "fbm"):
        events = await people[net_id].wait_for(rooms[net_id], has_body("still relaying"))
        assert "forged" not in bodies_from(events, "@_tb_wa_")


async def test_a_restart_keeps_the_same_ghosts(cast: Cast, daemon: Daemon) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await people["wa"].send_text(rooms["wa"], "before restart")
    events = await people["ig"].wait_for(rooms["ig"], has_body("before restart"))
    (ghost,) = {e["sender"] for e in events if e["sender"].startswith("@_tb_wa_")}
    assert await daemon.stop() == 0
    assert "STOPPING=1" in daemon.notices
    await daemon.start()
    await people["wa"].send_text(rooms["wa"], "after restart")
    events = await people["ig"].wait_for(rooms["ig"], has_body("after restart"))
    assert {e["sender"] for e in events if e["sender"].startswith("@_tb_wa_")} == {ghost}
    assert bodies_from(events, "@_tb_wa_") == ["before restart", "after restart"]


async def test_messages_sent_while_the_daemon_is_down_arrive_after_start(
    cast: Cast, daemon: Daemon
) -> None:
    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await people["wa"].send_text(rooms["wa"], "while up")
    await people["ig"].wait_for(rooms["ig"], has_body("while up"))
    assert await daemon.stop() == 0
    await people["wa"].send_text(rooms["wa"], "while down")
    await daemon.start()  # the start-up ping makes Synapse push its backlog at once
    for net_id in ("ig", "fbm"):
        events = await people[net_id].wait_for(rooms[net_id], has_body("while down"), within=30)
        assert bodies_from(events, "@_tb_wa_") == ["while up", "while down"]


async def test_a_room_the_bot_cannot_join_is_reported_and_the_rest_works(
    cast: Cast, daemon: Daemon
) -> None:
    alice = await cast.person("wa", "Alice")
    bob = await cast.person("ig", "Bob")
    good = {"wa": await cast.room("wa", alice), "ig": await cast.room("ig", bob)}
    closed = await bob.create_room("no bot here")  # the bot is never invited
    await daemon.start([good, {"wa": await cast.room("wa", alice, "other"), "ig": closed}])
    assert f"cannot join portal room {closed}" in daemon.log()
    await alice.send_text(good["wa"], "the good portal works")
    await bob.wait_for(good["ig"], has_body("the good portal works"))


async def test_the_bot_joins_a_portal_room_when_invited_after_start(
    cast: Cast, daemon: Daemon
) -> None:
    alice, bob = await cast.person("wa", "Alice"), await cast.person("ig", "Bob")
    wa_room = await cast.room("wa", alice)
    ig_room = await bob.create_room("invite later")  # the bot is not invited yet
    await daemon.start([{"wa": wa_room, "ig": ig_room}])
    assert f"cannot join portal room {ig_room}" in daemon.log()
    await bob.call("POST", f"/rooms/{ig_room}/invite", {"user_id": "@tribridge:ig.localhost"})
    await alice.send_text(wa_room, "now the bot is in")
    await bob.wait_for(ig_room, has_body("now the bot is in"))
    await bob.send_text(ig_room, "and back")
    await alice.wait_for(wa_room, has_body("and back"))


async def test_health_and_metrics_of_a_running_bridge(cast: Cast, daemon: Daemon) -> None:
    import httpx

    people, rooms = await three_way(cast, daemon, ("Alice", "Bob", "Carol"))
    await people["wa"].send_text(rooms["wa"], "counted")
    await people["ig"].wait_for(rooms["ig"], has_body("counted"))
    await people["fbm"].wait_for(rooms["fbm"], has_body("counted"))
    base = f"http://127.0.0.1:{daemon.net.bridge_port}"
    async with httpx.AsyncClient(trust_env=False) as http:
        health = await http.get(base + "/health")
        metrics = (await http.get(base + "/metrics")).text
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert set(health.json()["networks"]) == {"wa", "ig", "fbm"}
    assert 'tribridge_events_received_total{network="wa"}' in metrics
    for net in ("ig", "fbm"):
        name = f'tribridge_events_relayed_total{{kind="message",network="{net}"}}'
        line = next(x for x in metrics.splitlines() if x.startswith(name))
        assert float(line.split()[-1]) >= 1
    phone = people["wa"].user_id[1:].split(":")[0]
    assert phone not in metrics and "!" not in metrics.replace("!=", "")  # no ids in labels
    # Served to anyone, so they take no body; and a push without the token is refused from its
    # head, before the 12 MB it announces (nobody may make the bridge hold them).
    async with httpx.AsyncClient(trust_env=False) as http:
        refused = await http.request("GET", base + "/health", content=b"x" * 1000)
    assert refused.status_code == 413, refused.text
    stream = await trio.open_tcp_stream("127.0.0.1", daemon.net.bridge_port)
    async with stream:
        await stream.send_all(b"PUT /_matrix/app/v1/transactions/1 HTTP/1.1\r\nHost: x\r\n"
                              b"Authorization: Bearer not-a-token-0123456789\r\n"
                              b"Content-Length: 13000000\r\n\r\n")
        with trio.fail_after(5):
            answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:60]
