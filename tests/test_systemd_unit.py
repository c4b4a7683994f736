"""The systemd unit verifies and is hardened (systemd-analyze, from Debian's systemd package)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "tribridge.service"


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run does)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists: point it at this checkout's installed command.
    exe = Path(sys.executable).parent / "tribridge"
    copy = tmp_path / "tribridge.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/tribridge", str(exe)))
    return copy


def test_the_unit_verifies(unit: Path) -> None:
    result = analyze("verify", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_the_unit_exposure_is_at_most_one(unit: Path) -> None:
    result = analyze("security", "--offline=true", "--threshold=10", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"Overall exposure level for tribridge.service: ([0-9.]+)", result.stdout)
    assert found is not None, result.stdout
    assert float(found.group(1)) <= 1.0


def test_the_unit_is_a_notify_service_with_a_watchdog_and_credentials() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes", "UMask=0077",
                 "StateDirectory=tribridge", "ConfigurationDirectory=tribridge",
                 "LogsDirectory=tribridge", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    assert re.search(r"^LoadCredential=secret:", text, re.M)
