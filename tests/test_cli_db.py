"""`tribridge db status` and `tribridge db backup`, run as an admin would."""

from __future__ import annotations

import resource
import signal
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
    store.finish(items[0].id, "failed", "403 M_FORBIDDEN: no")  # refused at the first try
    store.note_attempt(store.pending_actions("ig", "!ig")[0].id, "502 M_UNKNOWN: down")
    store.close()
    return path


def test_db_status_says_where_an_event_got_to(tmp_path: Path) -> None:
    config = config_with_an_event(tmp_path)
    result = tribridge("db", "status", "-c", str(config), "--network", "wa", "--event", "$sent")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "message  -> ig     pending  1 failed try so far (502 M_UNKNOWN: down)",
        "message  -> fbm    failed   after 1 try (403 M_FORBIDDEN: no)",
    ]
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


def page_size_and_mode(path: Path) -> tuple[int, str]:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA page_size").fetchone()[0], db.execute(
            "PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()


def test_a_new_store_has_2_kib_pages_and_a_4_mb_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.db")
    assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (2048,)
    store.close()
    assert page_size_and_mode(tmp_path / "new.db") == (2048, "wal")


def old_store(tmp_path: Path) -> Path:
    """A store as tribridge made it before 2-KiB pages (SQLite's 4 KiB), with pruned space."""
    config = config_with_an_event(tmp_path)
    path = tmp_path / "t.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = DELETE")
    db.execute("PRAGMA page_size = 4096")
    db.execute("VACUUM")
    db.execute("PRAGMA journal_mode = WAL")
    # Rows written and deleted again, as pruning does: free pages the file keeps.
    db.execute("CREATE TABLE filler (x BLOB)")
    db.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 1000,) for _ in range(2000)])
    db.execute("DROP TABLE filler")
    db.close()
    assert page_size_and_mode(path) == (4096, "wal")
    return config


def test_db_compact_gives_space_back_and_moves_to_2_kib_pages(tmp_path: Path) -> None:
    config = old_store(tmp_path)
    path = tmp_path / "t.db"
    before = path.stat().st_size
    result = tribridge("db", "compact", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "pages of 4,096 -> 2,048 bytes" in result.stdout
    assert page_size_and_mode(path) == (2048, "wal")
    assert path.stat().st_size < before / 4  # two megabytes of free pages gone
    status = tribridge("db", "status", "-c", str(config), "--network", "wa", "--event", "$sent")
    assert status.returncode == 0 and "-> fbm" in status.stdout  # nothing lost
    again = tribridge("db", "compact", "-c", str(config))
    assert again.returncode == 0 and "pages of 2,048 bytes, unchanged" in again.stdout


def test_db_compact_refuses_while_the_daemon_has_the_store_open(tmp_path: Path) -> None:
    config = old_store(tmp_path)
    path = tmp_path / "t.db"
    daemon = Store(path)  # what the running daemon holds
    try:
        result = tribridge("db", "compact", "-c", str(config))
        assert result.returncode == 1
        assert "stop the daemon first" in result.stderr
        # The daemon's store still works, writes included.
        items = daemon.pending_actions("ig", "!ig")
        assert items and daemon.finish(items[0], "done")
    finally:
        daemon.close()
    assert page_size_and_mode(path) == (4096, "wal")


def test_an_old_store_keeps_its_pages_and_a_4_mb_wal_until_compacted(tmp_path: Path) -> None:
    old_store(tmp_path)
    store = Store(tmp_path / "t.db")
    try:
        assert store.conn.execute("PRAGMA page_size").fetchone() == (4096,)
        assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (1024,)
        done = store.compact()
        assert (done.page_before, done.page_after) == (4096, 2048)
        # The same store goes on, in WAL mode, and no longer holds the file to itself.
        assert store.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (2048,)
        items = store.pending_actions("ig", "!ig")
        assert items and store.finish(items[0], "done")
        other = Store(tmp_path / "t.db")
        assert not other.pending_actions("ig", "!ig")
        other.close()
    finally:
        store.close()


def test_a_compaction_that_fails_says_why_and_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    config = old_store(tmp_path)
    path = tmp_path / "t.db"
    limit = path.stat().st_size // 2  # no room for VACUUM's copy: as a full disk

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "bridge", "db", "compact", "-c", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            preexec_fn=small_disk)
    assert result.returncode == 1
    assert "could not compact" in result.stderr and "Traceback" not in result.stderr
    assert page_size_and_mode(path) == (4096, "wal")
    status = tribridge("db", "status", "-c", str(config), "--network", "wa", "--event", "$sent")
    assert status.returncode == 0 and "-> fbm" in status.stdout


def test_db_commands_given_no_database_say_so_and_make_none(tmp_path: Path) -> None:
    text = (ROOT / "config.example.toml").read_text()
    config = tmp_path / "c.toml"
    config.write_text(text.replace('database = "tribridge.db"',
                                   f'database = "{tmp_path}/typo.db"'))
    for args in (["status", "--network", "wa", "--event", "$x"], ["compact"],
                 ["backup", str(tmp_path / "copy.db")]):
        result = tribridge("db", args[0], "-c", str(config), *args[1:])
        assert result.returncode == 1, args
        assert f"no database at {tmp_path}/typo.db" in result.stderr, args
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "copy.db").exists()


def test_db_commands_need_no_token_and_no_credentials_directory(tmp_path: Path) -> None:
    # The documented systemd config: secrets through ${CREDENTIALS_DIRECTORY}, which systemd
    # sets for the service alone, not in an admin's shell.
    config = config_with_an_event(tmp_path)
    text = config.read_text().replace(
        'secret = "change-me-to-a-long-random-string-of-48-characters"',
        'secret_file = "${CREDENTIALS_DIRECTORY}/secret"')
    assert "CREDENTIALS_DIRECTORY" in text
    config.write_text(text)
    status = tribridge("db", "status", "-c", str(config), "--network", "wa", "--event", "$sent")
    assert status.returncode == 0, status.stderr
    assert (tribridge("db", "backup", "-c", str(config), str(tmp_path / "b.db")).returncode
            == 0)
    # The daemon's own commands need the secret, and say how to give the folder in a shell.
    check = tribridge("check-config", "-c", str(config))
    assert check.returncode == 2
    assert "bridge.secret_file: an environment variable in '${CREDENTIALS_DIRECTORY}/secret' " \
        "is not set (systemd sets it for the service; in a shell, name the folder the unit " \
        "loads them from: CREDENTIALS_DIRECTORY=/etc/tribridge/creds)" in check.stderr


def store_of_schema(path: Path, version: int) -> None:
    """A store as a tribridge of schema `version` left it."""
    import sqlite_utils

    from bridge.store.migrations import MIGRATIONS

    db = sqlite_utils.Database(path)
    for number, step in enumerate(MIGRATIONS[:version], start=1):
        step(db)
        db.execute(f"PRAGMA user_version = {number}")
    db.close()


def test_db_commands_never_upgrade_the_store(tmp_path: Path) -> None:
    # An admin backs up before an upgrade, perhaps with the new package installed and the old
    # daemon still running: the copy, and the store, must stay as the old daemon had them.
    from bridge.store.migrations import LATEST

    config = config_with_an_event(tmp_path)
    database = tmp_path / "t.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    store_of_schema(database, LATEST - 1)
    copy = tmp_path / "before-upgrade.db"
    backup = tribridge("db", "backup", "-c", str(config), str(copy))
    assert backup.returncode == 0, backup.stderr
    status = tribridge("db", "status", "-c", str(config), "--network", "wa", "--event", "$x")
    assert status.returncode == 1
    assert f"at schema version {LATEST - 1}; this tribridge reads version {LATEST}" in (
        status.stderr)
    for path in (database, copy):
        version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
        assert version == LATEST - 1, path


def test_db_status_names_a_network_the_config_does_not_have(tmp_path: Path) -> None:
    config = config_with_an_event(tmp_path)
    result = tribridge("db", "status", "-c", str(config), "--network", "zz", "--event", "$sent")
    assert result.returncode == 2
    assert "--network: no network 'zz' in the config (known: fbm, ig, wa)" in result.stderr
