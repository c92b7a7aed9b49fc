"""The people pages count failed sign-ins and wrong codes in Redis (accounts.rate_limits):
every test starts and ends with empty windows."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_rate_limits(clean_throttles: None) -> None:
    """Windows would otherwise leak from one test (or test run) into the next."""
