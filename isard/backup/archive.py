"""A backup archive on disk: a directory, or one `.tar` file, of named members.

Both forms hold the same members (`manifest.json`, `database.json`, `disks/...`,
`pki/...`, `env/.env`). Every member is hashed (sha256) while it is written, so the
manifest, written last, can list them all; a reader checks every hash before anything is
restored.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol, cast

from isard.core.errors import ApplicationError

CHUNK_BYTES = 4 * 1024 * 1024
MANIFEST_NAME = "manifest.json"

#: Called with the bytes copied since the last call, while a large member is written.
OnBytes = Callable[[int], None]


class ArchiveError(ApplicationError):
    """The archive cannot be written or read, or it does not match its manifest."""


@dataclass(frozen=True)
class Member:
    name: str
    size_bytes: int
    sha256: str


def safe_member_name(name: str) -> str:
    """A relative POSIX name without `..`: a member can never land outside the archive."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or name.startswith("/"):
        raise ArchiveError(f"unsafe name in the archive: {name!r}")
    return str(path)


class _HashingReader(io.RawIOBase):
    """Reads a file and hashes what was read, for tarfile.addfile."""

    def __init__(self, source: IO[bytes], on_bytes: OnBytes | None) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        return data


def copy_hashing(source: IO[bytes], destination: IO[bytes], on_bytes: OnBytes | None) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK_BYTES):
        digest.update(chunk)
        destination.write(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return digest.hexdigest()


class ArchiveWriter(Protocol):
    def add_file(self, name: str, source: Path, on_bytes: OnBytes | None = None) -> Member: ...
    def add_bytes(self, name: str, data: bytes) -> Member: ...
    def close(self) -> None: ...


class DirectoryWriter:
    def __init__(self, root: Path) -> None:
        if root.exists() and any(root.iterdir()):
            raise ArchiveError(f"{root} exists and is not empty; choose a new place.")
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # the PKI's private keys are inside
        self.root = root

    def _target(self, name: str) -> Path:
        target = self.root / safe_member_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add_file(self, name: str, source: Path, on_bytes: OnBytes | None = None) -> Member:
        target = self._target(name)
        with source.open("rb") as reader, target.open("wb") as writer:
            sha256 = copy_hashing(reader, writer, on_bytes)
        return Member(name=name, size_bytes=target.stat().st_size, sha256=sha256)

    def add_bytes(self, name: str, data: bytes) -> Member:
        self._target(name).write_bytes(data)
        return Member(name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    def close(self) -> None:
        pass


class TarWriter:
    def __init__(self, path: Path) -> None:
        if path.exists():
            raise ArchiveError(f"{path} exists; choose a new file name.")
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.file = os.fdopen(descriptor, "wb")
        # Open for the writer's lifetime; close() ends both.
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def add_file(self, name: str, source: Path, on_bytes: OnBytes | None = None) -> Member:
        info = tarfile.TarInfo(safe_member_name(name))
        info.size = source.stat().st_size
        info.mode = 0o600
        with source.open("rb") as raw:
            reader = _HashingReader(raw, on_bytes)
            self.tar.addfile(info, reader)
        return Member(name=name, size_bytes=info.size, sha256=reader.digest.hexdigest())

    def add_bytes(self, name: str, data: bytes) -> Member:
        info = tarfile.TarInfo(safe_member_name(name))
        info.size = len(data)
        info.mode = 0o600
        self.tar.addfile(info, io.BytesIO(data))
        return Member(name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    def close(self) -> None:
        self.tar.close()
        self.file.close()


def open_writer(out: Path) -> ArchiveWriter:
    """A `.tar` file if `out` ends in .tar, else a directory."""
    return TarWriter(out) if out.suffix == ".tar" else DirectoryWriter(out)


class ArchiveReader:
    """Reads members of a directory or `.tar` archive, by name."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise ArchiveError(f"{path} does not exist.")
        self.path = path
        self.is_tar = path.is_file()
        if self.is_tar and not tarfile.is_tarfile(path):
            raise ArchiveError(f"{path} is neither a backup directory nor a tar file.")

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as member:
            return member.read()

    def open(self, name: str) -> IO[bytes]:
        name = safe_member_name(name)
        if not self.is_tar:
            target = self.path / name
            if not target.is_file():
                raise ArchiveError(f"the archive has no {name}.")
            return target.open("rb")
        tar = tarfile.open(self.path, mode="r:")  # noqa: SIM115 (the member closes it)
        try:
            member = tar.getmember(name)
            extracted = tar.extractfile(member)
        except KeyError as error:
            tar.close()
            raise ArchiveError(f"the archive has no {name}.") from error
        if extracted is None:
            tar.close()
            raise ArchiveError(f"{name} in the archive is not a file.")
        return cast("IO[bytes]", _ClosingMember(extracted, tar))

    def members(self) -> Iterator[tuple[str, IO[bytes]]]:
        """Every file in the archive with its content, in storage order (one pass)."""
        if not self.is_tar:
            for path in sorted(self.path.rglob("*")):
                if path.is_file():
                    with path.open("rb") as reader:
                        yield path.relative_to(self.path).as_posix(), reader
            return
        with tarfile.open(self.path, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    yield member.name, extracted


class _ClosingMember(io.RawIOBase):
    def __init__(self, member: IO[bytes], tar: tarfile.TarFile) -> None:
        self.member = member
        self.tar = tar

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.member.read(size)

    def close(self) -> None:
        if not self.closed:
            self.tar.close()
        super().close()


def hash_stream(reader: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := reader.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def write_file(reader: IO[bytes], target: Path, *, mode: int, on_bytes: OnBytes | None) -> str:
    """Write `reader` to `target` through a temporary name, then rename: all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.restoring")
    with partial.open("wb") as writer:
        sha256 = copy_hashing(reader, writer, on_bytes)
    partial.chmod(mode)
    os.replace(partial, target)
    return sha256


def remove_partial_archive(out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out, ignore_errors=True)
    elif out.exists():
        out.unlink()
