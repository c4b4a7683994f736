"""Running as a service: signals, a bad reload, a busy port."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bridge.demo import has_body
from bridge.localnet.cluster import LocalNet
from bridge.localnet.people import Person
from bridge.localnet.synapse import free_port

from .conftest import ROOT, Cast, Daemon

pytestmark = pytest.mark.synapse


async def alice_and_bob_bridged(
    cast: Cast, daemon: Daemon
) -> tuple[Person, Person, dict[str, str]]:
    """Alice on wa and Bob on ig, each in a room of one portal, the daemon running."""
    alice, bob = await cast.person("wa", "Alice"), await cast.person("ig", "Bob")
    rooms = {"wa": await cast.room("wa", alice), "ig": await cast.room("ig", bob)}
    await daemon.start([rooms])
    return alice, bob, rooms


async def test_sighup_with_a_broken_config_keeps_the_running_one(
    cast: Cast, daemon: Daemon
) -> None:
    alice, bob, rooms = await alice_and_bob_bridged(cast, daemon)
    text = daemon.config_path.read_text()
    port = str(daemon.net.bridge_port)
    daemon.config_path.write_text(text.replace(f":{port}\"", ':99999"'))
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    await daemon.wait_log("keeping the running config")
    assert "bridge.listen: must be host:port" in daemon.log()
    await alice.send_text(rooms["wa"], "still here after SIGHUP")
    await bob.wait_for(rooms["ig"], has_body("still here after SIGHUP"))


async def test_sighup_applies_a_new_portal_without_a_restart(cast: Cast, daemon: Daemon) -> None:
    alice, bob = await cast.person("wa", "Alice"), await cast.person("ig", "Bob")
    first = {"wa": await cast.room("wa", alice), "ig": await cast.room("ig", bob)}
    await daemon.start([first])
    second = {"wa": await cast.room("wa", alice, "second"), "ig": await cast.room("ig", bob, "2")}
    daemon.write_config([first, second])
    daemon.notices.clear()
    daemon.signal(signal.SIGHUP)
    await daemon.wait_notice("READY=1")
    assert daemon.notices[0] == "RELOADING=1"
    await daemon.wait_log("reloaded: 2 portals")
    await alice.send_text(second["wa"], "in the portal added by a reload")
    await bob.wait_for(second["ig"], has_body("in the portal added by a reload"))
    await alice.send_text(first["wa"], "the first portal still works")
    await bob.wait_for(first["ig"], has_body("the first portal still works"))


async def test_the_watchdog_is_petted_while_healthy(cast: Cast, daemon: Daemon) -> None:
    await daemon.start([], env={"WATCHDOG_USEC": "400000"})
    for _ in range(5):  # petted again and again, not once at the start
        daemon.notices.clear()
        await daemon.wait_notice("WATCHDOG=1", within=5)


async def test_health_and_metrics_on_a_listener_of_their_own(cast: Cast, daemon: Daemon) -> None:
    port = free_port()
    daemon.bridge_extra = f'metrics_listen = "127.0.0.1:{port}"'
    await daemon.start([])
    async with httpx.AsyncClient(timeout=10) as http:
        health = await http.get(f"http://127.0.0.1:{port}/health")
        metrics = await http.get(f"http://127.0.0.1:{port}/metrics")
        main = await http.get(f"http://127.0.0.1:{daemon.net.bridge_port}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    assert metrics.status_code == 200 and "tribridge_" in metrics.text
    assert main.status_code != 200  # only on their own listener, as documented
    assert await daemon.stop() == 0


def test_a_busy_listen_port_is_a_clear_error(localnet: LocalNet, tmp_path: Path) -> None:
    config = localnet.write_config(tmp_path / "t.toml", [], tmp_path / "t.db")
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", localnet.bridge_port))
        busy.listen()
        result = subprocess.run(
            [sys.executable, "-m", "bridge", "run", "-c", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert "address is in use (bridge.listen)" in result.stderr
    assert "Traceback" not in result.stderr


async def test_history_past_its_days_is_pruned_at_the_next_start_and_relaying_goes_on(
    cast: Cast, daemon: Daemon
) -> None:
    alice, bob, rooms = await alice_and_bob_bridged(cast, daemon)
    await alice.send_text(rooms["wa"], "said ten days ago")
    await bob.wait_for(rooms["ig"], has_body("said ten days ago"))
    assert await daemon.stop() == 0
    with sqlite3.connect(daemon.database) as db:  # ten days pass
        db.execute("UPDATE outbox SET created_at = created_at - 864000, "
                   "updated_at = updated_at - 864000")
        db.execute("UPDATE transactions SET received_at = received_at - 864000")
        finished = db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'done'").fetchone()[0]
        newest = db.execute("SELECT network, MAX(rowid) FROM transactions GROUP BY network")
        newest = dict(newest.fetchall())
    assert finished >= 1 and "wa" in newest
    await daemon.start()
    await daemon.wait_log(f"pruned {finished} finished actions", within=60)
    with sqlite3.connect(daemon.database) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'done'").fetchone()[0] == 0
        old = db.execute("SELECT network, rowid FROM transactions WHERE received_at < ?",
                         (time.time() - 9 * 86400,)).fetchall()
        later = dict(db.execute("SELECT network, MAX(rowid) FROM transactions GROUP BY network"))
    # Of the old records only each network's newest may stay (what the gap check reads at a
    # start), unless a newer one came since.
    assert all(newest[net] == rowid for net, rowid in old)
    assert all(later[net] >= rowid for net, rowid in newest.items())
    await alice.send_text(rooms["wa"], "said today")
    await bob.wait_for(rooms["ig"], has_body("said today"))
    assert [body for _, body in await bob.texts(rooms["ig"])].count("said ten days ago") == 1
