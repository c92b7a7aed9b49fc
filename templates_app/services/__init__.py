"""Writes for templates and install media, one concern per module."""
