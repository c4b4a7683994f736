"""The config file: TOML in, frozen dataclasses out, every error named by its key path.

The whole file is validated before anything starts, and every error is reported at once
(``networks.ig.homeserver: not an http(s) URL``). Relative paths are relative to the config file.
The program never writes this file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.core.ids import is_valid_localpart, is_valid_server_name
from bridge.core.model import IDENTITY_KINDS, Network
from bridge.core.permissions import Level, Permissions, is_rule_key
from bridge.logs import mask_private

LOG_LEVELS = ("debug", "info", "warning", "error")
# "full": a transaction acknowledged to a homeserver survives a crash of the machine (fsync on
# every commit). "process": it survives a crash of the daemon, not of the machine.
DURABILITY = ("full", "process")
MIN_SECRET_BYTES = 32
_NETWORK_ID = re.compile(r"[a-z][a-z0-9]{0,15}")
_TOKEN = re.compile(r"[\x21-\x7e]{16,}")  # printable ASCII, no spaces, not trivially short


class ConfigError(Exception):
    """The config is wrong; `errors` holds (key path, what is wrong) pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {m}" for k, m in errors))

    def lines(self, masked: bool = True) -> list[str]:
        """The errors as lines to show. Phone numbers and emails (a permission's key is a
        person's user id) are masked as in the logs, unless not `masked` (the admin's own
        terminal, where two masked keys could not be told apart): these lines go to the
        journal, and `admin reload` sends them as a chat message, perhaps to another
        network's server."""
        shown = [f"{key}: {message}" for key, message in self.errors]
        return [mask_private(line) for line in shown] if masked else shown


@dataclass(frozen=True)
class BridgeSettings:
    listen_host: str
    listen_port: int
    url: str
    database: Path
    secret: bytes = field(repr=False)
    log_level: str
    durability: str = "full"
    log_format: str = "text"
    metrics_listen: tuple[str, int] | None = None  # /health and /metrics on their own listener
    unhealthy_after: float = 300.0  # seconds a homeserver may be silent before /health says 503
    command_prefix: str = "!tb"  # starts a bot command outside a management room
    default_country_code: str = ""  # for phone numbers typed without one; "" = require +
    max_media_bytes: int = 50 * 1024 * 1024  # files above this do not cross; the sender is told
    mirror_room_state: bool = True  # name, topic, avatar changes cross (a portal may say no)
    history_days: int = 7  # finished actions and transaction records are deleted after this


@dataclass(frozen=True)
class NetworkConfig:
    network: Network
    homeserver: str
    as_token: str = field(repr=False)
    hs_token: str = field(repr=False)

    @property
    def id(self) -> str:
        return self.network.id

    @property
    def appservice_id(self) -> str:
        """The registration's id; Synapse's ping endpoint is addressed by it."""
        return f"tribridge-{self.network.id}"


@dataclass(frozen=True)
class Config:
    path: Path
    bridge: BridgeSettings
    networks: Mapping[str, NetworkConfig]
    portals: tuple[Mapping[str, str], ...]
    permissions: Permissions = field(default_factory=lambda: Permissions({}))

    def secrets(self) -> list[str]:
        """Every token and secret, for the log filter that keeps them out of logs."""
        out = [self.bridge.secret.decode("utf-8", "replace")]
        for net in self.networks.values():
            out += [net.as_token, net.hs_token]
        return out


class _Checker:
    """Collects errors while reading a parsed TOML document."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.errors: list[tuple[str, str]] = []

    def error(self, key: str, message: str) -> None:
        self.errors.append((key, message))

    def table(self, doc: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, Mapping):
            self.error(path, "must be a table")
            return {}
        return value

    def unknown(self, table: Mapping[str, Any], known: set[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                hint = _closest(key, known)
                suffix = f" (did you mean {hint!r}?)" if hint else ""
                self.error(f"{prefix}{key}", f"unknown key{suffix}")

    def string(
        self,
        table: Mapping[str, Any],
        key: str,
        path: str,
        default: str | None = None,
        check: Callable[[str], str | None] | None = None,
    ) -> str | None:
        if key not in table:
            if default is None:
                self.error(path, "is required")
            return default
        value = table[key]
        if not isinstance(value, str):
            self.error(path, f"must be a string, not {type(value).__name__}")
            return None
        if check is not None:
            problem = check(value)
            if problem:
                self.error(path, problem)
                return None
        return value

    def path(self, value: str, key: str) -> Path | None:
        """`value` as a path relative to the config file; None (and an error) if unusable.

        ``${VAR}`` is expanded from the environment, so systemd's credentials work:
        ``as_token_file = "${CREDENTIALS_DIRECTORY}/wa_as_token"``.
        """
        if "\0" in value:
            self.error(key, "a path cannot contain a NUL character")
            return None
        expanded = os.path.expandvars(value)
        if "$" in expanded:
            hint = ""
            if "CREDENTIALS_DIRECTORY" in expanded:
                # systemd sets it for the service alone; an admin's shell must name the folder.
                hint = (" (systemd sets it for the service; in a shell, name the folder the "
                        "unit loads them from: CREDENTIALS_DIRECTORY=/etc/tribridge/creds)")
            self.error(key, f"an environment variable in {value!r} is not set{hint}")
            return None
        value = expanded
        try:
            p = Path(value).expanduser()
        except RuntimeError as exc:  # "~nosuchuser/..."
            self.error(key, f"cannot expand the path: {exc}")
            return None
        return p if p.is_absolute() else (self.base / p)

    def inline_or_file(
        self, table: Mapping[str, Any], key: str, prefix: str, what: str
    ) -> str | None:
        """A value given either inline (`key`) or in a file (`key_file`), exactly one of them."""
        has_inline, has_file = key in table, f"{key}_file" in table
        if has_inline and has_file:
            self.error(f"{prefix}{key}", f"give either {key} or {key}_file, not both")
            return None
        if not has_inline and not has_file:
            self.error(f"{prefix}{key}", f"is required (or {key}_file)")
            return None
        if has_inline:
            return self.string(table, key, f"{prefix}{key}")
        file_key = f"{prefix}{key}_file"
        name = self.string(table, f"{key}_file", file_key)
        path = self.path(name, file_key) if name is not None else None
        if path is None:
            return None
        try:
            if path.is_file() and path.stat().st_mode & 0o044:
                self.error(file_key, f"{path} is readable by group or others: chmod 600 it")
                return None
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.error(file_key, f"cannot read the {what} file: {exc.strerror or exc}")
        except UnicodeDecodeError:
            self.error(file_key, f"the {what} file is not UTF-8 text")
        return None


def _closest(word: str, choices: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.75)
    return found[0] if found else None


def _http_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError:
        return "not an http(s) URL"
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return "not an http(s) URL"
    if not value.isascii():
        return "not an http(s) URL (use the ASCII form of the host name)"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def _listen(value: str) -> str | None:
    return None if _split_host_port(value) else "must be host:port, e.g. 127.0.0.1:29330"


def _split_host_port(value: str) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return None
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        host = host[1:-1]
    return host, int(port)


def _listen_or_empty(value: str) -> str | None:
    return None if value == "" else _listen(value)


def _command_prefix(value: str) -> str | None:
    if not value or any(ch.isspace() for ch in value) or len(value) > 16:
        return "must be 1-16 characters without spaces or tabs, e.g. !tb"
    return None


def _country_code(value: str) -> str | None:
    digits = value.removeprefix("+")
    if value and not (digits.isascii() and digits.isdigit() and len(digits) <= 3
                      and not digits.startswith("0")):
        return "must be a country calling code such as 44 or +1 (or empty)"
    return None


def _token(value: str) -> str | None:
    if not _TOKEN.fullmatch(value):
        return "must be at least 16 printable ASCII characters without spaces"
    return None


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at `path`; raise ConfigError listing every problem."""
    path = Path(path)
    return parse_config(_read_toml(path), path.resolve())


def load_database_path(path: str | Path) -> Path:
    """Only `bridge.database` of the config file at `path`, for the `db` commands: they need
    no token, and an admin's shell has no $CREDENTIALS_DIRECTORY (systemd sets it for the
    daemon alone). Raises ConfigError naming what is wrong with that key or the file."""
    path = Path(path)
    doc = _read_toml(path)
    c = _Checker(path.resolve().parent)
    bridge = c.table(doc, "bridge", "bridge")
    database = c.string(bridge, "database", "bridge.database", default="tribridge.db")
    found = c.path(database, "bridge.database") if database is not None else None
    if c.errors or found is None:
        raise ConfigError(c.errors)
    return found


def load_network_ids(path: str | Path) -> list[str]:
    """The network ids the config file at `path` declares (its [networks] tables), read
    without checking the rest, for the `db` commands."""
    networks = _read_toml(Path(path)).get("networks")
    return sorted(networks) if isinstance(networks, Mapping) else []


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read the config file: {exc.strerror}")]) from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([(str(path), "the config file is not UTF-8 text")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(path), f"not valid TOML: {exc}")]) from exc


def parse_config(doc: Mapping[str, Any], path: Path) -> Config:
    c = _Checker(path.parent)
    c.unknown(doc, {"bridge", "networks", "portals", "permissions"}, "")
    bridge = _bridge(c, c.table(doc, "bridge", "bridge"))
    declared = c.table(doc, "networks", "networks")
    tokens: dict[str, str] = {}
    if bridge is not None:
        tokens[bridge.secret.decode("utf-8")] = "bridge.secret"
    networks = _networks(c, declared, tokens)
    # Portals are checked against every network the file declares, valid or not, so a broken
    # network gets its own error rather than "not a configured network" on its portals too.
    portals = _portals(c, doc.get("portals", []), set(declared))
    rules = _permissions(c, c.table(doc, "permissions", "permissions"))
    if c.errors or bridge is None:
        raise ConfigError(c.errors)
    servers = [net.network.server_name for net in networks.values()]
    return Config(
        path=path,
        bridge=bridge,
        networks=networks,
        portals=portals,
        permissions=Permissions.with_defaults(rules, servers),
    )


def _permissions(c: _Checker, t: Mapping[str, Any]) -> dict[str, Level]:
    rules: dict[str, Level] = {}
    for key, value in t.items():
        path = f"permissions.{key!r}" if "." in key else f"permissions.{key}"
        if not is_rule_key(key):
            c.error(path, "must be a user id (@alice:example.org), @*:server_name or *")
            continue
        if not isinstance(value, str):
            c.error(path, "must be one of none, relay, user, admin")
            continue
        try:
            rules[key] = Level.parse(value)
        except ValueError as exc:
            c.error(path, str(exc))
    return rules


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
               "G": 1024 ** 3, "GB": 1024 ** 3}


def _size(c: _Checker, value: object, key: str) -> int | None:
    """A size such as "50MB" or 1048576 (bytes); at least 1 kB, at most 1 GB (a file that
    comes without a length is held in memory while it is carried)."""
    size: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?B?)\s*", value.upper())
        if match:
            size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size is None or not 1024 <= size <= 1024 ** 3:
        c.error(key, 'must be a size between 1KB and 1GB, such as "50MB"')
        return None
    return int(size)


def _bridge(c: _Checker, t: Mapping[str, Any]) -> BridgeSettings | None:
    p = "bridge."
    c.unknown(
        t,
        {"listen", "url", "database", "secret", "secret_file", "log_level", "log_format",
         "durability", "metrics_listen", "unhealthy_after", "command_prefix",
         "default_country_code", "max_media_size", "mirror_room_state", "history_days"},
        p,
    )
    listen = c.string(t, "listen", p + "listen", check=_listen)
    url = c.string(t, "url", p + "url", default="", check=_http_url)
    database = c.string(t, "database", p + "database", default="tribridge.db")
    secret = c.inline_or_file(t, "secret", p, "secret")
    if secret is not None and len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        got = len(secret.encode("utf-8"))
        c.error(p + "secret", f"must be at least {MIN_SECRET_BYTES} bytes (got {got})")
        secret = None
    level = c.string(t, "log_level", p + "log_level", default="info")
    if level is not None and level.lower() not in LOG_LEVELS:
        c.error(p + "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    log_format = c.string(t, "log_format", p + "log_format", default="text")
    if log_format is not None and log_format not in ("text", "json"):
        c.error(p + "log_format", "must be text or json")
        log_format = None
    durability = c.string(t, "durability", p + "durability", default="full")
    if durability is not None and durability not in DURABILITY:
        c.error(p + "durability", f"must be one of {', '.join(DURABILITY)}")
        durability = None
    metrics_listen = c.string(t, "metrics_listen", p + "metrics_listen", default="",
                              check=_listen_or_empty)
    if metrics_listen and listen is not None and (
            _split_host_port(metrics_listen) == _split_host_port(listen)):
        c.error(p + "metrics_listen", "must differ from listen (a listener of its own)")
        metrics_listen = None
    unhealthy_after = t.get("unhealthy_after", 300)
    if isinstance(unhealthy_after, bool) or not isinstance(unhealthy_after, int | float) or not (
        unhealthy_after > 0
    ):
        c.error(p + "unhealthy_after", "must be a number of seconds above 0")
        unhealthy_after = None
    prefix = c.string(t, "command_prefix", p + "command_prefix", default="!tb",
                      check=_command_prefix)
    raw_country = t.get("default_country_code", "")
    if isinstance(raw_country, int) and not isinstance(raw_country, bool) and raw_country > 0:
        # Written as a number (default_country_code = 44): the digits are the same.
        t = {**t, "default_country_code": str(raw_country)}
    country = c.string(t, "default_country_code", p + "default_country_code", default="",
                       check=_country_code)
    max_media = _size(c, t.get("max_media_size", "50MB"), p + "max_media_size")
    mirror = t.get("mirror_room_state", True)
    if not isinstance(mirror, bool):
        c.error(p + "mirror_room_state", "must be true or false")
    history = t.get("history_days", 7)
    if isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= 3650:
        c.error(p + "history_days", "must be a whole number of days from 1 to 3650")
        history = None
    database_path = c.path(database, p + "database") if database is not None else None
    if (
        listen is None or url is None or database_path is None or secret is None
        or level is None or durability is None or metrics_listen is None
        or unhealthy_after is None or log_format is None or prefix is None or country is None
        or max_media is None or not isinstance(mirror, bool) or history is None
    ):
        return None
    host_port = _split_host_port(listen)
    assert host_port is not None
    host, port = host_port
    if not url:
        # Homeservers cannot reach a wildcard address; loopback is the common case.
        reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{'[' + reach + ']' if ':' in reach else reach}:{port}"
    return BridgeSettings(
        listen_host=host,
        listen_port=port,
        url=url.rstrip("/"),
        database=database_path,
        secret=secret.encode("utf-8"),
        log_level=level.lower(),
        durability=durability,
        log_format=log_format,
        metrics_listen=_split_host_port(metrics_listen) if metrics_listen else None,
        unhealthy_after=float(unhealthy_after),
        command_prefix=prefix,
        default_country_code=country.lstrip("+"),
        max_media_bytes=max_media,
        history_days=history,
        mirror_room_state=mirror,
    )


_NETWORK_KEYS = {
    "label", "homeserver", "server_name", "as_token", "as_token_file", "hs_token",
    "hs_token_file", "identity", "bot", "ghost_prefix", "expose_identity",
}  # fmt: skip


def _networks(
    c: _Checker, t: Mapping[str, Any], tokens: dict[str, str]
) -> dict[str, NetworkConfig]:
    """The valid networks of `t`; `tokens` gets every token read (first key path that used
    it), those of networks with other errors too."""
    out: dict[str, NetworkConfig] = {}
    if len(t) < 2:
        c.error("networks", f"at least two networks are needed to bridge (got {len(t)})")
    for net_id, table in t.items():
        p = f"networks.{net_id}."
        if not _NETWORK_ID.fullmatch(net_id):
            c.error(f"networks.{net_id}", "a network id is a lower-case letter, then up to 15 "
                    "lower-case letters and digits")
            continue
        if not isinstance(table, Mapping):
            c.error(f"networks.{net_id}", "must be a table")
            continue
        net = _network(c, net_id, table, p, tokens)
        if net is not None:
            out[net_id] = net
    _unique(c, out, lambda n: n.network.server_name, "server_name")
    return out


def _unique_token(c: _Checker, tokens: dict[str, str], path: str, token: str) -> None:
    """No token may serve twice anywhere in the file: an hs_token tells which network pushes, a
    token shared between two homeservers would let one's admin act as the other network, and
    the secret keys every pseudonym."""
    if token in tokens:
        c.error(path, f"same as {tokens[token]}: every token must be unique")
    else:
        tokens[token] = path


def _unique(
    c: _Checker,
    nets: Mapping[str, NetworkConfig],
    get: Callable[[NetworkConfig], str],
    key: str,
    why: str = "",
) -> None:
    seen: dict[str, str] = {}
    for net_id, net in nets.items():
        value = get(net)
        if value in seen:
            extra = f": {why}" if why else ""
            c.error(f"networks.{net_id}.{key}", f"same as networks.{seen[value]}.{key}{extra}")
        else:
            seen[value] = net_id


def _network(
    c: _Checker, net_id: str, t: Mapping[str, Any], p: str, tokens: dict[str, str]
) -> NetworkConfig | None:
    c.unknown(t, _NETWORK_KEYS, p)

    def localpart(value: str) -> str | None:
        return None if is_valid_localpart(value) else "only a-z 0-9 . _ = - / + are allowed"

    def server(value: str) -> str | None:
        return None if is_valid_server_name(value) else "not a server name (host or host:port)"

    def nonempty(value: str) -> str | None:
        return None if value.strip() else "must not be empty"

    label = c.string(t, "label", p + "label", check=nonempty)
    homeserver = c.string(t, "homeserver", p + "homeserver", check=_http_url)
    server_name = c.string(t, "server_name", p + "server_name", check=server)
    as_token = c.inline_or_file(t, "as_token", p, "token")
    hs_token = c.inline_or_file(t, "hs_token", p, "token")
    for key, token in (("as_token", as_token), ("hs_token", hs_token)):
        # Named by the key the admin wrote: the token's file, if it came from one.
        named = p + (key + "_file" if key + "_file" in t and key not in t else key)
        problem = _token(token) if token is not None else None
        if problem:
            c.error(named, problem)
        elif token is not None:
            _unique_token(c, tokens, named, token)
    identity = c.string(t, "identity", p + "identity")
    if identity is not None and identity not in IDENTITY_KINDS:
        c.error(p + "identity", f"must be one of {', '.join(IDENTITY_KINDS)}")
        identity = None
    bot = c.string(t, "bot", p + "bot", default="tribridge", check=localpart)
    prefix = c.string(t, "ghost_prefix", p + "ghost_prefix", default="_tb_", check=localpart)
    if bot is not None and prefix is not None and bot.startswith(prefix):
        c.error(p + "bot", f"must not start with the ghost_prefix {prefix!r}")
    expose = t.get("expose_identity", identity == "handle")
    if not isinstance(expose, bool):
        c.error(p + "expose_identity", "must be true or false")
    values = (label, homeserver, server_name, as_token, hs_token, identity, bot, prefix)
    if any(v is None for v in values) or not isinstance(expose, bool):
        return None
    if _token(as_token or "") or _token(hs_token or ""):
        return None
    assert label and homeserver and server_name and as_token and hs_token and identity
    assert bot is not None and prefix is not None
    return NetworkConfig(
        network=Network(
            id=net_id,
            label=label.strip(),
            server_name=server_name,
            identity=identity,
            bot=bot,
            ghost_prefix=prefix,
            expose_identity=expose,
        ),
        homeserver=homeserver.rstrip("/"),
        as_token=as_token,
        hs_token=hs_token,
    )


def _portals(c: _Checker, value: Any, networks: set[str]) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list):
        c.error("portals", "must be an array of tables ([[portals]])")
        return ()
    out: list[Mapping[str, str]] = []
    where: dict[tuple[str, str], int] = {}
    named: dict[str, str] = {}  # room id -> the first key that named it
    for i, entry in enumerate(value):
        p = f"portals[{i}]"
        if not isinstance(entry, Mapping):
            c.error(p, "must be a table mapping network ids to room ids")
            continue
        rooms: dict[str, str] = {}
        for net_id, room in entry.items():
            key = f"{p}.{net_id}"
            if net_id not in networks:
                known = ", ".join(sorted(networks)) or "none configured"
                c.error(key, f"not a configured network (known: {known})")
            elif not isinstance(room, str) or not room.startswith("!") or len(room) < 2:
                c.error(key, "must be a room id such as '!abc123:example.org'")
            elif (net_id, room) in where:
                c.error(key, f"room already in portals[{where[(net_id, room)]}]")
            elif room in named:
                # One room id on two networks is one room federated between their homeservers:
                # bridged to itself, its messages would go round and round.
                c.error(key, f"the same room as {named[room]}: a room federated between two "
                        "networks' homeservers is reached through one network only")
            else:
                where[(net_id, room)] = i
                named[room] = key
                rooms[net_id] = room
        if len(entry) < 2:
            c.error(p, "a portal links rooms on at least two networks")
        out.append(rooms)
    return tuple(out)
