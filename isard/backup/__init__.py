"""Backups of a whole installation (`manage.py isard_backup` / `isard_restore`)."""
