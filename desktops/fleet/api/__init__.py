"""REST API v1 (see isard/api/urls.py)."""
