"""Which files the platform may hand to qemu, qemu-img or a guest: those inside its roots.

libvirt chowns every file a domain names to the qemu user when it starts, and a guest reads
its CD-ROM; qemu-img runs with the platform's rights. So a path that reached a domain or
qemu-img from a row someone could edit would let them read (or take over) any file of the
host. Every such path is resolved (symlinks followed, `..` removed) and must then lie
inside one of the roots the caller names: the storage pools' directories, in practice.

Pure: no Django, so the driver and qemu-img can use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from isard.core.errors import ApplicationError


class PathOutsidePoolsError(ApplicationError):
    """A file outside the storage pools was about to be used; nothing was done."""

    status_code = 403


def resolved(path: str | os.PathLike[str]) -> Path:
    """`path` with every symlink followed, whether or not the file exists yet."""
    return Path(os.path.realpath(path))


def path_inside(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> Path:
    """The real path of `path`, if it lies strictly inside one of `roots`; else refuse.

    A symlink inside a root that points outside is outside. The roots are resolved too, so
    a storage root reached through a symlink (/srv -> /data/srv) still matches.
    """
    if not str(path):
        raise PathOutsidePoolsError("An empty path is not inside the storage pools; refused.")
    real = resolved(path)
    for root in roots:
        if not str(root):
            continue  # "" would mean the working directory
        real_root = resolved(root)
        if real != real_root and real.is_relative_to(real_root):
            return real
    raise PathOutsidePoolsError(
        f"{path} is not inside the storage pools; refused.", extra={"path": str(path)}
    )
