"""sd_notify datagrams reach a socket the way systemd's would."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from bridge.notify import Notifier


def test_notify_to_an_abstract_socket() -> None:
    name = f"tribridge-notify-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert Notifier("@" + name).send("READY=1", "STATUS=bridging")
        assert sock.recv(1024) == b"READY=1\nSTATUS=bridging"


def test_notify_to_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert Notifier(str(path)).send("STOPPING=1")
        assert sock.recv(1024) == b"STOPPING=1"


def test_without_systemd_notify_does_nothing() -> None:
    assert Notifier("").send("READY=1") is False


def test_a_missing_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "absent.sock")).send("READY=1") is False
