"""The tribridge commands: run, check-config, generate-registration, db, demo, chat."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from bridge import __version__
from bridge.config import Config, ConfigError, load_config, load_database_path, load_network_ids
from bridge.http.server import ListenError
from bridge.logs import setup_logging
from bridge.store import StoreError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

log = logging.getLogger("bridge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tribridge",
        description="Bridge chat rooms across several Matrix homeservers, one per network.",
    )
    parser.add_argument("--version", action="version", version=f"tribridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", required=True, type=Path, help="the TOML config file")

    p = sub.add_parser("run", help="run the bridge daemon (logs to stderr)")
    with_config(p)
    p = sub.add_parser("check-config", help="validate a config file and summarise it")
    with_config(p)
    p = sub.add_parser(
        "generate-registration", help="print the appservice registration YAML for one network"
    )
    with_config(p)
    p.add_argument("--network", required=True, help="the network id, e.g. wa")
    p = sub.add_parser("db", help="the state store: where an event got to, backups, compaction")
    db = p.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    q = db.add_parser("status", help="where the actions for one source event got to")
    with_config(q)
    q.add_argument("--network", required=True, help="the network the event was sent on")
    q.add_argument("--event", required=True, help="its event id there ($...)")
    q = db.add_parser("backup", help="copy the database online (safe while the daemon runs)")
    with_config(q)
    q.add_argument("destination", type=Path, help="a new file to write the copy to")
    q = db.add_parser("compact", help="give pruned space back and use 2-KiB pages (daemon stopped)")
    with_config(q)
    p = sub.add_parser(
        "demo", help="start three local Synapse homeservers and show a conversation crossing them"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder afterwards")
    p = sub.add_parser("chat", help="a terminal client for one end-to-end encrypted portal room")
    p.add_argument("--homeserver", required=True, help="your homeserver's URL")
    p.add_argument("--user", required=True, help="your user id or localpart")
    p.add_argument("--room", required=True, help="the room id")
    p.add_argument("--origin", required=True, help="your network's label, e.g. WhatsApp")
    p.add_argument("--keys", type=Path, default=Path("tribridge-chat-keys.json"),
                   help="where this device's keys are kept (created 0600)")
    return parser


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "generate-registration":
            return _generate_registration(args.config, args.network)
        if args.command == "run":
            return _run(args.config)
        if args.command == "db":
            return _db(args)
        if args.command == "chat":
            import getpass

            from bridge.client.chat import chat

            password = os.environ.get("TRIBRIDGE_PASSWORD") or getpass.getpass("password: ")
            return trio.run(chat, args.homeserver, args.user, password, args.room, args.origin,
                            args.keys)
        if args.command == "demo":
            from bridge.demo import run_demo

            return run_demo(keep=args.keep)
    except ConfigError as exc:
        print(f"tribridge: {len(exc.errors)} error(s) in the config:", file=sys.stderr)
        # Unmasked only on a terminal: the admin's own screen, not a log (systemd's
        # ExecReload runs check-config too, into the journal).
        for line in exc.lines(masked=not sys.stderr.isatty()):
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"tribridge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    raise AssertionError(f"unhandled command {args.command}")


def _summary(config: Config) -> str:
    nets = ", ".join(f"{n.id} ({n.network.label}, {n.network.server_name})"
                     for n in config.networks.values())
    return (
        f"config OK: {len(config.networks)} networks: {nets}; {len(config.portals)} portal(s); "
        f"listening on {config.bridge.listen_host}:{config.bridge.listen_port}"
    )


def _check_config(path: Path) -> int:
    print(_summary(load_config(path)))
    return EXIT_OK


def _db(args: argparse.Namespace) -> int:
    from bridge.store import Store
    from bridge.store.migrations import LATEST

    database = load_database_path(args.config)
    if args.db_command == "status":
        known = load_network_ids(args.config)
        if args.network not in known:
            print(f"tribridge: --network: no network {args.network!r} in the config (known: "
                  f"{', '.join(known)})", file=sys.stderr)
            return EXIT_CONFIG
    if not database.exists():
        # Opening it would make an empty store there, and report on that.
        print(f"tribridge: no database at {database}: check bridge.database in "
              f"{args.config} (the daemon makes it at its first start)", file=sys.stderr)
        return EXIT_FAILURE
    # As it is: a `db backup` taken before an upgrade must be of the old schema, and the old
    # daemon may still be running on it.
    store = Store(database, upgrade=False)
    try:
        if args.db_command == "backup":
            store.backup(args.destination)
            print(f"backed up {database} to {args.destination}")
            return EXIT_OK
        if args.db_command == "compact":
            done = store.compact()
            pages = (f"pages of {done.page_before:,} -> {done.page_after:,} bytes"
                     if done.page_before != done.page_after
                     else f"pages of {done.page_after:,} bytes, unchanged")
            print(f"compacted {database}: {done.bytes_before:,} -> "
                  f"{done.bytes_after:,} bytes ({pages})")
            return EXIT_OK
        if store.schema_before < LATEST:
            print(f"tribridge: {database} is at schema version {store.schema_before}; this "
                  f"tribridge reads version {LATEST}. Start the daemon to upgrade it (after "
                  "`tribridge db backup`, which copies it as it is), or ask the tribridge "
                  "that wrote it.", file=sys.stderr)
            return EXIT_FAILURE
        rows = store.delivery_status(args.network, args.event)
        if not rows:
            print(f"no actions for {args.event} from {args.network}: not seen, nothing to do, "
                  "or finished longer ago than bridge.history_days")
            return EXIT_FAILURE
        for row in rows:
            print(f"{row.kind:8} -> {row.network:6} {row.state:8} {_tries(row.state, row.attempts)}"
                  + (f" ({row.last_error})" if row.last_error else ""))
        return EXIT_OK
    finally:
        store.close()


def _tries(state: str, failed: int) -> str:
    """How many times an action was tried: `failed` counts the tries that failed and were
    retried; a refusal (a failed action's last try) ends it without being counted there."""
    if state == "failed":
        tries = failed + 1
        return f"after {tries} {'try' if tries == 1 else 'tries'}"
    if state == "pending":
        return f"{failed} failed {'try' if failed == 1 else 'tries'} so far"
    return "at the first try" if failed == 0 else (
        f"after {failed} failed {'try' if failed == 1 else 'tries'}")


def _generate_registration(path: Path, network: str) -> int:
    from bridge.matrix.registration import registration_yaml

    config = load_config(path)
    if network not in config.networks:
        known = ", ".join(config.networks)
        print(f"tribridge: --network: no network {network!r} in the config (known: {known})",
              file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(registration_yaml(config, network))
    return EXIT_OK


def _run(path: Path) -> int:
    from bridge.daemon import run_until_signalled

    config = load_config(path)
    setup_logging(config.bridge.log_level, config.secrets(), config.bridge.log_format)
    log.info("tribridge %s starting with %s", __version__, path)
    try:
        trio.run(run_until_signalled, path, config)
    except (StoreError, OSError, BaseExceptionGroup) as exc:
        cause = _environment_failure(exc)
        if cause is None:
            raise  # our own bug: crash loudly, with the traceback
        if isinstance(cause, ListenError):
            listen = (config.bridge.listen_host, config.bridge.listen_port)
            key = "bridge.listen" if (cause.host, cause.port) == listen else "bridge.metrics_listen"
            log.error("cannot listen on %s:%d: %s (%s)", cause.host, cause.port, cause.why(), key)
        else:
            log.error("cannot run: %s", cause)
        return EXIT_FAILURE
    return EXIT_OK


def _environment_failure(exc: BaseException) -> StoreError | OSError | None:
    """The failure of the machine around us inside `exc` (trio wraps errors in groups)."""
    if isinstance(exc, StoreError | OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _environment_failure(exc.exceptions[0])
    return None
