"""The appservice registration file that stock Synapse accepts, one per network.

Written as YAML by hand (a handful of scalar keys) so the runtime needs no YAML library: every
string is single-quoted, which makes regex backslashes and token characters literal.
"""

from __future__ import annotations

import re

from bridge.config import Config, NetworkConfig


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def user_namespaces(net: NetworkConfig) -> list[str]:
    """Regexes for the users the bridge owns on `net`: its ghosts and its bot.

    Synapse applies them with ``re.match``, which anchors only the start: the trailing ``$`` keeps
    ``@tribridge:wa.example.org.evil.com`` out of our exclusive namespace.
    """
    server = re.escape(net.network.server_name)
    return [
        f"@{re.escape(net.network.ghost_prefix)}.*:{server}$",
        f"@{re.escape(net.network.bot)}:{server}$",
    ]


def registration_yaml(config: Config, network_id: str) -> str:
    net = config.networks[network_id]
    lines = [
        f"# Appservice registration for tribridge on {net.network.label} "
        f"({net.network.server_name}).",
        "# Give this file to Synapse in app_service_config_files. It holds secrets: readable "
        "by Synapse alone (e.g. mode 0640, group matrix-synapse). Write it again, and restart "
        "Synapse, whenever the config's tokens, url, bot, ghost_prefix or server_name change.",
        f"id: {_quote(net.appservice_id)}",
        f"url: {_quote(config.bridge.url)}",
        f"as_token: {_quote(net.as_token)}",
        f"hs_token: {_quote(net.hs_token)}",
        f"sender_localpart: {_quote(net.network.bot)}",
        "rate_limited: false",
        "receive_ephemeral: true",
        "namespaces:",
        "  users:",
    ]
    for regex in user_namespaces(net):
        lines += ["    - exclusive: true", f"      regex: {_quote(regex)}"]
    lines += ["  aliases: []", "  rooms: []", ""]
    return "\n".join(lines)
