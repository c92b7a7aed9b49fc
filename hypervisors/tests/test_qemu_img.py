"""qemu-img wrapper on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_qcow2
from hypervisors import qemu_img


def test_overlay_records_its_backing_file_and_costs_little(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", "1G")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create_overlay(overlay, base)
    info = qemu_img.info(overlay)
    assert info.backing_file == str(base)
    assert info.virtual_size_bytes == 1024**3
    assert info.actual_size_bytes < 1024 * 1024
    chain = qemu_img.backing_chain(overlay)
    assert [Path(entry.path) for entry in chain] == [overlay, base]


def test_overlay_on_a_missing_backing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(qemu_img.QemuImgError, match="does not exist"):
        qemu_img.create_overlay(tmp_path / "o.qcow2", tmp_path / "missing.qcow2")
    assert not (tmp_path / "o.qcow2").exists()


def test_a_broken_chain_is_detected(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create_overlay(overlay, base)
    base.unlink()
    with pytest.raises(qemu_img.QemuImgError):
        qemu_img.backing_chain(overlay)


def test_convert_flattens_a_chain_and_reports_progress(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", "16M")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create_overlay(overlay, base)
    progress: list[float] = []
    flat = tmp_path / "flat.qcow2"
    qemu_img.convert(overlay, flat, on_progress=progress.append)
    assert qemu_img.info(flat).backing_file is None
    assert progress and progress[-1] == 100.0
