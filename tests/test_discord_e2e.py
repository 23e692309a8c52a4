"""End to end: the real Discord client, real Redis/RQ and the real worker with the small model."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from fakes.discord_harness import running_bot
from fakes.discord_server import BOT_ID, FakeDiscord
from redis import Redis

from bots.discord.settings import DiscordSettings
from bots.splitting import split_message
from shared.contract import StreamEvent, conversation_key
from shared.history import ConversationStore
from shared.settings import Settings
from shared.streams import follow

CHANNEL = 800_000_000_000_000_010

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


def final_event(conn: Redis, job_id: str) -> StreamEvent:
    *_, last = follow(conn, job_id, timeout=120)  # generous: CI machines are slow
    return last


def job_ids(conn: Redis) -> set[str]:
    return {key.decode().rsplit(":", 1)[1] for key in conn.scan_iter("corral:stream:*")}


def test_a_mention_is_answered_by_the_real_worker(
    settings: Settings, redis_conn: Redis, worker_proc: subprocess.Popen[bytes]
) -> None:
    config = DiscordSettings(edit_interval=0.2, _env_file=None)  # type: ignore[call-arg]
    store = ConversationStore(redis_conn, settings.history_ttl)

    def shown(fake: FakeDiscord, thread_id: int) -> list[str]:
        return [m["content"] for m in fake.bot_messages(thread_id)]

    async def answered(fake: FakeDiscord, thread_id: int, seen: set[str]) -> tuple[str, set[str]]:
        """Wait for the next job's final event, then for the thread to show exactly it."""
        new = await fake.wait_for(lambda: job_ids(redis_conn) - seen, timeout=60)
        [job_id] = new
        final = await asyncio.to_thread(final_event, redis_conn, job_id)
        assert final.kind == "done", final.error
        expected = split_message(final.text, 2000)
        await fake.wait_for(lambda: shown(fake, thread_id)[-len(expected) :] == expected)
        return final.text, seen | new

    async def scenario() -> None:
        async with running_bot(settings, config) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"<@{BOT_ID}> Say hello in one sentence.")
            thread_id = int(question["id"])
            first, seen = await answered(fake, thread_id, set())
            assert first.strip()

            key = conversation_key("discord", str(CHANNEL), str(thread_id))
            await fake.user_says(thread_id, "Now say goodbye.")
            second, _ = await answered(fake, thread_id, seen)
            assert second.strip()
            # The worker kept both turns of the thread's conversation.
            stored = store.load(key)
            assert [m.role for m in stored[-4:]] == ["user", "assistant", "user", "assistant"]
            assert stored[-1].content == second

    asyncio.run(scenario())
