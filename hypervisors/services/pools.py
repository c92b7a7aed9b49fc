"""Storage pools: one directory per purpose under the storage root."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from hypervisors.choices import (
    PoolPurpose,
)
from hypervisors.models import (
    StoragePool,
)

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


def storage_pools_ensure(*, root: Path | None = None) -> dict[str, StoragePool]:
    """Create (once) one pool per purpose under the storage root, directories included."""
    root = Path(root or settings.ISARD_STORAGE_ROOT)
    pools: dict[str, StoragePool] = {}
    for purpose in PoolPurpose:
        directory = root / purpose.value
        directory.mkdir(parents=True, exist_ok=True)
        # qemu runs as its own user under qemu:///system and must reach the files.
        directory.chmod(0o755)
        pool, _ = StoragePool.objects.get_or_create(
            path=str(directory), defaults={"name": f"{purpose.value}", "purpose": purpose}
        )
        pools[purpose.value] = pool
    return pools


def pool_for(purpose: PoolPurpose) -> StoragePool:
    pool = StoragePool.objects.filter(purpose=purpose).order_by("pk").first()
    if pool is None:
        pool = storage_pools_ensure()[purpose.value]
    return pool
