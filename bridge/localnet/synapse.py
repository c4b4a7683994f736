"""Start and stop real Synapse homeservers on loopback, configured for tests and the demo.

Needs the `matrix-synapse` package in the same Python environment (the `demo` or `test` extra).
The config follows ../shared/notes/synapse.md: SQLite, no federation, rate limits lifted, quiet
logs, registration open without verification, our appservice registrations loaded.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nacl.signing

_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Synapse:
    server_name: str
    port: int
    directory: Path
    registrations: list[Path] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "synapse.log"

    def write_config(self) -> Path:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        key_path = d / "signing.key"
        if not key_path.exists():
            # Synapse will not create a missing signing key at start; its format is
            # "<algorithm> <version> <unpadded base64 seed>".
            seed = nacl.signing.SigningKey.generate().encode()
            key_path.write_text(
                "ed25519 a_tb " + base64.b64encode(seed).decode().rstrip("=") + "\n"
            )
        log_config = d / "log.yaml"
        log_config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(message)s"}},
                    "handlers": {
                        "file": {
                            "class": "logging.FileHandler",
                            "filename": str(self.log_path),
                            "formatter": "f",
                        }
                    },
                    "root": {"level": "WARNING", "handlers": ["file"]},
                    "disable_existing_loggers": False,
                }
            )
        )
        config = {
            "server_name": self.server_name,
            "pid_file": str(d / "homeserver.pid"),
            "media_store_path": str(d / "media"),
            "signing_key_path": str(key_path),
            "log_config": str(log_config),
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "federation_domain_whitelist": [],
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "app_service_config_files": [str(p) for p in self.registrations],
            "rc_message": _UNLIMITED,
            "rc_registration": _UNLIMITED,
            "rc_login": {k: _UNLIMITED for k in ("address", "account", "failed_attempts")},
            "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
            "rc_joins_per_room": _UNLIMITED,
            "rc_invites": {k: _UNLIMITED for k in ("per_room", "per_user", "per_issuer")},
            "rc_room_creation": _UNLIMITED,
            "rc_profile": _UNLIMITED,
            "rc_media_create": _UNLIMITED,
            "rc_key_requests": _UNLIMITED,
        }
        path = d / "homeserver.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        return path

    def start(self) -> None:
        """Start the process; `wait_ready` tells when it answers."""
        config = self.write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
        with open(self.directory / "stdout.log", "ab") as out:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "--config-path", str(config)],
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Synapse {self.server_name} exited: {self._tail()}")
            try:
                if httpx.get(self.url + "/_matrix/client/versions", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling a child process's readiness against a deadline
        raise RuntimeError(f"Synapse {self.server_name} not ready in {timeout} s: {self._tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _tail(self) -> str:
        out = []
        for name in ("stdout.log", "synapse.log"):
            p = self.directory / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-2000:])
        return "\n".join(out)


def start_all(servers: list[Synapse], timeout: float = 90.0) -> None:
    """Start several homeservers at once and wait until each answers."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        for server in servers:
            server.kill()
        raise
