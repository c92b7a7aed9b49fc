"""SQLite with connections reused by the threads of a process (see base.py)."""
