"""`tribridge run` as a subprocess, as a user or systemd would start it.

For the tests and the benches: it starts the daemon with a fake $NOTIFY_SOCKET and waits for its
READY=1, stops it with SIGTERM (as systemd would, expecting it gone within 5 s) or kills it -9,
and pushes transactions to it as a homeserver would.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from bridge.localnet.cluster import LocalNet

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """`tribridge run` in a subprocess, with a fake systemd notify socket."""

    def __init__(self, net: LocalNet, workdir: Path, tree: Path = ROOT) -> None:
        self.net = net
        self.tree = tree  # the checkout whose bridge/ runs (a bench may compare two)
        self.workdir = workdir
        self.config_path = workdir / "tribridge.toml"
        self.log_path = workdir / "tribridge.log"
        self.process: trio.Process | None = None
        self.notices: list[str] = []
        self._sock: trio.socket.SocketType | None = None
        self._address = ""
        self.extra_config = ""  # appended to the config: [permissions] and the like
        self.bridge_extra = ""  # lines for its [bridge] table

    @property
    def database(self) -> Path:
        return self.workdir / "state.db"

    def write_config(self, portals: list[Mapping[str, str]], log_level: str = "info") -> Path:
        return self.net.write_config(
            self.config_path, portals, self.database, log_level, self.extra_config,
            self.bridge_extra,
        )

    async def start(
        self, portals: list[Mapping[str, str]] | None = None, env: Mapping[str, str] = {}
    ) -> None:
        if portals is not None:
            self.write_config(portals)
        self.notices = []  # this run's notices only: a READY=1 of the last run says nothing
        self._sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        name = f"tribridge-test-{secrets.token_hex(6)}"
        await self._sock.bind("\0" + name)
        self._address = "@" + name
        env = {**os.environ, **env, "NOTIFY_SOCKET": self._address}
        with self.log_path.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "bridge", "run", "-c", str(self.config_path)],
                cwd=self.tree,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        await self.wait_notice("READY=1", within=30)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_notice(self, notice: str, within: float = 10) -> None:
        assert self._sock is not None
        with trio.fail_after(within):
            while notice not in self.notices:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"daemon exited early:\n{self.log()}")
                with trio.move_on_after(0.2):
                    data = await self._sock.recv(4096)
                    self.notices += data.decode().splitlines()

    async def kill(self) -> None:
        """kill -9: no chance to finish anything."""
        assert self.process is not None
        process, self.process = self.process, None
        process.kill()
        await process.wait()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def stop(self) -> int:
        """SIGTERM, as systemd would; the daemon must be gone within 5 s."""
        if self.process is None:
            return 0
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5) as scope:
                await process.wait()
            if scope.cancelled_caught:
                process.kill()
                await process.wait()
                raise AssertionError("the daemon did not stop within 5 s of SIGTERM")
        if self._sock is not None:
            with trio.move_on_after(1):
                while "STOPPING=1" not in self.notices:
                    self.notices += (await self._sock.recv(4096)).decode().splitlines()
            self._sock.close()
            self._sock = None
        return int(process.returncode or 0)

    async def wait_log(self, text: str, within: float = 10) -> None:
        """Poll the daemon's log (another process writes it) until `text` shows up."""
        with trio.fail_after(within):
            while text not in self.log():  # noqa: ASYNC110 (no event to wait on: a file)
                await trio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def push(self, net_id: str, txn_id: str, body: Any, token: str | None = None,
                   raw: bytes | None = None) -> httpx.Response:
        """Push a transaction as homeserver `net_id` would."""
        token = self.net.hs_tokens[net_id] if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"http://127.0.0.1:{self.net.bridge_port}/_matrix/app/v1/transactions/{txn_id}"
        async with httpx.AsyncClient(trust_env=False) as http:
            if raw is not None:
                return await http.put(url, content=raw, headers=headers)
            return await http.put(url, json=body, headers=headers)
