"""Pools: a course's desktops kept ready from a template, handed out at once."""
