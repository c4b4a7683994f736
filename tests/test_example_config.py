"""The shipped config.example.toml stays valid and documents every key the loader knows."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.config import _NETWORK_KEYS, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_config_is_valid() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert set(config.networks) == {"wa", "ig", "fbm"}
    assert [n.network.identity for n in config.networks.values()] == ["phone", "handle", "email"]
    assert len(config.portals) == 1


def test_the_example_and_the_reference_name_every_network_key() -> None:
    example = (ROOT / "config.example.toml").read_text()
    reference = (ROOT / "docs" / "config.md").read_text()
    for key in _NETWORK_KEYS:
        assert re.search(rf"^#? ?{key} =", example, re.M), f"{key} missing from the example"
        assert f"`{key}`" in reference, f"{key} missing from docs/config.md"
