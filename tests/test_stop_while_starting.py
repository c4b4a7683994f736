"""SIGTERM is heard from the first moment: a start held up by a homeserver that never answers
still stops when systemd asks, cleanly, instead of being killed after TimeoutStopSec."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_during_a_stuck_start_stops_the_daemon(tmp_path: Path) -> None:
    # A "homeserver" that takes connections and never says a word: every start-up call waits.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        text = (ROOT / "config.example.toml").read_text()
        for original in ("8008", "8009", "8010"):
            text = text.replace(f"http://127.0.0.1:{original}", f"http://127.0.0.1:{port}")
        text = text.replace('listen = "127.0.0.1:29330"', f'listen = "127.0.0.1:{free_port()}"')
        text = text.replace('database = "tribridge.db"', f'database = "{tmp_path}/t.db"')
        config = tmp_path / "c.toml"
        config.write_text(text)
        log = tmp_path / "run.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen([sys.executable, "-m", "bridge", "run", "-c", str(config)],
                                      cwd=ROOT, stdout=out, stderr=out,
                                      env={**os.environ, "NOTIFY_SOCKET": ""})
        try:
            deadline = time.monotonic() + 30
            while "listening on" not in log.read_text():  # polled, under the deadline
                assert time.monotonic() < deadline, log.read_text()
                assert daemon.poll() is None, log.read_text()
                time.sleep(0.05)
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=10)  # the start-up calls alone would take 20 s and more
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    text = log.read_text()
    assert code == 0, text
    assert "SIGTERM: stopping" in text and "stopped" in text and "ready:" not in text
    assert "Traceback" not in text
