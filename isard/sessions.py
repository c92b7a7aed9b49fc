"""Sessions in the database (Django's `db` engine), read with one plain SQL statement.

Every request of a signed-in person reads their session first. Django's engine reads it
through the ORM, whose building of the query (for one row by its key) cost more than the
database's work: about a tenth of the CPU of a request for the list of one's desktops,
which the dashboard and the mobile client poll. The statement here is the one the ORM
would send, with the same parameters as the ORM adapts them for whichever database is
configured. Everything else (creating, saving, deleting, expiry) is Django's.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends import db
from django.db import connections, router
from django.utils import timezone


class SessionStore(db.SessionStore):
    def load(self) -> dict[str, Any]:
        session_key = self.session_key
        if session_key is None:
            return {}
        model = self.model
        connection = connections[router.db_for_read(model)]
        quote = connection.ops.quote_name
        meta = model._meta
        data_column = quote(meta.get_field("session_data").column)
        key_column = quote(meta.get_field("session_key").column)
        expiry_column = quote(meta.get_field("expire_date").column)
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {data_column} FROM {quote(meta.db_table)} "
                f"WHERE {key_column} = %s AND {expiry_column} > %s",
                [session_key, now],
            )
            row = cursor.fetchone()
        if row is None:
            self._session_key = None  # as Django's: a new key if the session is saved
            return {}
        data: dict[str, Any] = self.decode(row[0])
        return data
