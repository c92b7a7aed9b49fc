"""qemu-img wrapper on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_qcow2
from hypervisors import qemu_img


def test_overlay_records_its_backing_file_and_costs_little(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", "1G")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create_overlay(overlay, base, storage_pools=(tmp_path,))
    info = qemu_img.info(overlay)
    assert info.backing_file == str(base)
    assert info.virtual_size_bytes == 1024**3
    assert info.actual_size_bytes < 1024 * 1024
    chain = qemu_img.backing_chain(overlay)
    assert [Path(entry.path) for entry in chain] == [overlay, base]


def test_overlay_on_a_missing_backing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(qemu_img.QemuImgError, match="does not exist"):
        qemu_img.create_overlay(
            tmp_path / "o.qcow2", tmp_path / "missing.qcow2", storage_pools=(tmp_path,)
        )
    assert not (tmp_path / "o.qcow2").exists()


def test_a_broken_chain_is_detected(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create_overlay(overlay, base, storage_pools=(tmp_path,))
    base.unlink()
    with pytest.raises(qemu_img.QemuImgError):
        qemu_img.backing_chain(overlay)


def test_convert_flattens_a_chain_and_reports_progress(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", "16M")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create_overlay(overlay, base, storage_pools=(tmp_path,))
    progress: list[float] = []
    flat = tmp_path / "flat.qcow2"
    qemu_img.convert(overlay, flat, storage_pools=(tmp_path,), on_progress=progress.append)
    assert qemu_img.info(flat).backing_file is None
    assert progress and progress[-1] == 100.0


def test_an_overlay_on_a_backing_file_outside_the_pools_is_refused(tmp_path: Path) -> None:
    pool, outside = tmp_path / "pool", tmp_path / "outside"
    pool.mkdir()
    outside.mkdir()
    secret = make_qcow2(outside / "secret.qcow2")
    (pool / "innocent.qcow2").symlink_to(secret)
    for backing in (secret, pool / "innocent.qcow2", pool / ".." / "outside" / "secret.qcow2"):
        with pytest.raises(qemu_img.QemuImgPathError, match="not inside the storage pools"):
            qemu_img.create_overlay(pool / "o.qcow2", backing, storage_pools=(pool,))
        assert not (pool / "o.qcow2").exists()


def test_qemu_img_writes_nothing_outside_the_pools(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    base = make_qcow2(pool / "base.qcow2")
    with pytest.raises(qemu_img.QemuImgPathError):
        qemu_img.create_overlay(tmp_path / "o.qcow2", base, storage_pools=(pool,))
    with pytest.raises(qemu_img.QemuImgPathError):
        qemu_img.create_empty(tmp_path / "e.qcow2", 1024**2, storage_pools=(pool,))
    with pytest.raises(qemu_img.QemuImgPathError):
        qemu_img.convert(base, tmp_path / "flat.qcow2", storage_pools=(pool,))
    with pytest.raises(qemu_img.QemuImgPathError):
        qemu_img.convert(tmp_path / "x.qcow2", pool / "flat.qcow2", storage_pools=(pool,))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pool"]
    assert sorted(path.name for path in pool.iterdir()) == ["base.qcow2"]
