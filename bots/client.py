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
from rq import Worker

from shared.contract import StreamEvent, Turn
from shared.history import ConversationStore
from shared.settings import Settings
from shared.streams import afollow
from shared.turnqueue import MODEL_KEY, Position, enqueue_turn, position, queue_depth


@dataclass(frozen=True)
class ServiceStatus:
    queue_depth: int
    workers: int
    models: list[str]


class TurnClient:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis = Redis.from_url(redis_url)
        self.aredis = AsyncRedis.from_url(redis_url)
        self.store = ConversationStore(self.redis, settings.history_ttl)

    async def submit(self, turn: Turn) -> str:
        job = await asyncio.to_thread(enqueue_turn, self.redis, self.settings, turn)
        return job.id

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
            models = sorted({m.decode() for m in served if m})
            return ServiceStatus(queue_depth(self.redis, self.settings), len(workers), models)

        return await asyncio.to_thread(read)

    async def close(self) -> None:
        await self.aredis.aclose()
        self.redis.close()
