"""Outages as the delivery worker tells them: a second outage while the first is being
proved, a refused token after an outage, another server's silence, a token cleared only by a
request taken, a homeserver that answers with errors."""
from __future__ import annotations

import json

import httpx
import pytest
import trio

from bridge.core.actions import BotTask
from bridge.delivery import PROBE_MAX
from bridge.http.types import Request
from bridge.matrix.client import Unreachable
from bridge.observe import Observer

from .fakehs import error
from .test_delivery import Rig, rig

__all__ = ["rig"]  # the fixture, used by name

GET = Request("GET", "/health", {}, {}, b"")


def observer(rig: Rig) -> Observer:
    return Observer(rig.store, rig.workers, rig.workers["ig"].metrics, unhealthy_after=300)


# -- 1: an outage that begins again while _proving: no probe, a 5-minute backoff ---------------

FLAP: dict[str, object] = {}


def _dies_again_at_first_send_after_return(n: int) -> httpx.Response | None:
    fake = FLAP.get("fake")
    if FLAP.get("armed") and fake is not None:
        # The homeserver answered the probe (/versions), then went down again (a crash loop, a
        # restart) before the queued send got there; it is back for good 20 s later.
        FLAP["armed"] = False
        fake.down = True  # type: ignore[attr-defined]
        FLAP["nursery"].start_soon(_back_after, fake, 20.0)  # type: ignore[attr-defined]
        raise httpx.ConnectError("connection refused")
    return None


async def _back_after(fake: object, seconds: float) -> None:
    await trio.sleep(seconds)
    fake.down = False  # type: ignore[attr-defined]
    FLAP["back_at"] = trio.current_time()


@pytest.mark.parametrize("rig", [_dies_again_at_first_send_after_return], indirect=True)
async def test_a_second_outage_while_proving_is_served_when_it_returns(
    rig: Rig, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    FLAP.clear()
    FLAP.update(fake=rig.fakes["ig"], nursery=nursery)
    rig.fakes["ig"].down = True
    rig.queue("during", "outage")
    await trio.sleep(600)  # the backoff has grown to minutes
    FLAP["armed"] = True
    rig.fakes["ig"].down = False
    await rig.until(lambda: "back_at" in FLAP)
    await rig.until(lambda: len(rig.fakes["ig"].sent) == 2)
    late = rig.fakes["ig"].sent[0].at - FLAP["back_at"]  # type: ignore[operator]
    assert late <= PROBE_MAX + 1  # docs/operations.md: "the moment it answers, ... at once"


# -- 2: a 401 after an outage: "not answering" for as long as the token is refused -------------

TOKEN: dict[str, bool] = {}


def _refuses_token_when_armed(n: int) -> httpx.Response | None:
    return error(401, "M_UNKNOWN_TOKEN") if TOKEN.get("armed") else None


@pytest.mark.parametrize("rig", [_refuses_token_when_armed], indirect=True)
async def test_a_token_refused_after_an_outage_is_not_silence(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    # The admin restarts Synapse with a regenerated registration: down for a while, then it
    # answers every send with 401.
    TOKEN.clear()
    rig.fakes["ig"].down = True
    rig.queue("held")
    await trio.sleep(30)
    TOKEN["armed"] = True
    rig.fakes["ig"].down = False
    await rig.until(lambda: rig.workers["ig"].token_refused)
    await trio.sleep(3600)
    body = json.loads((await observer(rig).health(GET)).body)["networks"]["ig"]
    text = (await observer(rig).render_metrics(Request("GET", "/metrics", {}, {}, b""))).body
    assert body["reachable"], "it has answered every send for an hour (401s)"
    assert body["token_refused"]  # what is wrong: the token, not the homeserver's silence
    assert 'tribridge_homeserver_reachable{network="ig"} 1.0' in text.decode()


# -- 3: a bot task for ig that fails on wa's silence makes ig "not answering" ------------------

WA_DOWN = {"down": True}


async def _bot_that_calls_wa(task: BotTask) -> None:
    if WA_DOWN["down"]:
        error = Unreachable("wa.test: ConnectError: connection refused")
        error.server_name = "wa.test"
        raise error


async def test_another_homeservers_silence_does_not_make_this_one_unhealthy(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    WA_DOWN["down"] = True
    rig.workers["ig"].bot = _bot_that_calls_wa
    task = BotTask("ig", "!ig-mgmt", "invite", {"room_id": "!x"}, "tb-invite-1", "$invite")
    with rig.store.transaction():
        rig.store.enqueue([task])
    rig.workers["ig"].wake()
    await trio.sleep(1200)  # wa down for 20 minutes; ig answers all along
    answer = await observer(rig).health(GET)
    body = json.loads(answer.body)["networks"]["ig"]
    assert body["reachable"] and answer.status == 200


# -- 4: token_refused cleared by an action that needed no request ------------------------------

TOK2: dict[str, bool] = {"armed": True}


@pytest.mark.parametrize(
    "rig", [lambda n: error(401, "M_UNKNOWN_TOKEN") if TOK2["armed"] else None], indirect=True)
async def test_token_refused_stays_until_a_send_gets_through(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    from .test_delivery import message
    rig.queue("held")
    await rig.until(lambda: rig.workers["ig"].token_refused)
    await trio.sleep(600)  # backoff at its 5-minute cap
    # A message queued for a room that has left its portal: done without any request.
    with rig.store.transaction():
        rig.store.remove_portal_room("ig", "!fast")
        rig.store.enqueue([message("to an unlinked room", room="!fast", src_room="!wa-fast")])
    rig.workers["ig"].wake()
    await rig.until(lambda: rig.store.outbox_depth().get("ig", 0) == 1)
    answer = await observer(rig).health(GET)
    assert rig.workers["ig"].token_refused, "no send got through: the token is still refused"
    assert answer.status == 503


POISON: dict[str, bool] = {}


@pytest.mark.parametrize(
    "rig", [lambda n: error(500, "M_UNKNOWN") if POISON.get("armed") else None], indirect=True)
async def test_a_homeserver_that_answers_an_action_with_500_after_a_blip_is_reachable(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.fakes["ig"].down = True
    rig.queue("poison")
    await trio.sleep(10)
    POISON["armed"] = True
    rig.fakes["ig"].down = False
    await trio.sleep(3600)
    answer = await observer(rig).health(GET)
    POISON.clear()
    # It answers, with an error of its own (a Matrix errcode, not a proxy's page): not silence.
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["networks"]["ig"]["reachable"]
