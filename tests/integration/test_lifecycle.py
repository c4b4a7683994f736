"""Running as a service: signals, a bad reload, a busy port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.demo import has_body
from bridge.localnet.cluster import LocalNet

from .conftest import ROOT, Cast, Daemon

pytestmark = pytest.mark.synapse


async def test_sighup_with_a_broken_config_keeps_the_running_one(
    cast: Cast, daemon: Daemon
) -> None:
    alice, bob = await cast.person("wa", "Alice"), await cast.person("ig", "Bob")
    rooms = {"wa": await cast.room("wa", alice), "ig": await cast.room("ig", bob)}
    await daemon.start([rooms])
    text = daemon.config_path.read_text()
    port = str(daemon.net.bridge_port)
    daemon.config_path.write_text(text.replace(f":{port}\"", ':99999"'))
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    await daemon.wait_log("keeping the running config")
    assert "bridge.listen: must be host:port" in daemon.log()
    await alice.send_text(rooms["wa"], "still here after SIGHUP")
    await bob.wait_for(rooms["ig"], has_body("still here after SIGHUP"))


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
