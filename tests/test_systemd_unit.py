"""The systemd unit verifies and is hardened (systemd-analyze, from Debian's systemd package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
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
    assert "RestartPreventExitStatus=2" in text.splitlines()  # a config error is not retried


def test_the_services_made_up_user_can_read_the_config_as_installed() -> None:
    # systemd leaves a ConfigurationDirectory owned by root (systemd.exec(5)), and the
    # DynamicUser is in no group of it: it reads the directory and file as "others".
    text = UNIT.read_text()
    found = re.search(r"^ConfigurationDirectoryMode=(0[0-7]{3})$", text, re.M)
    install = re.search(r"install -m (0[0-7]{3}) config\.toml /etc/tribridge/config\.toml", text)
    assert found and install, "the unit names the directory's mode and how to install the file"
    folder_mode, file_mode = int(found.group(1), 8), int(install.group(1), 8)
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        # Without root to become another user, the mode bits say it.
        assert folder_mode & 0o005 == 0o005 and file_mode & 0o004
        return
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # /tmp/pytest-of-root is 0700
        Path(top).chmod(0o755)
        folder = Path(top) / "tribridge"
        folder.mkdir(mode=folder_mode)
        folder.chmod(folder_mode)
        config = folder / "config.toml"
        config.write_text("[bridge]\n")
        config.chmod(file_mode)
        result = subprocess.run(
            ["setpriv", "--reuid=61234", "--regid=61234", "--clear-groups",
             "/usr/bin/python3", "-c", f"print(open({str(config)!r}).read(), end='')"],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 0 and result.stdout == "[bridge]\n", result.stderr
