"""`tribridge db status` and `tribridge db backup`, run as an admin would."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from bridge.config import load_config
from bridge.core.actions import SendMessage, txn_id
from bridge.core.model import EventRef
from bridge.store import Store

ROOT = Path(__file__).resolve().parents[1]


def tribridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def config_with_an_event(tmp_path: Path) -> Path:
    text = (ROOT / "config.example.toml").read_text()
    path = tmp_path / "c.toml"
    path.write_text(text.replace('database = "tribridge.db"', f'database = "{tmp_path}/t.db"'))
    store = Store(load_config(path).bridge.database)
    source = EventRef("wa", "!a", "$sent", "@+15551234567:wa.example.org")
    with store.transaction():
        store.enqueue([
            SendMessage(net, f"!{net}", "_tb_wa_aaaaaaaaaaaaaaaa", source,
                        {"msgtype": "m.text", "body": "hi"}, txn_id("wa", "$sent", net, "message"))
            for net in ("ig", "fbm")
        ])
    items = store.pending_actions("fbm", "!fbm")
    store.note_attempt(items[0].id, "403 M_FORBIDDEN: no")
    store.finish(items[0].id, "failed", "403 M_FORBIDDEN: no")
    store.close()
    return path


def test_db_status_says_where_an_event_got_to(tmp_path: Path) -> None:
    config = config_with_an_event(tmp_path)
    result = tribridge("db", "status", "-c", str(config), "--network", "wa", "--event", "$sent")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("-> ig" in line and "pending" in line for line in lines)
    assert any("-> fbm" in line and "failed" in line and "M_FORBIDDEN" in line for line in lines)
    unknown = tribridge("db", "status", "-c", str(config), "--network", "wa", "--event", "$no")
    assert unknown.returncode == 1 and "no actions for $no" in unknown.stdout


def test_db_backup_copies_the_store_and_never_overwrites(tmp_path: Path) -> None:
    config = config_with_an_event(tmp_path)
    copy = tmp_path / "backup.db"
    result = tribridge("db", "backup", "-c", str(config), str(copy))
    assert result.returncode == 0, result.stderr
    rows = sqlite3.connect(copy).execute("SELECT COUNT(*) FROM outbox").fetchone()
    assert rows == (2,)
    assert copy.stat().st_mode & 0o077 == 0
    again = tribridge("db", "backup", "-c", str(config), str(copy))
    assert again.returncode == 1 and "exists" in again.stderr
