"""SQLite connections are reused by the threads of a process (isard.db.sqlite3)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from isard.db.sqlite3.base import DatabaseWrapper


@pytest.fixture
def database(tmp_path: Path, settings: Any, django_db_blocker: Any) -> Iterator[DatabaseWrapper]:
    """A wrapper on a SQLite file of its own, as a Daphne process has one per thread."""
    with django_db_blocker.unblock():
        yield from _database(tmp_path, settings)


def _database(tmp_path: Path, settings: Any) -> Iterator[DatabaseWrapper]:
    settings.ISARD_SQLITE_POOL_SIZE = 2
    settings_dict = {
        **connections.settings["default"],
        "ENGINE": "isard.db.sqlite3",
        "NAME": str(tmp_path / "pool.sqlite3"),
        # The platform's SQLite options (isard/settings.py), whatever database runs the tests.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
    wrapper = DatabaseWrapper(settings_dict, alias="pool-test")
    with wrapper.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
    wrapper.close()
    yield wrapper
    wrapper.close()
    DatabaseWrapper._idle.clear()


def raw_connection_of_a_new_thread(settings_dict: dict[str, Any]) -> Any:
    """What a request's thread gets: a new wrapper's connection, then closed."""
    seen: list[Any] = []

    def request() -> None:
        wrapper = DatabaseWrapper(settings_dict, alias="pool-test")
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM t")
            seen.append((wrapper.connection, cursor.fetchone()[0]))
        wrapper.close()

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    return seen[0]


def test_the_next_thread_reuses_the_connection_the_last_one_closed(
    database: DatabaseWrapper,
) -> None:
    first, _ = raw_connection_of_a_new_thread(database.settings_dict)
    second, _ = raw_connection_of_a_new_thread(database.settings_dict)
    assert first is second
    assert second.execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_a_transaction_left_open_is_rolled_back_before_reuse(database: DatabaseWrapper) -> None:
    database.set_autocommit(False)
    with database.cursor() as cursor:
        cursor.execute("INSERT INTO t VALUES (1)")
    database.close()
    connection, rows = raw_connection_of_a_new_thread(database.settings_dict)
    assert rows == 0 and not connection.in_transaction


def test_a_connection_closed_inside_an_atomic_block_is_closed_not_reused(
    database: DatabaseWrapper,
) -> None:
    database.ensure_connection()
    kept = database.connection
    database.in_atomic_block = True  # as close() finds it inside transaction.atomic()
    database.close()
    assert database.closed_in_transaction and database.connection is kept  # Django's
    with pytest.raises(sqlite3.ProgrammingError):
        kept.execute("SELECT 1")
    database.in_atomic_block, database.connection = False, None
    assert not any(DatabaseWrapper._idle.values())


def test_no_reuse_with_a_pool_size_of_zero(database: DatabaseWrapper, settings: Any) -> None:
    settings.ISARD_SQLITE_POOL_SIZE = 0
    first, _ = raw_connection_of_a_new_thread(database.settings_dict)
    second, _ = raw_connection_of_a_new_thread(database.settings_dict)
    assert first is not second
