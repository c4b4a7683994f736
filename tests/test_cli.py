"""The tribridge command line, run as a user runs it: `python -m bridge ...` in a subprocess."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge import __version__

ROOT = Path(__file__).resolve().parents[1]
SECRET = "cli-secret-0123456789abcdefghijklmnopq"
# Tokens with characters that YAML and TOML both treat specially, so quoting is exercised.
TOKENS = {
    "wa": ("as_wa'quote#hash:colon\\back", "hs_wa_0123456789abcdef"),
    "ig": ("as_ig_0123456789abcdef", 'hs_ig"dq-{brace}-[x]-&*!%@'),
    "fbm": ("as_fbm_0123456789abcdef", "hs_fbm_0123456789abcdef"),
}
ALL_SECRETS = [SECRET, *(t for pair in TOKENS.values() for t in pair)]
NETWORKS = (
    ("wa", "WhatsApp", "phone"),
    ("ig", "Instagram", "handle"),
    ("fbm", "Messenger", "email"),
)


def config_text(*, portal: bool = True, **bridge_overrides: str) -> str:
    bridge = {"listen": "127.0.0.1:29330", "secret": SECRET, **bridge_overrides}
    lines = ["[bridge]"] + [f"{k} = {json.dumps(v)}" for k, v in bridge.items()]
    for i, (net_id, label, identity) in enumerate(NETWORKS):
        lines += [
            f"[networks.{net_id}]",
            f"label = {json.dumps(label)}",
            f'homeserver = "http://127.0.0.1:{8008 + i}"',
            f'server_name = "{net_id}.localhost"',
            f"as_token = {json.dumps(TOKENS[net_id][0])}",
            f"hs_token = {json.dumps(TOKENS[net_id][1])}",
            f'identity = "{identity}"',
        ]
    if portal:
        lines += ["[[portals]]", 'wa = "!a:wa.localhost"', 'ig = "!b:ig.localhost"']
    return "\n".join(lines) + "\n"


BROKEN_KEYS = ("networks.ig.homeserver", "bridge.listen", "networks.wa.identity", "bridge.secret")


def broken_text() -> str:
    # No portal: a portal on a broken network adds an error of its own (see test_config.py).
    text = config_text(portal=False, listen="nope", secret="too-short")
    text = text.replace('homeserver = "http://127.0.0.1:8009"', 'homeserver = "ftp://x"')
    return text.replace('identity = "phone"', 'identity = "fax"')


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(config_text(), encoding="utf-8")
    return path


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(broken_text(), encoding="utf-8")
    return path


def tribridge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return tribridge_in(ROOT, *args)


def tribridge_in(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`python -m bridge ...` run from `cwd`, on this checkout's code wherever `cwd` is."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "bridge", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_no_secret(text: str) -> None:
    for secret in ALL_SECRETS:
        assert secret not in text


# --- version and help -----------------------------------------------------------------------


def test_version() -> None:
    result = tribridge("--version")
    assert result.returncode == 0
    assert result.stdout == f"tribridge {__version__}\n"
    assert re.fullmatch(r"tribridge \d+\.\d+\.\d+\n", result.stdout)


def test_help_lists_the_commands() -> None:
    result = tribridge("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: tribridge")
    for command in ("run", "check-config", "generate-registration", "demo"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("run", "--config"),
        ("check-config", "--config"),
        ("generate-registration", "--network"),
        ("demo", "--keep"),
    ],
)
def test_each_command_has_help(command: str, option: str) -> None:
    result = tribridge(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: tribridge {command}")
    assert option in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = tribridge()
    assert result.returncode == 2
    assert "usage: tribridge" in result.stderr


def test_config_option_is_required() -> None:
    result = tribridge("check-config")
    assert result.returncode == 2
    assert "--config" in result.stderr


# --- check-config ---------------------------------------------------------------------------


def test_check_config_good(good: Path) -> None:
    result = tribridge("check-config", "-c", good)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    summary = lines[0]
    assert summary.startswith("config OK")
    for net_id, label, _ in NETWORKS:
        assert f"{net_id} ({label}, {net_id}.localhost)" in summary
    assert "1 portal(s)" in summary
    assert "127.0.0.1:29330" in summary
    assert result.stderr == ""
    assert_no_secret(result.stdout)


def test_check_config_accepts_the_long_option(good: Path) -> None:
    result = tribridge("check-config", "--config", good)
    assert result.returncode == 0
    assert result.stdout.startswith("config OK")


def test_check_config_broken_names_every_key(broken: Path) -> None:
    result = tribridge("check-config", "-c", broken)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{len(BROKEN_KEYS)} error(s)" in result.stderr
    for key in BROKEN_KEYS:
        assert f"  {key}: " in result.stderr
    assert "networks.ig.homeserver: not an http(s) URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_secret(result.stderr)


def test_check_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "tribridge.toml"
    result = tribridge("check-config", "-c", missing)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "cannot read the config file" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config_text() + "[networks\n", encoding="utf-8")
    result = tribridge("check-config", "-c", path)
    assert result.returncode == 2
    assert f"{path}: not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_bad_url_is_an_error_not_a_crash(tmp_path: Path) -> None:
    # An unclosed IPv6 bracket: the URL cannot be parsed at all.
    path = tmp_path / "ipv6.toml"
    path.write_text(
        config_text().replace("http://127.0.0.1:8009", "http://[::1:8009"), encoding="utf-8"
    )
    result = tribridge("check-config", "-c", path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert "networks.ig.homeserver" in result.stderr


# --- generate-registration ------------------------------------------------------------------


def registration(good: Path, network: str) -> dict[str, object]:
    result = tribridge("generate-registration", "-c", good, "--network", network)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    loaded = yaml.safe_load(result.stdout)
    assert isinstance(loaded, dict)
    return loaded


def user_regexes(reg: dict[str, object]) -> list[str]:
    namespaces = reg["namespaces"]
    assert isinstance(namespaces, dict)
    users = namespaces["users"]
    assert isinstance(users, list)
    assert users
    assert all(entry["exclusive"] is True for entry in users)
    return [entry["regex"] for entry in users]


def test_generate_registration_is_yaml_synapse_can_use(good: Path) -> None:
    reg = registration(good, "wa")

    assert reg["id"] == "tribridge-wa"
    assert reg["url"] == "http://127.0.0.1:29330"
    assert reg["as_token"] == TOKENS["wa"][0]
    assert reg["hs_token"] == TOKENS["wa"][1]
    assert reg["sender_localpart"] == "tribridge"
    assert reg["rate_limited"] is False
    assert reg["receive_ephemeral"] is True
    assert len(user_regexes(reg)) == 2


@pytest.mark.parametrize("net_id", ["ig", "fbm"])
def test_generate_registration_other_networks(good: Path, net_id: str) -> None:
    reg = registration(good, net_id)
    assert reg["id"] == f"tribridge-{net_id}"
    assert (reg["as_token"], reg["hs_token"]) == TOKENS[net_id]


@pytest.mark.parametrize(
    ("user_id", "owned"),
    [
        ("@_tb_ig_abcdefghijklmnop:wa.localhost", True),
        ("@_tb_fbm_abcdefghijklmnop:wa.localhost", True),
        ("@tribridge:wa.localhost", True),
        ("@alice:wa.localhost", False),
        ("@+15551234567:wa.localhost", False),
        ("@tribridge2:wa.localhost", False),
        ("@_tb_ig_x:wa.localhost.evil.com", False),
        ("@_tb_ig_x:walocalhost", False),
        ("@_tb_ig_abcdefghijklmnop:ig.localhost", False),
        ("@tribridge:ig.localhost", False),
    ],
)
def test_registration_namespace_claims_only_the_bridge_users(
    good: Path, user_id: str, owned: bool
) -> None:
    regexes = user_regexes(registration(good, "wa"))
    assert any(re.fullmatch(regex, user_id) for regex in regexes) is owned


@pytest.mark.parametrize(
    "user_id",
    [
        "@_tb_ig_x:wa.localhost.evil.com",
        "@tribridge:wa.localhost.evil.com",
        "@tribridge:wa.localhost:8448",
    ],
)
def test_registration_namespace_as_synapse_applies_it(good: Path, user_id: str) -> None:
    # Synapse tests a namespace with `regex.match(user_id)` (synapse/appservice/__init__.py,
    # _matches_regex): anchored at the start only. The regexes must anchor their own end, or the
    # exclusive namespace also claims same-named users on other servers.
    regexes = user_regexes(registration(good, "wa"))
    assert not any(re.match(regex, user_id) for regex in regexes)


def test_generate_registration_unknown_network(good: Path) -> None:
    result = tribridge("generate-registration", "-c", good, "--network", "tg")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--network" in result.stderr
    assert "'tg'" in result.stderr
    assert "wa, ig, fbm" in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_registration_needs_a_network(good: Path) -> None:
    result = tribridge("generate-registration", "-c", good)
    assert result.returncode == 2
    assert "--network" in result.stderr
    assert result.stdout == ""


# --- a broken config stops every command ----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["run"], ["generate-registration", "--network", "wa"]],
    ids=["run", "generate-registration"],
)
def test_broken_config_stops_the_command_with_every_error(broken: Path, args: list[str]) -> None:
    result = tribridge(args[0], "-c", broken, *args[1:])
    assert result.returncode == 2
    assert result.stdout == ""
    for key in BROKEN_KEYS:
        assert f"  {key}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_secret(result.stderr)


def test_run_with_a_missing_config(tmp_path: Path) -> None:
    # Run from a folder of its own, the config named in another: a store made anyway (at the
    # default path, relative to either) would show up under tmp_path.
    workdir, confdir = tmp_path / "work", tmp_path / "etc"
    workdir.mkdir()
    confdir.mkdir()
    missing = confdir / "absent.toml"
    in_root_before = (ROOT / "tribridge.db").exists()
    result = tribridge_in(workdir, "run", "-c", missing)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("tribridge.db*"))
    assert (ROOT / "tribridge.db").exists() == in_root_before, "a store was made in the checkout"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"listen": "192.0.2.1:29331"},  # TEST-NET-1: no machine's own address
         "cannot listen on 192.0.2.1:29331: that address is not one of this machine's "
         "(bridge.listen)"),
        ({"listen": "no-such-host.invalid:29331"},
         "cannot listen on no-such-host.invalid:29331: the host name does not resolve"),
        ({"listen": "127.0.0.1:FREE", "metrics_listen": "192.0.2.1:29332"},
         "cannot listen on 192.0.2.1:29332: that address is not one of this machine's "
         "(bridge.metrics_listen)"),
    ],
)
def test_a_listener_that_cannot_be_bound_names_its_key(
    tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    path = tmp_path / "c.toml"
    with socket.socket() as probe:  # a port free now, for the listener that must work
        probe.bind(("127.0.0.1", 0))
        free = str(probe.getsockname()[1])
    overrides = {k: v.replace("FREE", free) for k, v in overrides.items()}
    path.write_text(config_text(portal=False, database=str(tmp_path / "t.db"), **overrides))
    result = tribridge("run", "-c", path)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_config_errors_name_people_on_a_terminal_and_mask_them_elsewhere(tmp_path: Path) -> None:
    # On the admin's own terminal two bad permission keys must be told apart; piped (the
    # journal, under ExecReload) the phone number is masked as in any log.
    import os
    import pty

    path = tmp_path / "c.toml"
    path.write_text(config_text() + '[permissions]\n"@+15551234567:wa.localhost" = "admn"\n')
    piped = tribridge("check-config", "-c", path)
    assert piped.returncode == 2
    assert "permissions.'@<phone>:wa.localhost': 'admn' is not a level" in piped.stderr
    assert "5551234567" not in piped.stderr
    leader, follower = pty.openpty()
    try:
        on_terminal = subprocess.run(
            [sys.executable, "-m", "bridge", "check-config", "-c", str(path)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=follower, timeout=60, check=False)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert on_terminal.returncode == 2
    assert b"permissions.'@+15551234567:wa.localhost': 'admn' is not a level" in shown
