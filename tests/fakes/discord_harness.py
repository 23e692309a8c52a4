"""Run the real Discord bot against :class:`FakeDiscord`, with a scripted worker behind it.

``running_bot`` logs the real discord.py client in to the local fake and
waits for READY; ``StandInWorker`` takes turns off the real RQ queue and
publishes StreamEvents to the job's real Redis stream, so a test decides
exactly what the "model" says and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import discord
import yarl
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.rate_limit import RateLimitRegistry

from bots.discord.bot import CorralDiscord, build_bot
from bots.discord.settings import DiscordSettings
from shared.contract import StreamEvent, Turn
from shared.settings import Settings
from shared.streams import publish
from shared.team_config import ConfigWatcher

from .discord_server import TOKEN, FakeDiscord


@contextlib.asynccontextmanager
async def running_bot(
    settings: Settings,
    config: DiscordSettings | None = None,
    fake: FakeDiscord | None = None,
    watcher: ConfigWatcher | None = None,
) -> AsyncIterator[tuple[FakeDiscord, CorralDiscord]]:
    fake = await (fake or FakeDiscord()).start()
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    fake.point_discord_py_at()
    config = config or DiscordSettings(edit_interval=0.1, _env_file=None)  # type: ignore[call-arg]
    assert settings.redis_url
    # A short guild_ready_timeout: the fake sends every GUILD_CREATE at once.
    bot = build_bot(settings, settings.redis_url, config, watcher, guild_ready_timeout=0.05)

    async def on_done(message: discord.Message) -> None:
        fake.handled.add(message.id)
        fake.handled_times[message.id] = fake.handled_times.get(message.id, 0) + 1
        await fake.notify()

    # Client.dispatch calls the on_<event> attribute, so an instance attribute listens.
    bot.on_corral_message_done = on_done  # type: ignore[attr-defined]
    connection: asyncio.Task[None] | None = None
    try:
        await bot.login(TOKEN)
        connection = asyncio.create_task(bot.connect(reconnect=False))
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({connection, ready}, timeout=10, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            if connection in done:
                connection.result()  # raises what stopped the connection
            raise TimeoutError("the bot never became ready")
        yield fake, bot
    finally:
        await bot.close()
        if connection is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await connection
        await fake.close()
        discord.http.Route.BASE = saved[0]
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(saved[1])


class StandInWorker:
    """Plays the worker: takes queued turns and publishes scripted events for them."""

    def __init__(self, conn: Redis, queue_name: str = "corral-test") -> None:
        self.conn = conn
        self.queue = Queue(queue_name, connection=conn)
        self._seq: dict[str, itertools.count[int]] = {}
        self._jobs: dict[str, Job] = {}

    async def take(self, timeout: int = 4) -> tuple[str, Turn]:
        """The next queued job (removed from the queue, as a worker would) and its Turn."""
        # dequeue_any blocks on BLPOP: it returns as soon as the bot enqueues.
        found = await asyncio.to_thread(
            Queue.dequeue_any, [self.queue], timeout, connection=self.conn
        )
        if found is None:
            raise TimeoutError("no turn was enqueued")
        job, _ = found
        self._jobs[job.id] = job
        return job.id, Turn.from_payload(job.args[0])

    def emit(self, job_id: str, kind: str, text: str = "", **fields: Any) -> None:
        seq = next(self._seq.setdefault(job_id, itertools.count()))
        publish(self.conn, StreamEvent(job_id=job_id, seq=seq, kind=kind, text=text, **fields))

    def finish(self, job_id: str, text: str) -> None:
        """The final event, then the conversation's next turn may run (as after a real job)."""
        self.emit(job_id, "done", text, finish_reason="stop")
        self.release(job_id)

    def release(self, job_id: str) -> None:
        job = self._jobs[job_id]
        if job.rate_limit_key:
            RateLimitRegistry.from_job(job).release_and_enqueue(job.id)

    def answer(self, job_id: str, text: str, pieces: int = 3) -> None:
        """started, the text in ``pieces`` deltas, then done with the whole text."""
        self.emit(job_id, "started")
        step = max(1, -(-len(text) // pieces))
        for start in range(0, len(text), step):
            self.emit(job_id, "delta", text[start : start + step])
        self.finish(job_id, text)
