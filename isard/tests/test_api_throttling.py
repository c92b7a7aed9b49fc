"""Rate limits: DRF's window, counted in Redis by one atomic script (isard.core.api.throttling)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.core.cache import caches

from isard.core.api.throttling import UserRateThrottle
from isard.core.cache import RedisCache
from tests.campus import Campus, assert_error, client_for

pytestmark = pytest.mark.usefixtures("clean_throttles")


def person(pk: int) -> Any:
    return SimpleNamespace(user=SimpleNamespace(pk=pk, is_authenticated=True))


@pytest.mark.django_db
def test_over_the_limit_is_429_with_retry_after_and_the_window_is_one_sorted_set(
    north: Campus, settings: Any
) -> None:
    settings.ISARD_API_THROTTLE_RATES = {**settings.ISARD_API_THROTTLE_RATES, "user": "3/minute"}
    client = client_for(north.student)
    for _ in range(3):
        assert client.get("/api/v1/desktops/").status_code == 200
    body = assert_error(client.get("/api/v1/desktops/"), 429)
    assert 55 < body["extra"]["retry_after"] <= 60
    cache = caches["default"]
    assert isinstance(cache, RedisCache)
    key = cache.make_key(f"throttle_user_{north.student.pk}")
    connection = redis.Redis.from_url(django_settings.REDIS_URL)
    assert connection.type(key) == b"zset" and connection.zcard(key) == 3  # refusals not counted
    assert 0 < connection.pttl(key) <= 60_000
    connection.close()
    assert client_for(north.teacher).get("/api/v1/desktops/").status_code == 200


def test_concurrent_requests_of_one_person_cannot_all_take_the_last_places(settings: Any) -> None:
    settings.ISARD_API_THROTTLE_RATES = {**settings.ISARD_API_THROTTLE_RATES, "user": "5/minute"}
    allowed: list[bool] = []
    start = threading.Barrier(12)

    def request() -> None:
        start.wait()
        allowed.append(UserRateThrottle().allow_request(person(424242), None))

    threads = [threading.Thread(target=request) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(allowed) == [False] * 7 + [True] * 5


def test_with_redis_unreachable_requests_go_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(self: RedisCache) -> Any:
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(RedisCache, "redis_client", unreachable)
    assert UserRateThrottle().allow_request(person(434343), None)


def test_another_cache_counts_as_drf_does(settings: Any) -> None:
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.ISARD_API_THROTTLE_RATES = {**settings.ISARD_API_THROTTLE_RATES, "user": "2/minute"}
    results = [UserRateThrottle().allow_request(person(1), None) for _ in range(3)]
    assert results == [True, True, False]
    assert caches["default"].get("throttle_user_1") is not None  # DRF's list of times


def test_a_limit_of_zero_refuses_everything(settings: Any) -> None:
    settings.ISARD_API_THROTTLE_RATES = {**settings.ISARD_API_THROTTLE_RATES, "user": "0/minute"}
    throttle = UserRateThrottle()
    assert not throttle.allow_request(person(454545), None)
    assert throttle.wait() == 60
