"""Three local networks (wa, ig, fbm), each a real Synapse, plus a tribridge config for them.

The appservice registrations are made by tribridge's own `registration_yaml`, the code behind
`tribridge generate-registration`, so the demo and the tests exercise what an admin would use.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.config import load_config
from bridge.localnet.synapse import Synapse, free_port, start_all
from bridge.matrix.registration import registration_yaml

# (id, label, server name, identity kind)
NETWORKS = (
    ("wa", "WhatsApp", "wa.localhost", "phone"),
    ("ig", "Instagram", "ig.localhost", "handle"),
    ("fbm", "Messenger", "fbm.localhost", "email"),
)


@dataclass
class LocalNet:
    root: Path
    bridge_port: int
    servers: dict[str, Synapse]
    # Not in repr(): it lands in test reports and tracebacks.
    as_tokens: dict[str, str] = field(repr=False)
    hs_tokens: dict[str, str] = field(repr=False)
    secret: str = field(repr=False)

    @classmethod
    def create(cls, root: Path) -> LocalNet:
        root.mkdir(parents=True, exist_ok=True)
        servers = {
            net_id: Synapse(server_name, free_port(), root / net_id)
            for net_id, _, server_name, _ in NETWORKS
        }
        net = cls(
            root=root,
            bridge_port=free_port(),
            servers=servers,
            as_tokens={n: "as_" + secrets.token_urlsafe(24) for n in servers},
            hs_tokens={n: "hs_" + secrets.token_urlsafe(24) for n in servers},
            secret=secrets.token_urlsafe(32),
        )
        base = net.write_config(root / "registration-base.toml", portals=())
        config = load_config(base)
        for net_id, server in servers.items():
            reg = root / f"registration-{net_id}.yaml"
            reg.write_text(registration_yaml(config, net_id))
            server.registrations = [reg]
        return net

    def url(self, net_id: str) -> str:
        return self.servers[net_id].url

    def server_name(self, net_id: str) -> str:
        return self.servers[net_id].server_name

    def config_text(
        self,
        portals: tuple[Mapping[str, str], ...] | list[Mapping[str, str]],
        database: Path | str = "tribridge.db",
        log_level: str = "info",
        extra: str = "",
        bridge_extra: str = "",
    ) -> str:
        """The config for these homeservers; `bridge_extra` goes into [bridge], `extra` (more
        tables, such as [permissions]) at the end."""
        lines = [
            "[bridge]",
            f'listen = "127.0.0.1:{self.bridge_port}"',
            f'database = "{database}"',
            f'secret = "{self.secret}"',
            f'log_level = "{log_level}"',
            bridge_extra,
            "",
        ]
        for net_id, label, server_name, identity in NETWORKS:
            lines += [
                f"[networks.{net_id}]",
                f'label = "{label}"',
                f'homeserver = "{self.servers[net_id].url}"',
                f'server_name = "{server_name}"',
                f'as_token = "{self.as_tokens[net_id]}"',
                f'hs_token = "{self.hs_tokens[net_id]}"',
                f'identity = "{identity}"',
                "",
            ]
        for portal in portals:
            lines.append("[[portals]]")
            lines += [f'{net_id} = "{room}"' for net_id, room in portal.items()]
            lines.append("")
        lines.append(extra)
        return "\n".join(lines)

    def write_config(
        self,
        path: Path,
        portals: tuple[Mapping[str, str], ...] | list[Mapping[str, str]],
        database: Path | str = "tribridge.db",
        log_level: str = "info",
        extra: str = "",
        bridge_extra: str = "",
    ) -> Path:
        path.write_text(self.config_text(portals, database, log_level, extra, bridge_extra))
        return path

    def start(self) -> None:
        start_all(list(self.servers.values()))

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
