"""What the Discord bot remembers across restarts, kept in Redis.

A few small facts, each expiring with the conversation history:
which threads the bot was mentioned in (so follow-ups there need no new
mention, also after a restart), where ``/reset`` was used (so rebuilding
lost history from the thread never reaches back past a reset), and which
messages were already answered (so a replayed delivery is answered once).
"""

from __future__ import annotations

from redis.asyncio import Redis as AsyncRedis


def _thread_key(thread_id: int) -> str:
    return f"corral:discord:thread:{thread_id}"


def _seen_key(message_id: int) -> str:
    return f"corral:discord:seen:{message_id}"


SEEN_TTL = 24 * 3600  # gateway replays come within seconds; a day is plenty


def _reset_key(conversation: str) -> str:
    return f"corral:discord:reset:{conversation}"


class DiscordState:
    def __init__(self, redis: AsyncRedis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl

    async def join_thread(self, thread_id: int) -> None:
        await self.redis.set(_thread_key(thread_id), 1, ex=self.ttl)

    async def in_thread(self, thread_id: int) -> bool:
        # Reading also renews: an active thread should not be forgotten mid-conversation.
        return bool(await self.redis.expire(_thread_key(thread_id), self.ttl))

    async def first_delivery(self, message_id: int) -> bool:
        """True the first time a message is seen, across restarts and bot processes.

        A gateway RESUME can replay MESSAGE_CREATE, and two bot processes on one
        token both receive it: only the first may enqueue a turn.
        """
        return bool(await self.redis.set(_seen_key(message_id), 1, nx=True, ex=SEEN_TTL))

    async def mark_reset(self, conversation: str, snowflake: int) -> None:
        await self.redis.set(_reset_key(conversation), snowflake, ex=self.ttl)

    async def reset_point(self, conversation: str) -> int | None:
        value = await self.redis.get(_reset_key(conversation))
        return int(value) if value is not None else None
