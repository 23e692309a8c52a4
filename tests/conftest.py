"""Shared fixtures: a real redis-server on a private port, flushed around each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from shared.redis_server import RedisServer
from shared.settings import Settings, load_settings


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(aof=False).start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    conn = Redis.from_url(redis_server.url)
    conn.flushall()
    yield redis_server.url
    conn.flushall()
    conn.close()


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[Redis]:
    conn = Redis.from_url(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def settings(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings isolated from the developer's environment and .env file."""
    monkeypatch.chdir("/")
    return load_settings(redis_url=redis_url, queue_name="corral-test", max_new_tokens=48)
