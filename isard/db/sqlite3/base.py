"""Django's SQLite backend, with the connections of a process reused across threads.

Under Daphne every request runs its sync code in a thread of its own, and Django keeps a
database connection per thread: each request opened a new SQLite connection (the file,
Django's ~30 SQL functions registered on it, three PRAGMAs) and closed it at the end,
about a tenth of the CPU of a small page or API call. Here a closed connection goes
back to a small pool of the process instead, and the next thread's "new" connection is
taken from it: the same file and settings, no transaction open (rolled back if one was),
autocommit and state set again by Django's `connect()` as for a new one.

Not pooled: in-memory databases (Django never closes those), a connection closed inside
an atomic block (Django keeps a reference to it), and connections of another process
(a forked child makes its own). `ISARD_SQLITE_POOL_SIZE` sets how many idle connections
a process keeps (0: none, Django's behaviour).
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from django.conf import settings
from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    _idle: ClassVar[dict[tuple[int, str], list[Any]]] = {}
    _idle_lock: ClassVar[threading.Lock] = threading.Lock()
    _pooled_as: tuple[int, str] | None = None  # the pool its connection goes back to

    def _pool_key(self, conn_params: dict[str, Any]) -> tuple[int, str] | None:
        if self.is_in_memory_db() or getattr(settings, "ISARD_SQLITE_POOL_SIZE", 0) <= 0:
            return None
        return (
            os.getpid(),
            repr((sorted(conn_params.items()), getattr(self, "init_commands", []))),
        )

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        key = self._pool_key(conn_params)
        if key is not None:
            with self._idle_lock:
                idle = self._idle.get(key)
                connection = idle.pop() if idle else None
            if connection is not None:
                # Whatever turned it off before (a schema change) must not outlive it.
                connection.execute("PRAGMA foreign_keys = ON")
                self._pooled_as = key
                return connection
        connection = super().get_new_connection(conn_params)
        self._pooled_as = key
        return connection

    def _close(self) -> None:
        key = self._pooled_as
        connection = self.connection
        if key is None or connection is None or self.in_atomic_block or key[0] != os.getpid():
            super()._close()  # type: ignore[misc]
            return
        with self.wrap_database_errors:
            if connection.in_transaction:
                connection.rollback()
        with self._idle_lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < settings.ISARD_SQLITE_POOL_SIZE:
                idle.append(connection)
                return
        super()._close()  # type: ignore[misc]
