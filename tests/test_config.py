"""bridge.config: TOML files in, a validated Config or one ConfigError naming every bad key out."""

from __future__ import annotations

import copy
import json
import operator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import Config, ConfigError, load_config, parse_config
from bridge.core.permissions import Level

SECRET = "bridge-secret-0123456789abcdefghijklmnop"  # 40 bytes
TOKENS = {
    "wa": ("as_wa_0123456789abcdef", "hs_wa_0123456789abcdef"),
    "ig": ("as_ig_0123456789abcdef", "hs_ig_0123456789abcdef"),
    "fbm": ("as_fbm_0123456789abcdef", "hs_fbm_0123456789abcdef"),
}
ALL_SECRETS = [SECRET, *(t for pair in TOKENS.values() for t in pair)]


def write_secret(path: Path, content: str | bytes) -> None:
    """A secret file as an admin should leave it: readable by its owner only."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    path.chmod(0o600)


def good_doc(*, portal: bool = True) -> dict[str, Any]:
    """A valid three-network config, as the TOML document it is written from.

    Tests that break a network leave the portal out (`portal=False`), so that only the broken
    key is reported; test_portal_on_a_broken_network_is_not_called_unknown covers the mix.
    """
    networks = {}
    for net_id, label, identity in (
        ("wa", "WhatsApp", "phone"),
        ("ig", "Instagram", "handle"),
        ("fbm", "Messenger", "email"),
    ):
        networks[net_id] = {
            "label": label,
            "homeserver": f"http://127.0.0.1:{8000 + len(networks)}",
            "server_name": f"{net_id}.localhost",
            "as_token": TOKENS[net_id][0],
            "hs_token": TOKENS[net_id][1],
            "identity": identity,
        }
    return {
        "bridge": {"listen": "127.0.0.1:29330", "secret": SECRET},
        "networks": networks,
        "portals": [{"wa": "!room1:wa.localhost", "ig": "!room1:ig.localhost"}] if portal else [],
    }


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    return repr(value)


def to_toml(doc: dict[str, Any]) -> str:
    """Enough of a TOML writer for these documents: tables of scalars and [[portals]]."""
    lines: list[str] = []
    for key, value in doc.items():
        if not isinstance(value, dict | list):
            lines.append(f"{key} = {_value(value)}")
    for section in ("bridge",):
        if section in doc:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_value(v)}" for k, v in doc[section].items()]
    for net_id, table in doc.get("networks", {}).items():
        lines.append(f"[networks.{json.dumps(net_id)}]")
        lines += [f"{k} = {_value(v)}" for k, v in table.items()]
    if isinstance(doc.get("permissions"), dict):
        lines.append("[permissions]")  # rule keys such as @*:wa.localhost must be quoted
        lines += [f"{json.dumps(k)} = {_value(v)}" for k, v in doc["permissions"].items()]
    for portal in doc.get("portals", []):
        lines.append("[[portals]]")
        lines += [f"{k} = {_value(v)}" for k, v in portal.items()]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, doc: dict[str, Any], name: str = "tribridge.toml") -> Path:
    path = tmp_path / name
    path.write_text(to_toml(doc), encoding="utf-8")
    return path


def errors_of(tmp_path: Path, doc: dict[str, Any]) -> dict[str, str]:
    """The {key path: message} of the ConfigError that loading `doc` must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, doc))
    return dict(info.value.errors)


# --- a good config --------------------------------------------------------------------------


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, good_doc()))

    assert isinstance(config, Config)
    assert config.path == (tmp_path / "tribridge.toml").resolve()
    assert list(config.networks) == ["wa", "ig", "fbm"]
    b = config.bridge
    assert (b.listen_host, b.listen_port) == ("127.0.0.1", 29330)
    assert b.url == "http://127.0.0.1:29330"
    assert b.database == tmp_path.resolve() / "tribridge.db"
    assert b.secret == SECRET.encode()
    assert b.log_level == "info"
    for net_id, net in config.networks.items():
        assert net.id == net_id
        assert net.network.bot == "tribridge"
        assert net.network.ghost_prefix == "_tb_"
        assert net.network.server_name == f"{net_id}.localhost"
        assert (net.as_token, net.hs_token) == TOKENS[net_id]
    assert config.networks["wa"].network.identity == "phone"
    assert config.networks["wa"].network.label == "WhatsApp"
    assert config.networks["wa"].homeserver == "http://127.0.0.1:8000"
    assert config.networks["wa"].network.expose_identity is False
    assert config.networks["ig"].network.expose_identity is True
    assert config.networks["fbm"].network.expose_identity is False
    assert [dict(p) for p in config.portals] == [
        {"wa": "!room1:wa.localhost", "ig": "!room1:ig.localhost"}
    ]


def test_explicit_settings_override_the_defaults(tmp_path: Path) -> None:
    doc = good_doc()
    doc["bridge"].update(url="https://bridge.example/", database="data/b.db", log_level="DEBUG")
    doc["networks"]["wa"].update(
        bot="wabot", ghost_prefix="wa_ghost_", expose_identity=True, homeserver="https://wa.ex/"
    )
    doc["networks"]["ig"]["expose_identity"] = False

    config = load_config(write(tmp_path, doc))

    assert config.bridge.url == "https://bridge.example"
    assert config.bridge.database == tmp_path.resolve() / "data" / "b.db"
    assert config.bridge.log_level == "debug"
    wa = config.networks["wa"]
    assert (wa.network.bot, wa.network.ghost_prefix) == ("wabot", "wa_ghost_")
    assert wa.network.bot_user_id == "@wabot:wa.localhost"
    assert wa.network.expose_identity is True
    assert wa.homeserver == "https://wa.ex"
    assert config.networks["ig"].network.expose_identity is False


def test_absolute_database_path_is_kept(tmp_path: Path) -> None:
    doc = good_doc()
    doc["bridge"]["database"] = str(tmp_path / "elsewhere" / "x.db")
    (tmp_path / "conf").mkdir()
    config = load_config(write(tmp_path / "conf", doc))
    assert config.bridge.database == tmp_path / "elsewhere" / "x.db"


@pytest.mark.parametrize(
    ("listen", "host", "port", "url"),
    [
        ("127.0.0.1:29330", "127.0.0.1", 29330, "http://127.0.0.1:29330"),
        ("0.0.0.0:8080", "0.0.0.0", 8080, "http://127.0.0.1:8080"),
        ("localhost:1", "localhost", 1, "http://localhost:1"),
        ("[::1]:65535", "::1", 65535, "http://[::1]:65535"),
    ],
)
def test_url_defaults_to_an_address_homeservers_can_reach(
    tmp_path: Path, listen: str, host: str, port: int, url: str
) -> None:
    doc = good_doc()
    doc["bridge"]["listen"] = listen
    config = load_config(write(tmp_path, doc))
    assert (config.bridge.listen_host, config.bridge.listen_port) == (host, port)
    assert config.bridge.url == url


def test_two_networks_are_enough(tmp_path: Path) -> None:
    doc = good_doc()
    del doc["networks"]["fbm"]
    doc["portals"] = []
    config = load_config(write(tmp_path, doc))
    assert sorted(config.networks) == ["ig", "wa"]
    assert config.portals == ()


def test_secret_and_tokens_from_files_relative_to_the_config(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "keys").mkdir(parents=True)
    write_secret((conf_dir / "keys" / "secret"), SECRET + "\n")
    write_secret((conf_dir / "keys" / "wa_as"), TOKENS["wa"][0] + "\n")
    write_secret((conf_dir / "keys" / "wa_hs"), TOKENS["wa"][1] + "\n")
    doc = good_doc()
    del doc["bridge"]["secret"]
    doc["bridge"]["secret_file"] = "keys/secret"
    wa = doc["networks"]["wa"]
    del wa["as_token"], wa["hs_token"]
    wa["as_token_file"] = "keys/wa_as"
    wa["hs_token_file"] = "keys/wa_hs"

    config = load_config(write(conf_dir, doc))

    assert config.bridge.secret == SECRET.encode()
    assert config.networks["wa"].as_token == TOKENS["wa"][0]
    assert config.networks["wa"].hs_token == TOKENS["wa"][1]


def test_a_bad_token_from_a_file_is_named_by_its_file_key(tmp_path: Path) -> None:
    write_secret(tmp_path / "wa_as", "short\n")
    write_secret(tmp_path / "wa_hs", TOKENS["ig"][1] + "\n")  # ig's hs_token again
    doc = good_doc()
    wa = doc["networks"]["wa"]
    del wa["as_token"], wa["hs_token"]
    wa["as_token_file"], wa["hs_token_file"] = "wa_as", "wa_hs"
    errors = errors_of(tmp_path, doc)
    assert set(errors) >= {"networks.wa.as_token_file"}
    assert any(k in errors for k in ("networks.wa.hs_token_file", "networks.ig.hs_token")), errors
    assert "networks.wa.as_token" not in errors and "networks.wa.hs_token" not in errors


def test_repr_of_a_config_holds_no_token_or_secret(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, good_doc()))
    text = repr(config) + str(config)
    assert "WhatsApp" in text  # the repr is real, not empty
    for secret in ALL_SECRETS:
        assert secret not in text
    assert sorted(config.secrets()) == sorted(ALL_SECRETS)


# --- errors ---------------------------------------------------------------------------------


def test_every_broken_key_is_reported_at_once(tmp_path: Path) -> None:
    doc = good_doc(portal=False)
    doc["networks"]["ig"]["homeserver"] = "ftp://x"
    doc["bridge"]["listen"] = "nope"
    doc["networks"]["wa"]["identity"] = "fax"
    doc["bridge"]["secret"] = "too-short"
    doc["bridge"]["log_levle"] = "debug"

    errors = errors_of(tmp_path, doc)

    assert set(errors) == {
        "networks.ig.homeserver",
        "bridge.listen",
        "networks.wa.identity",
        "bridge.secret",
        "bridge.log_levle",
    }
    assert errors["networks.ig.homeserver"] == "not an http(s) URL"
    assert "host:port" in errors["bridge.listen"]
    assert "phone, handle, email" in errors["networks.wa.identity"]
    assert "at least 32 bytes" in errors["bridge.secret"]
    assert errors["bridge.log_levle"] == "unknown key (did you mean 'log_level'?)"


def test_config_error_message_lists_key_paths(tmp_path: Path) -> None:
    doc = good_doc(portal=False)
    doc["networks"]["ig"]["homeserver"] = "ftp://x"
    doc["bridge"]["listen"] = "nope"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, doc))
    assert "networks.ig.homeserver: not an http(s) URL" in str(info.value)
    assert "networks.ig.homeserver: not an http(s) URL" in info.value.lines()
    assert any(line.startswith("bridge.listen: ") for line in info.value.lines())


def test_unknown_key_far_from_any_known_key_has_no_hint(tmp_path: Path) -> None:
    doc = good_doc()
    doc["networks"]["fbm"]["zzzz"] = 1
    doc["colour"] = "blue"
    errors = errors_of(tmp_path, doc)
    assert errors == {"networks.fbm.zzzz": "unknown key", "colour": "unknown key"}


def test_unknown_network_key_gets_a_hint(tmp_path: Path) -> None:
    doc = good_doc()
    doc["networks"]["fbm"]["homeservr"] = "http://x"
    errors = errors_of(tmp_path, doc)
    assert errors == {"networks.fbm.homeservr": "unknown key (did you mean 'homeserver'?)"}


@pytest.mark.parametrize(
    "key",
    ["label", "homeserver", "server_name", "identity"],
)
def test_missing_required_network_key_is_named(tmp_path: Path, key: str) -> None:
    doc = good_doc(portal=False)
    del doc["networks"]["ig"][key]
    assert errors_of(tmp_path, doc) == {f"networks.ig.{key}": "is required"}


def test_missing_listen_and_secret_are_named(tmp_path: Path) -> None:
    doc = good_doc()
    doc["bridge"] = {}
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"bridge.listen", "bridge.secret"}
    assert "secret_file" in errors["bridge.secret"]


def test_portal_on_a_broken_network_is_not_called_unknown(tmp_path: Path) -> None:
    # [networks.ig] is in the file, only its homeserver is wrong: that is the one error to fix.
    doc = good_doc()
    doc["networks"]["ig"]["homeserver"] = "ftp://x"
    errors = errors_of(tmp_path, doc)
    assert errors == {"networks.ig.homeserver": "not an http(s) URL"}


def test_duplicate_hs_token_across_networks(tmp_path: Path) -> None:
    doc = good_doc()
    doc["networks"]["ig"]["hs_token"] = TOKENS["wa"][1]
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"networks.ig.hs_token"}
    assert errors["networks.ig.hs_token"].startswith("same as networks.wa.hs_token")


def test_duplicate_server_name_across_networks(tmp_path: Path) -> None:
    doc = good_doc()
    doc["networks"]["fbm"]["server_name"] = "wa.localhost"
    errors = errors_of(tmp_path, doc)
    assert errors == {"networks.fbm.server_name": "same as networks.wa.server_name"}


def test_as_token_equal_to_hs_token(tmp_path: Path) -> None:
    doc = good_doc()
    doc["networks"]["fbm"]["hs_token"] = TOKENS["fbm"][0]
    assert errors_of(tmp_path, doc) == {
        "networks.fbm.hs_token": "same as networks.fbm.as_token: every token must be unique"
    }


def test_a_token_shared_across_networks_is_refused(tmp_path: Path) -> None:
    doc = good_doc()
    doc["networks"]["ig"]["as_token"] = TOKENS["wa"][1]  # wa's hs_token
    assert errors_of(tmp_path, doc) == {
        "networks.ig.as_token": "same as networks.wa.hs_token: every token must be unique"
    }


def test_one_room_on_two_networks_is_refused(tmp_path: Path) -> None:
    # A room federated between two bridged homeservers, bridged to itself, would loop.
    doc = good_doc()
    doc["portals"] = [{"wa": "!same:wa.localhost", "ig": "!same:wa.localhost"}]
    assert errors_of(tmp_path, doc) == {
        "portals[0].ig": "the same room as portals[0].wa: a room federated between two "
                         "networks' homeservers is reached through one network only"
    }


def test_every_problem_is_reported_at_once_across_networks(tmp_path: Path) -> None:
    # The doc's own example: a broken network's token still counts against the others.
    doc = good_doc()
    doc["bridge"]["listen"] = "nowhere"
    doc["networks"]["ig"]["homeserver"] = "ftp://x"
    doc["networks"]["ig"]["hs_token"] = TOKENS["wa"][1]
    assert errors_of(tmp_path, doc) == {
        "bridge.listen": "must be host:port, e.g. 127.0.0.1:29330",
        "networks.ig.homeserver": "not an http(s) URL",
        "networks.ig.hs_token": "same as networks.wa.hs_token: every token must be unique",
    }


def test_the_secret_may_not_be_a_token(tmp_path: Path) -> None:
    doc = good_doc()
    doc["networks"]["wa"]["as_token"] = doc["bridge"]["secret"]
    assert errors_of(tmp_path, doc) == {
        "networks.wa.as_token": "same as bridge.secret: every token must be unique"
    }


@pytest.mark.parametrize(
    "token", ["short-token", "has a space in it ok", "tab\tin-the-token-x", ""]
)
def test_weak_or_malformed_token_is_refused(tmp_path: Path, token: str) -> None:
    doc = good_doc(portal=False)
    doc["networks"]["wa"]["as_token"] = token
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"networks.wa.as_token"}
    assert "at least 16 printable ASCII" in errors["networks.wa.as_token"]


@pytest.mark.parametrize("keep", [[], ["wa"]])
def test_fewer_than_two_networks(tmp_path: Path, keep: list[str]) -> None:
    doc = good_doc()
    doc["networks"] = {k: v for k, v in doc["networks"].items() if k in keep}
    doc["portals"] = []
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"networks"}
    assert f"at least two networks are needed to bridge (got {len(keep)})" in errors["networks"]


def test_secret_and_secret_file_both_given(tmp_path: Path) -> None:
    write_secret((tmp_path / "secret"), SECRET)
    doc = good_doc()
    doc["bridge"]["secret_file"] = "secret"
    errors = errors_of(tmp_path, doc)
    assert errors == {"bridge.secret": "give either secret or secret_file, not both"}


def test_both_token_and_token_file_given(tmp_path: Path) -> None:
    write_secret((tmp_path / "tok"), TOKENS["ig"][0])
    doc = good_doc(portal=False)
    doc["networks"]["ig"]["as_token_file"] = "tok"
    errors = errors_of(tmp_path, doc)
    assert errors == {"networks.ig.as_token": "give either as_token or as_token_file, not both"}


def test_unreadable_secret_file(tmp_path: Path) -> None:
    doc = good_doc()
    del doc["bridge"]["secret"]
    doc["bridge"]["secret_file"] = "no-such-secret"
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"bridge.secret_file"}
    assert errors["bridge.secret_file"].startswith("cannot read the secret file")
    assert "No such file" in errors["bridge.secret_file"]


def test_secret_file_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    doc = good_doc()
    del doc["bridge"]["secret"]
    doc["bridge"]["secret_file"] = "keys"
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"bridge.secret_file"}
    assert errors["bridge.secret_file"].startswith("cannot read the secret file")


def test_secret_file_that_is_not_utf8(tmp_path: Path) -> None:
    write_secret((tmp_path / "secret"), b"\xff\xfe" * 20)
    doc = good_doc()
    del doc["bridge"]["secret"]
    doc["bridge"]["secret_file"] = "secret"
    assert errors_of(tmp_path, doc) == {"bridge.secret_file": "the secret file is not UTF-8 text"}


def test_short_secret_in_a_file(tmp_path: Path) -> None:
    write_secret((tmp_path / "secret"), "short\n")
    doc = good_doc()
    del doc["bridge"]["secret"]
    doc["bridge"]["secret_file"] = "secret"
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"bridge.secret"}
    assert "at least 32 bytes" in errors["bridge.secret"]


def test_portal_naming_an_unknown_network(tmp_path: Path) -> None:
    doc = good_doc()
    doc["portals"] = [{"wa": "!a:wa.localhost", "tg": "!b:tg.localhost"}]
    errors = errors_of(tmp_path, doc)
    assert errors == {"portals[0].tg": "not a configured network (known: fbm, ig, wa)"}


@pytest.mark.parametrize("room", ["#alias:wa.localhost", "@alice:wa.localhost", "!", "", 7])
def test_portal_with_something_other_than_a_room_id(tmp_path: Path, room: object) -> None:
    doc = good_doc()
    doc["portals"] = [{"wa": room, "ig": "!b:ig.localhost"}]
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"portals[0].wa"}
    assert "must be a room id" in errors["portals[0].wa"]


def test_room_used_in_two_portals(tmp_path: Path) -> None:
    doc = good_doc()
    doc["portals"] = [
        {"wa": "!a:wa.localhost", "ig": "!b:ig.localhost"},
        {"wa": "!c:wa.localhost", "fbm": "!d:fbm.localhost"},
        {"fbm": "!e:fbm.localhost", "ig": "!b:ig.localhost"},
    ]
    errors = errors_of(tmp_path, doc)
    assert errors == {"portals[2].ig": "room already in portals[0]"}


def test_portal_with_one_room(tmp_path: Path) -> None:
    doc = good_doc()
    doc["portals"] = [{"wa": "!a:wa.localhost"}]
    errors = errors_of(tmp_path, doc)
    assert errors == {"portals[0]": "a portal links rooms on at least two networks"}


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[bridge]\nlisten = "127.0.0.1:1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [(key, message)] = info.value.errors
    assert key == str(path)
    assert message.startswith("not valid TOML")
    assert "line 2" in message


def test_config_file_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[bridge]\nlisten = "caf\u00e9:1"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [(str(path), "the config file is not UTF-8 text")]


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [(key, message)] = info.value.errors
    assert key == str(path)
    assert "cannot read the config file" in message


@pytest.mark.parametrize("net_id", ["WA", "1wa", "w_a", "w-a", "abcdefghijklmnopq", ""])
def test_bad_network_id(tmp_path: Path, net_id: str) -> None:
    doc = good_doc()
    doc["networks"][net_id] = doc["networks"].pop("fbm")
    errors = errors_of(tmp_path, doc)
    assert errors == {f"networks.{net_id}": "a network id is a lower-case letter, then up to 15 "
                                            "lower-case letters and digits"}


def test_sixteen_character_network_id_is_fine(tmp_path: Path) -> None:
    doc = good_doc()
    doc["networks"]["abcdefghijklmno6"] = doc["networks"].pop("fbm")
    assert "abcdefghijklmno6" in load_config(write(tmp_path, doc)).networks


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("server_name", "wa localhost", "not a server name (host or host:port)"),
        ("bot", "Bot", "only a-z 0-9 . _ = - / + are allowed"),
        ("ghost_prefix", "", "only a-z 0-9 . _ = - / + are allowed"),
        ("bot", "_tb_bot", "must not start with the ghost_prefix '_tb_'"),
        ("expose_identity", "yes", "must be true or false"),
        ("label", "  ", "must not be empty"),
        ("label", 3, "must be a string, not int"),
        ("homeserver", "http://wa.localhost/?x=1", "must not have a query or fragment"),
    ],
)
def test_bad_network_values_are_named(
    tmp_path: Path, key: str, value: object, expected: str
) -> None:
    doc = good_doc(portal=False)
    doc["networks"]["wa"][key] = value
    assert errors_of(tmp_path, doc) == {f"networks.wa.{key}": expected}


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x",
        "nope",
        "http://",
        "//wa.localhost",
        "http://[::1",  # an unclosed IPv6 bracket
        "http://wa.localhost:99999",  # a port out of range
        "http://wa\uff03localhost",  # a netloc that changes under NFKC normalisation
    ],
)
def test_homeserver_that_is_not_a_usable_url(tmp_path: Path, url: str) -> None:
    doc = good_doc(portal=False)
    doc["networks"]["ig"]["homeserver"] = url
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"networks.ig.homeserver"}


@pytest.mark.parametrize(
    "listen",
    [
        "nope",
        "127.0.0.1",
        "127.0.0.1:",
        ":8080",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "[::1:8080",
        "127.0.0.1:\u00b2",  # a superscript two: str.isdigit() says yes, int() says no
        "127.0.0.1:\u0668\u0660",  # Arabic-Indic digits, not the port a user can type in a URL
    ],
)
def test_listen_that_is_not_host_and_port(tmp_path: Path, listen: str) -> None:
    doc = good_doc()
    doc["bridge"]["listen"] = listen
    assert errors_of(tmp_path, doc) == {"bridge.listen": "must be host:port, e.g. 127.0.0.1:29330"}


def test_bad_log_level_and_url(tmp_path: Path) -> None:
    doc = good_doc()
    doc["bridge"].update(log_level="verbose", url="gopher://x")
    errors = errors_of(tmp_path, doc)
    assert errors == {
        "bridge.log_level": "must be one of debug, info, warning, error",
        "bridge.url": "not an http(s) URL",
    }


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("secret_file", "secret\x00file"),  # a NUL byte, written in TOML as \u0000
        ("secret_file", "~no-such-user-tribridge/secret"),  # a user with no home folder
        ("database", "~no-such-user-tribridge/tribridge.db"),
    ],
)
def test_unusable_path_is_a_config_error(tmp_path: Path, key: str, name: str) -> None:
    doc = good_doc()
    if key == "secret_file":
        del doc["bridge"]["secret"]
    doc["bridge"][key] = name
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {f"bridge.{key}"}


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "shapes.toml"
    path.write_text(
        'bridge = "x"\nportals = 3\n[networks]\nwa = 1\nig = [1, 2]\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = dict(info.value.errors)
    assert errors["bridge"] == "must be a table"
    assert errors["portals"] == "must be an array of tables ([[portals]])"
    assert errors["networks.wa"] == "must be a table"
    assert errors["networks.ig"] == "must be a table"


# --- permissions, command prefix, default country code -------------------------------------


def test_permission_rules_are_read_on_top_of_the_defaults(tmp_path: Path) -> None:
    doc = good_doc()
    doc["permissions"] = {
        "@alice:wa.localhost": "admin",
        "@*:ig.localhost": "relay",
        "@mallory:fbm.localhost": "none",
        "*": "none",
    }
    levels = load_config(write(tmp_path, doc)).permissions
    assert levels.level("@alice:wa.localhost") is Level.ADMIN
    assert levels.level("@bob:wa.localhost") is Level.USER  # the default for wa's own users
    assert levels.level("@carol:ig.localhost") is Level.RELAY
    assert levels.level("@mallory:fbm.localhost") is Level.NONE
    assert levels.level("@dave:fbm.localhost") is Level.USER
    assert levels.level("@eve:matrix.org") is Level.NONE


def test_levels_are_read_in_any_case(tmp_path: Path) -> None:
    doc = good_doc()
    doc["permissions"] = {"@alice:wa.localhost": "Admin"}
    config = load_config(write(tmp_path, doc))
    assert config.permissions.level("@alice:wa.localhost") is Level.ADMIN


def test_without_permissions_own_users_are_users_and_others_relay(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, good_doc()))
    for net in config.networks.values():
        assert config.permissions.level(f"@x:{net.network.server_name}") is Level.USER
    assert config.permissions.level("@x:matrix.org") is Level.RELAY
    assert config.permissions.level("@x:wa.localhost.example") is Level.RELAY


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("alice", "permissions.alice"),
        ("@alice", "permissions.@alice"),
        ("alice:wa.localhost", "permissions.'alice:wa.localhost'"),
        ("@:wa.localhost", "permissions.'@:wa.localhost'"),
    ],
)
def test_a_permission_key_that_is_not_a_rule_is_named(tmp_path: Path, key: str, path: str) -> None:
    doc = good_doc()
    doc["permissions"] = {key: "admin", "@bob:wa.localhost": "user"}
    assert errors_of(tmp_path, doc) == {
        path: "must be a user id (@alice:example.org), @*:server_name or *"
    }


def test_a_bad_permission_level_is_named(tmp_path: Path) -> None:
    doc = good_doc()
    doc["permissions"] = {"@bob:wa.localhost": "superuser", "*": 3, "@*:ig.localhost": "relay"}
    assert errors_of(tmp_path, doc) == {
        "permissions.'@bob:wa.localhost'":
            "'superuser' is not a level: use none, relay, user or admin",
        "permissions.*": "must be one of none, relay, user, admin",
    }


def test_metrics_listen_on_the_listen_address_is_refused(tmp_path: Path) -> None:
    doc = good_doc()
    doc["bridge"]["metrics_listen"] = doc["bridge"]["listen"]
    assert errors_of(tmp_path, doc) == {
        "bridge.metrics_listen": "must differ from listen (a listener of its own)"}


def test_an_error_shown_does_not_carry_a_phone_number_or_email(tmp_path: Path) -> None:
    # The lines go to the journal (tribridge run) and, by admin reload, into a chat.
    doc = good_doc()
    doc["permissions"] = {"@+15551234567:wa.localhost": "admn",
                          "@carol=40example.com:fbm.localhost": "boss"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, doc))
    shown = "\n".join(info.value.lines())
    assert "5551234567" not in shown and "example.com" not in shown
    assert "permissions.'@<phone>:wa.localhost': 'admn' is not a level" in shown
    assert "permissions.'@<email>:fbm.localhost': 'boss' is not a level" in shown


def test_permissions_must_be_a_table(tmp_path: Path) -> None:
    doc = good_doc()
    doc["permissions"] = "admin"
    assert errors_of(tmp_path, doc) == {"permissions": "must be a table"}


def test_permission_errors_are_reported_with_the_others(tmp_path: Path) -> None:
    doc = good_doc()
    doc["permissions"] = {"alice": "admin"}
    doc["bridge"]["listen"] = "nope"
    doc["bridge"]["command_prefix"] = "! tb"
    assert set(errors_of(tmp_path, doc)) == {
        "permissions.alice", "bridge.listen", "bridge.command_prefix"
    }


def test_command_prefix_and_country_code_defaults(tmp_path: Path) -> None:
    bridge = load_config(write(tmp_path, good_doc())).bridge
    assert bridge.command_prefix == "!tb"
    assert bridge.default_country_code == ""


@pytest.mark.parametrize("prefix", ["!bridge", "tb:", "!" * 16])
def test_a_command_prefix_is_kept(tmp_path: Path, prefix: str) -> None:
    doc = good_doc()
    doc["bridge"]["command_prefix"] = prefix
    assert load_config(write(tmp_path, doc)).bridge.command_prefix == prefix


@pytest.mark.parametrize(
    "prefix", ["! tb", " !tb", "!tb ", "", "!" * 17, "\t!tb", "!t\tb", "!t\u00a0b"]
)
def test_a_command_prefix_with_spaces_is_refused(tmp_path: Path, prefix: str) -> None:
    doc = good_doc()
    doc["bridge"]["command_prefix"] = prefix
    assert errors_of(tmp_path, doc) == {
        "bridge.command_prefix": "must be 1-16 characters without spaces or tabs, e.g. !tb"
    }


@pytest.mark.parametrize(
    ("code", "kept"), [("44", "44"), ("+1", "1"), ("1", "1"), ("", ""), (44, "44"), (1, "1")])
def test_a_default_country_code_is_accepted(tmp_path: Path, code: object, kept: str) -> None:
    doc = good_doc()
    doc["bridge"]["default_country_code"] = code
    assert load_config(write(tmp_path, doc)).bridge.default_country_code == kept


@pytest.mark.parametrize("code", ["0", "abc", "1234", "+", "+0", "044", "4 4", 0, 1234, True])
def test_a_bad_default_country_code_is_refused(tmp_path: Path, code: object) -> None:
    doc = good_doc()
    doc["bridge"]["default_country_code"] = code
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"bridge.default_country_code"}
    expected = (
        f"must be a string, not {type(code).__name__}" if code in (0, True)
        else "must be a country calling code such as 44 or +1 (or empty)"
    )
    assert errors["bridge.default_country_code"] == expected


# --- no secret in an error ------------------------------------------------------------------


def _broken_docs() -> list[dict[str, Any]]:
    docs = []
    doc = good_doc()
    doc["networks"]["ig"]["hs_token"] = TOKENS["wa"][1]  # duplicate hs_token
    doc["networks"]["fbm"]["as_token"] = TOKENS["wa"][0]  # duplicate as_token
    docs.append(doc)
    doc = good_doc()
    doc["networks"]["wa"]["hs_token"] = TOKENS["wa"][0]  # as_token == hs_token
    doc["bridge"]["listen"] = "nope"  # and another error beside it
    docs.append(doc)
    doc = good_doc()
    doc["bridge"]["secret"] = SECRET[:20]  # too short
    doc["networks"]["ig"]["as_token"] = TOKENS["ig"][0] + " x"  # has a space
    doc["networks"]["fbm"]["hs_token"] = TOKENS["fbm"][1][:12]  # too short
    docs.append(doc)
    doc = good_doc()
    doc["networks"]["wa"]["as_token"] = 1234567890123456789  # not a string
    doc["networks"]["wa"][TOKENS["wa"][1][:10]] = "x"  # an unknown key
    docs.append(doc)
    return docs


@pytest.mark.parametrize("index", range(len(_broken_docs())))
def test_config_error_never_shows_a_token_or_the_secret(tmp_path: Path, index: int) -> None:
    doc = _broken_docs()[index]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, doc))
    text = str(info.value) + "\n".join(info.value.lines()) + repr(info.value)
    assert info.value.errors
    for secret in [*ALL_SECRETS, SECRET[:20], TOKENS["fbm"][1][:12], "1234567890123456"]:
        assert secret not in text


def test_invalid_toml_error_never_shows_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(f'[bridge]\nsecret = "{SECRET}" oops\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert SECRET not in str(info.value)


# --- any document: a Config or a ConfigError ------------------------------------------------

_KEYS = [
    "bridge", "networks", "portals", "listen", "url", "database", "secret", "secret_file",
    "log_level", "label", "homeserver", "server_name", "as_token", "as_token_file", "hs_token",
    "hs_token_file", "identity", "bot", "ghost_prefix", "expose_identity", "wa", "ig", "fbm",
    "permissions", "command_prefix", "default_country_code", "*", "@*:wa.localhost",
]  # fmt: skip
_PREFIXES = ["http://", "https://", "http://[", "127.0.0.1:", "[::1]:", "~", "!", "@", "/"]

keys = st.sampled_from(_KEYS) | st.text(max_size=12)
strings = (
    st.text(max_size=40)
    | st.builds(operator.add, st.sampled_from(_PREFIXES), st.text(max_size=20))
    | st.sampled_from(["phone", "handle", "email", "info", "0123456789abcdefXYZ", SECRET])
    | st.sampled_from(["admin", "user", "relay", "none", "!tb", "44", "+1"])
)
scalars = (
    strings | st.integers() | st.floats() | st.booleans() | st.datetimes() | st.dates() | st.times()
)
toml_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
    max_leaves=20,
)
documents = st.dictionaries(keys, toml_values, max_size=4)

CONFIG_PATH = Path("/nonexistent-tribridge-dir/tribridge.toml")


def _parse_or_config_error(doc: dict[str, Any]) -> None:
    try:
        result = parse_config(doc, CONFIG_PATH)
    except ConfigError as exc:
        assert exc.errors
        assert all(isinstance(k, str) and isinstance(m, str) for k, m in exc.errors)
    else:
        assert isinstance(result, Config)


@settings(max_examples=200, deadline=None)
@given(documents)
def test_any_document_gives_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    _parse_or_config_error(doc)


_LEAVES = [
    ("bridge", k)
    for k in (
        "listen", "url", "database", "secret", "log_level", "command_prefix",
        "default_country_code",
    )
] + [
    ("networks", "ig", k)
    for k in ("label", "homeserver", "server_name", "as_token", "hs_token", "identity", "bot")
]


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [*_LEAVES, ("bridge", "secret_file"), ("networks", "wa", "expose_identity")]
            ),
            strings | strings | scalars | toml_values,  # toml_values alone: mostly containers
        ),
        min_size=1,
        max_size=4,
    )
)
def test_a_good_config_with_any_values_swapped_in_never_crashes(
    changes: list[tuple[tuple[str, ...], Any]],
) -> None:
    doc = copy.deepcopy(good_doc())
    for where, value in changes:
        table = doc
        for part in where[:-1]:
            table = table[part]
        table[where[-1]] = value
        if where == ("bridge", "secret_file"):
            doc["bridge"].pop("secret", None)
    _parse_or_config_error(doc)


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "secret").chmod(0o644)
    doc = good_doc()
    del doc["bridge"]["secret"]
    doc["bridge"]["secret_file"] = "secret"
    errors = errors_of(tmp_path, doc)
    assert set(errors) == {"bridge.secret_file"}
    assert "readable by group or others: chmod 600" in errors["bridge.secret_file"]


def test_token_files_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    write_secret(creds / "wa_as_token", TOKENS["wa"][0])
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    doc = good_doc()
    del doc["networks"]["wa"]["as_token"]
    doc["networks"]["wa"]["as_token_file"] = "${CREDENTIALS_DIRECTORY}/wa_as_token"
    path = tmp_path / "c.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    assert load_config(path).networks["wa"].as_token == TOKENS["wa"][0]
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert errors_of(tmp_path, doc) == {
        "networks.wa.as_token_file":
            "an environment variable in '${CREDENTIALS_DIRECTORY}/wa_as_token' is not set "
            "(systemd sets it for the service; in a shell, name the folder the unit loads them "
            "from: CREDENTIALS_DIRECTORY=/etc/tribridge/creds)"
    }


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["*", "@*:wa.localhost", "@a:ig.localhost", "a", "@a"]) | keys,
        strings | scalars,
        max_size=5,
    )
)
def test_any_permissions_table_gives_a_config_or_names_its_keys(rules: dict[str, Any]) -> None:
    doc = good_doc()
    doc["permissions"] = rules
    try:
        config = parse_config(doc, CONFIG_PATH)
    except ConfigError as exc:
        assert all(key.startswith("permissions") for key, _ in exc.errors), exc.errors
    else:
        for key in rules:
            assert config.permissions.rules[key] is Level.parse(rules[key])


def test_media_limit_and_state_mirroring_defaults(tmp_path: Path) -> None:
    bridge = load_config(write(tmp_path, good_doc())).bridge
    assert bridge.max_media_bytes == 50 * 1024 * 1024
    assert bridge.mirror_room_state is True


@pytest.mark.parametrize(
    ("size", "nbytes"),
    [("50MB", 50 * 1024 ** 2), ("512KB", 512 * 1024), ("0.5 GB", 512 * 1024 ** 2),
     ("2048", 2048), (1_000_000, 1_000_000), ("64kb", 64 * 1024), ("50M", 50 * 1024 ** 2),
     ("2K", 2048), ("1G", 1024 ** 3)],
)
def test_a_media_size_limit_is_read(tmp_path: Path, size: object, nbytes: int) -> None:
    doc = good_doc()
    doc["bridge"]["max_media_size"] = size
    assert load_config(write(tmp_path, doc)).bridge.max_media_bytes == nbytes


@pytest.mark.parametrize("size", ["lots", "-5MB", "10", "5TB", "2GB", True, 1.5, "MB", "5X"])
def test_a_bad_media_size_limit_is_named(tmp_path: Path, size: object) -> None:
    doc = good_doc()
    doc["bridge"]["max_media_size"] = size
    assert errors_of(tmp_path, doc) == {
        "bridge.max_media_size": 'must be a size between 1KB and 1GB, such as "50MB"'
    }


def test_state_mirroring_must_be_a_boolean(tmp_path: Path) -> None:
    doc = good_doc()
    doc["bridge"]["mirror_room_state"] = "yes"
    assert errors_of(tmp_path, doc) == {"bridge.mirror_room_state": "must be true or false"}
    doc["bridge"]["mirror_room_state"] = False
    assert load_config(write(tmp_path, doc)).bridge.mirror_room_state is False


def test_history_is_kept_a_week_unless_told(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, good_doc())).bridge.history_days == 7
    doc = good_doc()
    doc["bridge"]["history_days"] = 30
    assert load_config(write(tmp_path, doc)).bridge.history_days == 30


@pytest.mark.parametrize("days", [0, -1, 3651, 1.5, "7", True, "7d"])
def test_a_bad_history_length_is_named(tmp_path: Path, days: object) -> None:
    doc = good_doc()
    doc["bridge"]["history_days"] = days
    assert errors_of(tmp_path, doc) == {
        "bridge.history_days": "must be a whole number of days from 1 to 3650"
    }
