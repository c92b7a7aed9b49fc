"""qemu-img, the tool that makes and inspects disk files.

Kept apart from the libvirt driver because it works on files, not on hosts: the storage
layer runs it where the pool is mounted. Every failure raises `QemuImgError` carrying
qemu-img's own message.

What it writes, and what it reads a disk from, must lie inside the storage pools (the
callers name them, as `storage_pools`): qemu-img runs with the platform's rights, and
an overlay on a backing file outside them would give a guest that file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hypervisors.paths import PathOutsidePoolsError, path_inside

QEMU_IMG = "qemu-img"


class QemuImgError(Exception):
    pass


class QemuImgPathError(QemuImgError, PathOutsidePoolsError):
    """A file outside the storage pools: qemu-img was not run. Callers that handle a
    qemu-img failure handle this one too."""


StoragePools = Sequence[str | os.PathLike[str]]


def _inside_pools(storage_pools: StoragePools, *paths: Path) -> None:
    for path in paths:
        try:
            path_inside(path, storage_pools)
        except PathOutsidePoolsError as error:
            raise QemuImgPathError(error.message, extra=error.extra) from error


@dataclass(frozen=True)
class ImageInfo:
    path: str
    format: str
    virtual_size_bytes: int
    actual_size_bytes: int
    backing_file: str | None


def _run(arguments: list[str], *, timeout: float = 120) -> str:
    try:
        completed = subprocess.run(
            [QEMU_IMG, *arguments], capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as error:
        raise QemuImgError("qemu-img is not installed (Debian package qemu-utils)") from error
    except subprocess.TimeoutExpired as error:
        raise QemuImgError(f"qemu-img {arguments[0]} took longer than {timeout:.0f} s") from error
    if completed.returncode != 0:
        message = (completed.stderr or completed.stdout).strip().replace("qemu-img: ", "")
        raise QemuImgError(message or f"qemu-img {arguments[0]} failed ({completed.returncode})")
    return completed.stdout


def create_overlay(
    path: Path, backing: Path, *, storage_pools: StoragePools, backing_format: str = "qcow2"
) -> None:
    """A new qcow2 whose reads fall through to `backing`: a desktop costs only its own writes.

    The backing path is written as given (absolute), so the chain survives the overlay
    being opened from any working directory.
    """
    _inside_pools(storage_pools, path, backing)
    if not backing.exists():
        raise QemuImgError(f"backing file {backing} does not exist")
    _run(["create", "-q", "-f", "qcow2", "-b", str(backing), "-F", backing_format, str(path)])


def create_empty(path: Path, size_bytes: int, *, storage_pools: StoragePools) -> None:
    _inside_pools(storage_pools, path)
    _run(["create", "-q", "-f", "qcow2", str(path), str(size_bytes)])


def info(path: Path) -> ImageInfo:
    data = json.loads(_run(["info", "--output=json", "-U", str(path)]))
    return ImageInfo(
        path=str(path),
        format=data["format"],
        virtual_size_bytes=int(data["virtual-size"]),
        actual_size_bytes=int(data.get("actual-size", 0)),
        backing_file=data.get("full-backing-filename") or data.get("backing-filename"),
    )


def backing_chain(path: Path) -> list[ImageInfo]:
    """The image and every backing file below it, top first. Fails if a link is missing."""
    data = json.loads(_run(["info", "--output=json", "--backing-chain", "-U", str(path)]))
    return [
        ImageInfo(
            path=entry["filename"],
            format=entry["format"],
            virtual_size_bytes=int(entry["virtual-size"]),
            actual_size_bytes=int(entry.get("actual-size", 0)),
            backing_file=entry.get("full-backing-filename") or entry.get("backing-filename"),
        )
        for entry in data
    ]


_PROGRESS = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


def convert(
    source: Path,
    destination: Path,
    *,
    storage_pools: StoragePools,
    output_format: str = "qcow2",
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """Copy `source` (with its whole backing chain) into one standalone image.

    `on_progress` receives percentages as qemu-img reports them, so a long flatten can show
    a progress bar.
    """
    _inside_pools(storage_pools, source, destination)
    command = [QEMU_IMG, "convert", "-p", "-O", output_format, str(source), str(destination)]
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except FileNotFoundError as error:
        raise QemuImgError("qemu-img is not installed (Debian package qemu-utils)") from error
    with process:
        assert process.stdout is not None and process.stderr is not None
        buffer = ""
        while chunk := process.stdout.read(64):
            buffer = (buffer + chunk)[-128:]
            matches = _PROGRESS.findall(buffer)
            if matches and on_progress is not None:
                on_progress(float(matches[-1]))
        stderr = process.stderr.read()
    if process.returncode != 0:
        raise QemuImgError(stderr.strip().replace("qemu-img: ", "") or "qemu-img convert failed")
