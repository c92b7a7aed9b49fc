"""`./isardctl install-service`: systemd units for this checkout that systemd accepts.

The units are written into a directory of the test (`--dir`) and checked by
`systemd-analyze verify` (offline: no running systemd is needed); enabling them is
systemd's own job and happens only where it runs, into /etc/systemd/system.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
SERVICES = ("isard-web", "isard-gateway", "isard-worker", "isard-beat", "isard-events")


def test_install_service_writes_units_systemd_accepts(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.fail("needs systemd-analyze (Debian's systemd package)")
    units = tmp_path / "units"
    user = getpass.getuser()
    done = subprocess.run(
        ["./isardctl", "install-service", "--dir", str(units), "--user", user],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "systemctl daemon-reload && systemctl enable --now isard.target" in done.stdout
    written = {path.name for path in units.iterdir()}
    assert written == {"isard.target", "isard-worker@.service", *(f"{s}.service" for s in SERVICES)}
    target = (units / "isard.target").read_text()
    for service in SERVICES:
        text = (units / f"{service}.service").read_text()
        assert "@ROOT@" not in text and "@USER@" not in text
        assert f"WorkingDirectory={ROOT}\n" in text and f"User={user}\n" in text
        assert "Restart=always" in text and "PartOf=isard.target" in text
        assert f"{service}.service" in target
    # A hypervisor queue's worker is an instance of the template.
    (units / "isard-worker@hv1.service").write_text((units / "isard-worker@.service").read_text())
    checked = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in units.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (
        checked.stdout + checked.stderr
    )
    assert "--queues=%i" in (units / "isard-worker@hv1.service").read_text()


def test_install_service_refuses_an_unknown_user(tmp_path: Path) -> None:
    done = subprocess.run(
        ["./isardctl", "install-service", "--dir", str(tmp_path), "--user", "no-such-user-x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "no user no-such-user-x" in done.stderr
    assert not list(tmp_path.iterdir())
