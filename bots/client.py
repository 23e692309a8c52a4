"""What every adapter (local chat, Discord, Slack, HTTP API) needs from the queue.

Adapters run asyncio event loops; RQ's enqueue is synchronous, so it runs in a
thread to keep the loop responsive. Following a job's stream uses the asyncio
Redis client directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from rq import Worker

from shared.contract import StreamEvent, Turn
from shared.history import ConversationStore
from shared.settings import Settings
from shared.streams import afollow
from shared.turn_index import cancel_latest, cancel_turn, job_for
from shared.turnqueue import MODEL_KEY, Position, enqueue_turn, position, queue_depth


@dataclass(frozen=True)
class ServiceStatus:
    queue_depth: int
    workers: int
    models: list[str]


# A command that meets a Redis restarting (AOF reload, a container restart) is retried
# for about five seconds (0.1 s doubling to 1 s between tries), so a question that
# arrives meanwhile is still claimed and queued; longer, and the caller says so.
REDIS_RETRIES = 8
_RETRY_ON = [RedisConnectionError, RedisTimeoutError]


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.1)


class TurnClient:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis = Redis.from_url(
            redis_url, retry=Retry(_backoff(), REDIS_RETRIES), retry_on_error=_RETRY_ON
        )
        self.aredis = AsyncRedis.from_url(
            redis_url, retry=AsyncRetry(_backoff(), REDIS_RETRIES), retry_on_error=_RETRY_ON
        )
        # For probes (health checks, metrics), which must answer at once either way.
        self._probe = AsyncRedis.from_url(redis_url, retry=None, socket_connect_timeout=1)
        self.store = ConversationStore(self.redis, settings.history_ttl)

    async def reachable(self) -> bool:
        """Is Redis up right now? One try, no waiting out a restart."""
        try:
            return bool(await self._probe.ping())
        except (RedisConnectionError, RedisTimeoutError):
            return False

    async def submit(self, turn: Turn, asked_in: str = "") -> str:
        """Queue ``turn``; with ``asked_in`` (the question's channel), deleting the
        question there cancels it."""
        job = await asyncio.to_thread(enqueue_turn, self.redis, self.settings, turn, asked_in)
        return job.id

    async def cancel_for_message(self, platform: str, channel: str, message_id: str) -> bool:
        """Cancel the turn a (deleted) message triggered; False if none is unfinished."""

        def cancel() -> bool:
            job_id = job_for(self.redis, platform, channel, message_id)
            return job_id is not None and cancel_turn(self.redis, job_id)

        return await asyncio.to_thread(cancel)

    async def cancel_latest(self, platform: str, channel: str, user: str) -> str | None:
        """Cancel ``user``'s most recent unfinished turn in ``channel``; its job id, or None."""
        return await asyncio.to_thread(cancel_latest, self.redis, platform, channel, user)

    def events(self, job_id: str, timeout: float | None = None) -> AsyncIterator[StreamEvent]:
        return afollow(self.aredis, job_id, timeout=timeout)

    async def position(self, job_id: str) -> Position:
        return await asyncio.to_thread(position, self.redis, self.settings, job_id)

    async def has_history(self, conversation: str) -> bool:
        return await asyncio.to_thread(self.store.exists, conversation)

    async def reset(self, conversation: str) -> bool:
        return await asyncio.to_thread(self.store.reset, conversation)

    async def status(self) -> ServiceStatus:
        def read() -> ServiceStatus:
            workers = Worker.all(connection=self.redis)
            # Only live workers' entries: a killed worker leaves its hash field behind.
            names = [w.name for w in workers]
            served = self.redis.hmget(MODEL_KEY, names) if names else []
            models = sorted({m.decode() if isinstance(m, bytes) else m for m in served if m})
            return ServiceStatus(queue_depth(self.redis, self.settings), len(workers), models)

        return await asyncio.to_thread(read)

    async def close(self) -> None:
        await self.aredis.aclose()
        self.redis.close()
