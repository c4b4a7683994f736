"""The appservice endpoints (bridge/matrix/appservice.py) as a homeserver sees them.

The real server on a loopback port, a real Store in a temporary SQLite file and a real Inbound; a
homeserver is played by httpx. What a test checks is what the homeserver gets back and what lands
in the outbox for the delivery workers.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from bridge.config import Config, parse_config
from bridge.core.actions import SendMessage
from bridge.core.ghosts import derive_key, ghost_localpart, parse_ghost_localpart, pseudonym
from bridge.core.ids import Identity
from bridge.http.server import Limits, serve
from bridge.inbound import Inbound
from bridge.matrix.appservice import Appservice
from bridge.store import Store

SECRET = "correct horse battery staple, but longer than 32 bytes"
TOKENS = {  # network: (as_token, hs_token)
    "wa": ("wa-as-7f3c9a1e5b2d4c6e8a0f", "wa-hs-2b8e4d6f0a1c3e5b7d9f"),
    "ig": ("ig-as-9d1b3f5a7c0e2d4b6f8a", "ig-hs-4c6a8e0b2d4f6a8c0e1b"),
    "fbm": ("fbm-as-1e3a5c7e9b0d2f4a6c8e", "fbm-hs-6f8b0d2a4c6e8b0d2f4a"),
}
CONFIG: dict[str, Any] = {
    "bridge": {"listen": "127.0.0.1:29330", "secret": SECRET},
    "networks": {
        "wa": {
            "label": "WhatsApp",
            "homeserver": "http://127.0.0.1:8008",
            "server_name": "wa.localhost",
            "as_token": TOKENS["wa"][0],
            "hs_token": TOKENS["wa"][1],
            "identity": "phone",
        },
        "ig": {
            "label": "Instagram",
            "homeserver": "http://127.0.0.1:8009",
            "server_name": "ig.localhost",
            "as_token": TOKENS["ig"][0],
            "hs_token": TOKENS["ig"][1],
            "identity": "handle",
        },
        "fbm": {
            "label": "Messenger",
            "homeserver": "http://127.0.0.1:8010",
            "server_name": "fbm.localhost",
            "as_token": TOKENS["fbm"][0],
            "hs_token": TOKENS["fbm"][1],
            "identity": "email",
        },
    },
}
ROOMS = {"wa": "!a:wa.localhost", "ig": "!b:ig.localhost", "fbm": "!c:fbm.localhost"}
PHONE = "+15551234567"
WA_USER = f"@{PHONE}:wa.localhost"
IG_USER = "@alice:ig.localhost"
TXN_PATH = "/_matrix/app/v1/transactions/{}"


def text_event(
    event_id: str = "$hello:wa.localhost",
    sender: str = WA_USER,
    room_id: str = ROOMS["wa"],
    body: str = "hello from WhatsApp",
) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "event_id": event_id,
        "room_id": room_id,
        "sender": sender,
        "origin_server_ts": 1_700_000_000_000,
        "content": {"msgtype": "m.text", "body": body},
    }


def hs(network: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[network][1]}"}


@dataclass
class Bridge:
    client: httpx.AsyncClient
    store: Store
    config: Config
    woken: list[str]

    async def push(
        self, txn: str, events: list[Any], network: str = "wa", **kwargs: Any
    ) -> httpx.Response:
        kwargs.setdefault("headers", hs(network))
        return await self.client.put(TXN_PATH.format(txn), json={"events": events}, **kwargs)

    def outbox(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """Every outbox row as (network, room, kind, payload), oldest first."""
        rows = self.store.conn.execute(
            "SELECT network, room_id, kind, payload FROM outbox ORDER BY id"
        ).fetchall()
        return [(n, r, k, json.loads(p)) for n, r, k, p in rows]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "t.db")
    s.sync_config_portals([ROOMS])
    yield s
    s.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(CONFIG, tmp_path / "config.toml")


@pytest.fixture
async def bridge(nursery: trio.Nursery, store: Store, config: Config) -> AsyncIterator[Bridge]:
    woken: list[str] = []
    networks = {net_id: net.network for net_id, net in config.networks.items()}
    inbound = Inbound(store, networks, derive_key(config.bridge.secret),
                      wake=lambda network, rooms: woken.append(network))
    app = Appservice(config.networks, inbound, store)
    listeners = await nursery.start(functools.partial(serve, admit=app.admit), "127.0.0.1", 0,
                                    app.handle, Limits())
    port = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
        yield Bridge(client, store, config, woken)


def ghost_of(config: Config, target: str, source: str, identity: Identity) -> str:
    key = derive_key(config.bridge.secret)
    return ghost_localpart(
        config.networks[target].network, source, pseudonym(key, source, identity)
    )


# -- transactions ----------------------------------------------------------------------------------


async def test_a_text_message_is_queued_for_the_other_networks(bridge: Bridge) -> None:
    reply = await bridge.push("1", [text_event()])
    assert reply.status_code == 200
    assert reply.json() == {}
    store = bridge.store
    assert store.pending_rooms("wa") == []
    assert store.pending_rooms("ig") == [ROOMS["ig"]]
    assert store.pending_rooms("fbm") == [ROOMS["fbm"]]
    ghosts = set()
    for target in ("ig", "fbm"):
        [item] = store.pending_actions(target, ROOMS[target])
        action = item.action
        assert isinstance(action, SendMessage)
        assert action.content == {"msgtype": "m.text", "body": "hello from WhatsApp"}
        assert action.source.event_id == "$hello:wa.localhost"
        assert action.source.network == "wa"
        ghosts.add(action.ghost)
    # The same person has the same ghost localpart on every other network.
    assert ghosts == {ghost_of(bridge.config, "ig", "wa", Identity("phone", PHONE))}
    assert sorted(bridge.woken) == ["fbm", "ig"]


async def test_the_same_transaction_pushed_100_times_is_queued_once(bridge: Bridge) -> None:
    for _ in range(100):
        reply = await bridge.push("42", [text_event()])
        assert reply.status_code == 200
        assert reply.json() == {}
    assert [(n, r) for n, r, _, _ in bridge.outbox()] == [
        ("fbm", ROOMS["fbm"]),
        ("ig", ROOMS["ig"]),
    ]


async def test_the_same_event_under_a_new_transaction_id_is_queued_once(bridge: Bridge) -> None:
    for txn in ("7", "8", "1", "99999"):
        assert (await bridge.push(txn, [text_event()])).status_code == 200
    assert len(bridge.outbox()) == 2


async def test_a_reused_transaction_id_with_new_events_is_queued(bridge: Bridge) -> None:
    # Synapse restarts its txn ids at 1: the id is only a hint, the events decide.
    assert (await bridge.push("1", [text_event("$first:wa.localhost", body="one")])).is_success
    assert (await bridge.push("1", [text_event("$second:wa.localhost", body="two")])).is_success
    bodies = [p["content"]["body"] for n, _, _, p in bridge.outbox() if n == "ig"]
    assert bodies == ["one", "two"]


async def test_events_are_queued_in_the_order_they_came(bridge: Bridge) -> None:
    events = [text_event(f"$m{i}:wa.localhost", body=f"message {i}") for i in range(5)]
    assert (await bridge.push("1", events)).is_success
    for target in ("ig", "fbm"):
        items = bridge.store.pending_actions(target, ROOMS[target])
        assert [i.action.content["body"] for i in items if isinstance(i.action, SendMessage)] == [
            f"message {i}" for i in range(5)
        ]


async def test_without_a_token_the_push_is_401_and_nothing_is_queued(bridge: Bridge) -> None:
    reply = await bridge.push("1", [text_event()], headers={})
    assert reply.status_code == 401
    assert reply.json()["errcode"] == "M_UNAUTHORIZED"
    for authorization in ("Bearer", "Basic d2E6aHM=", TOKENS["wa"][1]):  # no bearer token
        other = await bridge.push("2", [text_event()], headers={"Authorization": authorization})
        assert other.status_code == 401
    assert bridge.outbox() == []
    assert bridge.woken == []


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-the-token-at-all-0123456789",
        f"Bearer {TOKENS['wa'][0]}",  # the as_token is ours to send, not the homeserver's
        f"Bearer {TOKENS['wa'][1]}x",
        f"Bearer {TOKENS['wa'][1][:-1]}",
    ],
)
async def test_a_wrong_token_is_403_and_nothing_is_queued(
    bridge: Bridge, authorization: str
) -> None:
    reply = await bridge.push("1", [text_event()], headers={"Authorization": authorization})
    assert reply.status_code == 403
    assert reply.json()["errcode"] == "M_FORBIDDEN"
    assert bridge.outbox() == []
    assert bridge.woken == []
    # The refused push did not mark the transaction as taken in: the real one still counts.
    assert (await bridge.push("1", [text_event()])).status_code == 200
    assert len(bridge.outbox()) == 2


async def test_refused_tokens_are_logged_now_and_then_without_the_token(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    # A homeserver with a stale registration retries in vain: the admin must hear of it,
    # once a minute, not once a push.
    wrong = "Bearer stale-token-from-an-old-registration"
    for txn in range(5):
        reply = await bridge.push(str(txn), [text_event()], headers={"Authorization": wrong})
        assert reply.status_code == 403
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "bridge.matrix.appservice"]
    assert len(warnings) == 1
    assert "generate-registration" in warnings[0].getMessage()
    assert "stale-token" not in caplog.text


async def raw_head(bridge: Bridge, head: str) -> bytes:
    """Send a request's head alone (the body it announces never follows) and return what the
    server answers before it closes the connection."""
    port = bridge.client.base_url.port
    assert port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head.encode())
        got = b""
        with trio.fail_after(5):  # answered at once, not after a body that never comes
            while chunk := await stream.receive_some(65536):
                got += chunk
    return got


@pytest.mark.parametrize("authorization", ["", "Authorization: Bearer wrong-token-0123456789\r\n"])
async def test_a_push_without_the_token_is_refused_before_its_body(
    bridge: Bridge, authorization: str
) -> None:
    # Nobody without a token may make the bridge hold a body of megabytes (4,096 connections
    # of 12 MiB each would be 50 GB), nor get a 100 Continue.
    got = await raw_head(bridge, f"PUT {TXN_PATH.format(1)} HTTP/1.1\r\nHost: x\r\n"
                                 f"{authorization}Content-Length: 13000000\r\n"
                                 "Expect: 100-continue\r\n\r\n")
    status = 403 if authorization else 401
    assert got.startswith(f"HTTP/1.1 {status} ".encode()), got[:80]
    assert b"100 Continue" not in got
    assert bridge.outbox() == []
    # The server is still there for the homeserver.
    assert (await bridge.push("1", [text_event()])).status_code == 200


async def test_refusals_without_a_body_keep_the_connection_and_head_gets_no_body(
    bridge: Bridge
) -> None:
    got = await raw_head(bridge, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
                                 f"PUT {TXN_PATH.format(1)} HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Length: 0\r\n\r\n"
                                 "HEAD /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = got.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"404", b"401", b"404"], got
    assert answers[-1].endswith(b"\r\n\r\n")  # the HEAD's answer: a head, no body


async def test_an_unknown_path_is_refused_before_its_body(bridge: Bridge) -> None:
    got = await raw_head(bridge, "PUT /_matrix/app/v1/elsewhere HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Length: 13000000\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 404 "), got[:80]


async def test_the_token_may_come_as_the_access_token_query_parameter(bridge: Bridge) -> None:
    reply = await bridge.push(
        "1", [text_event()], headers={}, params={"access_token": TOKENS["wa"][1]}
    )
    assert reply.status_code == 200
    assert len(bridge.outbox()) == 2
    wrong = await bridge.push(
        "2", [text_event("$other:wa.localhost")], headers={}, params={"access_token": "nope"}
    )
    assert wrong.status_code == 403
    assert len(bridge.outbox()) == 2


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe\x00{", b'{"events": [}'])
async def test_a_body_that_is_not_json_is_400_not_json(bridge: Bridge, body: bytes) -> None:
    reply = await bridge.client.put(TXN_PATH.format("1"), content=body, headers=hs("wa"))
    assert reply.status_code == 400
    assert reply.json()["errcode"] == "M_NOT_JSON"
    assert bridge.outbox() == []


@pytest.mark.parametrize(
    "body",
    [
        [text_event()],
        "events",
        42,
        None,
        {"events": {"0": text_event()}},
        {"events": "not a list"},
        {"events": None},
    ],
)
async def test_a_body_of_the_wrong_shape_is_400_bad_json(bridge: Bridge, body: Any) -> None:
    content = json.dumps(body).encode()
    reply = await bridge.client.put(TXN_PATH.format("1"), content=content, headers=hs("wa"))
    assert reply.status_code == 400
    assert reply.json()["errcode"] == "M_BAD_JSON"
    assert bridge.outbox() == []
    # A refused body does not make the transaction id count as taken in.
    assert (await bridge.push("1", [text_event()])).status_code == 200
    assert len(bridge.outbox()) == 2


async def test_deeply_nested_json_is_refused_with_4xx(bridge: Bridge) -> None:
    # Valid JSON, but nested past what a parser should follow: a bad request, not a crash (500).
    body = b'{"events": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    reply = await bridge.client.put(TXN_PATH.format("1"), content=body, headers=hs("wa"))
    assert reply.status_code == 400
    assert reply.json()["errcode"] in ("M_NOT_JSON", "M_BAD_JSON")
    assert bridge.outbox() == []


async def test_a_transaction_without_events_is_acknowledged(bridge: Bridge) -> None:
    for txn, body in (("1", {}), ("2", {"events": []}), ("3", {"ephemeral": [], "events": []})):
        reply = await bridge.client.put(TXN_PATH.format(txn), json=body, headers=hs("wa"))
        assert reply.status_code == 200
        assert reply.json() == {}
    assert bridge.outbox() == []


async def test_garbage_events_are_skipped_and_good_ones_queued(bridge: Bridge) -> None:
    garbage: list[Any] = [
        42,
        "an event",
        None,
        [text_event("$inlist:wa.localhost")],
        {"type": "m.room.message", "room_id": ROOMS["wa"], "sender": WA_USER},  # no event_id
        {**text_event("$noroom:wa.localhost"), "room_id": 7},
        {**text_event("$nocontent:wa.localhost"), "content": "hi"},
        {**text_event("$badsender:wa.localhost"), "sender": "not a user id"},
        {**text_event("$nosender:wa.localhost"), "sender": None},
        {**text_event("$badbody:wa.localhost"), "content": {"msgtype": "m.text", "body": 5}},
        {**text_event("$state:wa.localhost"), "state_key": ""},
    ]
    reply = await bridge.push("1", [*garbage, text_event("$good:wa.localhost", body="good")])
    assert reply.status_code == 200
    rows = bridge.outbox()
    assert [(n, p["source"]["event_id"], p["content"]["body"]) for n, _, _, p in rows] == [
        ("fbm", "$good:wa.localhost", "good"),
        ("ig", "$good:wa.localhost", "good"),
    ]


async def test_half_a_surrogate_pair_becomes_a_replacement_character(bridge: Bridge) -> None:
    # JSON can escape half of a UTF-16 pair alone; SQLite (and every homeserver) refuses the
    # text Python makes of it, which used to fail the push on every retry.
    events = [
        text_event("$lone:wa.localhost", body="a\ud800b"),
        text_event("$pair:wa.localhost", body="\U0001f600"),  # escaped as a whole pair: kept
    ]
    body = json.dumps({"events": events}).encode()  # ensure_ascii: "\\ud800", "\\ud83d\\ude00"
    assert b"\\ud800" in body
    reply = await bridge.client.put(TXN_PATH.format("1"), content=body, headers=hs("wa"))
    assert reply.status_code == 200
    bodies = {p["source"]["event_id"]: p["content"]["body"] for n, _, _, p in bridge.outbox()
              if n == "ig"}
    assert bodies["$pair:wa.localhost"] == "\U0001f600"
    lone = bodies["$lone:wa.localhost"]
    assert lone.startswith("a\ufffd") and lone.endswith("b") and set(lone[1:-1]) == {"\ufffd"}


async def test_events_from_the_bridge_itself_are_not_relayed(bridge: Bridge) -> None:
    ghost = ghost_of(bridge.config, "wa", "ig", Identity("handle", "alice"))
    events = [
        text_event("$bot:wa.localhost", sender="@tribridge:wa.localhost"),
        text_event("$ghost:wa.localhost", sender=f"@{ghost}:wa.localhost"),
        text_event("$anyghost:wa.localhost", sender="@_tb_fbm_whatever:wa.localhost"),
    ]
    reply = await bridge.push("1", events)
    assert reply.status_code == 200
    assert bridge.outbox() == []
    assert bridge.woken == []


async def test_echoes_of_the_bridges_own_sends_cost_no_write(bridge: Bridge) -> None:
    ghost = ghost_of(bridge.config, "wa", "ig", Identity("handle", "alice"))
    echoes = [
        text_event("$echo:wa.localhost", sender=f"@{ghost}:wa.localhost"),
        {"type": "m.room.member", "event_id": "$join:wa.localhost", "room_id": ROOMS["wa"],
         "sender": f"@{ghost}:wa.localhost", "state_key": f"@{ghost}:wa.localhost",
         "content": {"membership": "join"}},
    ]
    before = bridge.store.conn.total_changes
    assert (await bridge.push("7", echoes)).status_code == 200
    assert bridge.store.conn.total_changes == before  # nothing written, so no fsync
    assert not bridge.store.event_seen("wa", "$echo:wa.localhost")
    # With a real person's message beside them, the transaction is taken in as always.
    assert (await bridge.push("8", [*echoes, text_event()])).status_code == 200
    assert bridge.store.event_seen("wa", "$echo:wa.localhost")
    assert {n for n, *_ in bridge.outbox()} == {"ig", "fbm"}


async def test_the_hs_token_tells_which_network_pushes(bridge: Bridge) -> None:
    event = text_event("$fromig:ig.localhost", sender=IG_USER, room_id=ROOMS["ig"], body="hi")
    reply = await bridge.push("1", [event], network="ig")
    assert reply.status_code == 200
    assert bridge.store.pending_rooms("ig") == []
    assert bridge.store.pending_rooms("wa") == [ROOMS["wa"]]
    assert bridge.store.pending_rooms("fbm") == [ROOMS["fbm"]]
    assert sorted(bridge.woken) == ["fbm", "wa"]
    [(_, _, _, payload), _] = bridge.outbox()
    assert payload["ghost"] == ghost_of(bridge.config, "wa", "ig", Identity("handle", "alice"))


async def test_another_networks_token_does_not_reach_its_rooms(bridge: Bridge) -> None:
    # The wa homeserver cannot push an event into ig's room by naming it.
    event = text_event("$spoof:ig.localhost", sender=IG_USER, room_id=ROOMS["ig"])
    reply = await bridge.push("1", [event], network="wa")
    assert reply.status_code == 200
    assert bridge.outbox() == []


async def test_the_ghost_in_the_outbox_never_carries_the_phone_number(bridge: Bridge) -> None:
    assert (await bridge.push("1", [text_event()])).status_code == 200
    rows = bridge.store.conn.execute("SELECT network, payload FROM outbox ORDER BY id")
    payloads = [(network, json.loads(payload)) for network, payload in rows]
    assert [network for network, _ in payloads] == ["fbm", "ig"]
    digits = PHONE.lstrip("+")
    known = set(bridge.config.networks)
    for network, payload in payloads:
        ghost = payload["ghost"]
        assert digits not in ghost
        assert digits[-7:] not in ghost  # not even the subscriber number
        target = bridge.config.networks[network].network
        assert parse_ghost_localpart(ghost, target, known) == "wa"  # prefix, wa, 16 base32 chars
        assert PHONE not in json.dumps(payload["content"])


# -- other endpoints -------------------------------------------------------------------------------


async def test_user_query_knows_only_registered_ghosts(bridge: Bridge) -> None:
    ghost = ghost_of(bridge.config, "wa", "ig", Identity("handle", "alice"))
    path = "/_matrix/app/v1/users/" + quote(f"@{ghost}:wa.localhost", safe="")
    before = await bridge.client.get(path, headers=hs("wa"))
    assert before.status_code == 404
    assert before.json()["errcode"] == "M_NOT_FOUND"

    bridge.store.save_ghost("wa", ghost, "ig", "alice (Instagram)")
    after = await bridge.client.get(path, headers=hs("wa"))
    assert after.status_code == 200
    assert after.json() == {}
    unencoded = await bridge.client.get(
        f"/_matrix/app/v1/users/@{ghost}:wa.localhost", headers=hs("wa")
    )
    assert unencoded.status_code == 200

    # The ghost lives on wa: ig's homeserver asking about it gets no.
    assert (await bridge.client.get(path, headers=hs("ig"))).status_code == 404
    assert (await bridge.client.get(path)).status_code == 401
    wrong = {"Authorization": "Bearer not-an-hs-token-0123456789"}
    assert (await bridge.client.get(path, headers=wrong)).status_code == 403


@pytest.mark.parametrize(
    "user_id",
    [
        "@tribridge:wa.localhost",
        f"@{PHONE}:wa.localhost",
        "@_tb_ig_tooshort:wa.localhost",
        "@_tb_wa_aaaaaaaaaaaaaaaa:wa.localhost",  # a wa ghost on wa stands for nobody
        "@_tb_ig_aaaaaaaaaaaaaaaa:ig.localhost",  # another server
        "not a user id",
    ],
)
async def test_user_query_is_404_for_everyone_else(bridge: Bridge, user_id: str) -> None:
    path = "/_matrix/app/v1/users/" + quote(user_id, safe="")
    reply = await bridge.client.get(path, headers=hs("wa"))
    assert reply.status_code == 404
    assert reply.json()["errcode"] == "M_NOT_FOUND"


async def test_ping_answers_200(bridge: Bridge) -> None:
    reply = await bridge.client.post(
        "/_matrix/app/v1/ping", json={"transaction_id": "tribridge-start-1"}, headers=hs("fbm")
    )
    assert reply.status_code == 200
    assert reply.json() == {}
    assert (await bridge.client.post("/_matrix/app/v1/ping", json={})).status_code == 401


async def test_room_alias_query_is_404(bridge: Bridge) -> None:
    path = "/_matrix/app/v1/rooms/" + quote("#any:wa.localhost", safe="")
    reply = await bridge.client.get(path, headers=hs("wa"))
    assert reply.status_code == 404
    assert reply.json()["errcode"] == "M_NOT_FOUND"


async def test_unknown_paths_and_methods_are_refused(bridge: Bridge) -> None:
    unknown = await bridge.client.get("/_matrix/app/v1/nothing", headers=hs("wa"))
    assert unknown.status_code == 404
    assert unknown.json()["errcode"] == "M_UNRECOGNIZED"
    wrong = await bridge.client.post(TXN_PATH.format("1"), json={"events": []}, headers=hs("wa"))
    assert wrong.status_code == 405
    assert wrong.json()["errcode"] == "M_UNRECOGNIZED"


async def test_a_head_request_does_not_take_the_bridge_down(bridge: Bridge) -> None:
    # Any client that can reach the port may send HEAD; no token is needed to be answered.
    reply = await bridge.client.head("/_matrix/app/v1/ping")
    assert 400 <= reply.status_code < 500
    assert (await bridge.push("1", [text_event()])).status_code == 200


@pytest.mark.parametrize("body", [
    b'{"events": [{"event_id": "$\xed\xa0\x80", "type": "m.room.message"}]}',  # CESU-8
    '{"events": []}'.encode("utf-16"),
])
async def test_a_body_that_is_not_utf8_is_400_not_json(bridge: Bridge, body: bytes) -> None:
    # The spec's JSON is UTF-8: a surrogate as bytes, or UTF-16, would be a 500 on every retry.
    reply = await bridge.client.put(TXN_PATH.format("1"), content=body, headers=hs("wa"))
    assert reply.status_code == 400 and reply.json()["errcode"] == "M_NOT_JSON"
    assert bridge.outbox() == []
