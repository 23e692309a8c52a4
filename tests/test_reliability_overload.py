"""Overload: a bounded queue (in all and per user), a per-user rate limit, and the polite
one-line replies the bots give at once. Real Redis; bots through their test harnesses."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import pytest
from fakes.discord_harness import StandInWorker, running_bot
from fakes.discord_server import BOT_ID
from fakes.slack_harness import FakeWorker, event_body, mention
from fakes.slack_harness import running_bot as slack_bot
from redis import Redis

from bots.discord.settings import DiscordSettings
from bots.local_chat import ask
from shared.contract import Turn
from shared.settings import Settings
from shared.turn_index import cancel_latest, job_for
from shared.turnqueue import QueueFull, UserRateLimited, enqueue_turn

pytestmark = pytest.mark.timeout(60)

CHANNEL = 800_000_000_000_000_010  # the fake guild's first text channel


def turn(user: str = "u1") -> Turn:
    return Turn(
        platform="local", channel="c1", thread=uuid.uuid4().hex[:8], user=user,
        message_id=uuid.uuid4().hex, text="hi",
    )  # fmt: skip


def limited(settings: Settings, **values: object) -> Settings:
    base = {"queue_max": 0, "queue_max_per_user": 0, "user_turns_per_minute": 0.0}
    return settings.model_copy(update={**base, **values})


def test_global_bound_frees_up_when_turns_end(settings: Settings, redis_conn: Redis) -> None:
    capped = limited(settings, queue_max=3)
    jobs = [enqueue_turn(redis_conn, capped, turn(f"u{i}")) for i in range(3)]
    with pytest.raises(QueueFull, match="busy") as refused:
        enqueue_turn(redis_conn, capped, turn("u9"))
    assert not isinstance(refused.value, UserRateLimited)
    assert redis_conn.llen("rq:queue:corral-test") == 3  # the refused turn left no trace
    jobs[0].cancel()  # one turn ends: its place is free again
    enqueue_turn(redis_conn, capped, turn("u9"))


def test_a_chat_turn_is_findable_by_its_message_from_the_moment_it_is_queued(
    settings: Settings, redis_conn: Redis
) -> None:
    # The index is written before the turn reaches the queue, so a question deleted the
    # instant it was sent still cancels its turn; a refused turn leaves no entry behind.
    asked = turn("alice")
    job = enqueue_turn(redis_conn, settings, asked, asked_in="thread-9")
    assert job_for(redis_conn, "local", "thread-9", asked.message_id) == job.id
    assert job_for(redis_conn, "local", "c1", asked.message_id) is None  # where it was asked
    assert cancel_latest(redis_conn, "local", "thread-9", "alice") == job.id
    capped = limited(settings, queue_max_per_user=1)
    refused = turn("bob")
    enqueue_turn(redis_conn, capped, turn("bob"))
    with pytest.raises(QueueFull):
        enqueue_turn(redis_conn, capped, refused, asked_in="thread-9")
    assert job_for(redis_conn, "local", "thread-9", refused.message_id) is None
    # A turn queued without a place (the HTTP API's) is not indexed at all.
    plain = turn("carol")
    enqueue_turn(redis_conn, settings, plain)
    assert not redis_conn.keys(f"corral:turn-msg:*{plain.message_id}")


def test_per_user_bound_leaves_other_users_alone(settings: Settings, redis_conn: Redis) -> None:
    capped = limited(settings, queue_max_per_user=2)
    for _ in range(2):
        enqueue_turn(redis_conn, capped, turn("alice"))
    with pytest.raises(QueueFull, match="wait for those"):
        enqueue_turn(redis_conn, capped, turn("alice"))
    enqueue_turn(redis_conn, capped, turn("bob"))


def test_rate_limit_is_a_token_bucket(settings: Settings, redis_conn: Redis) -> None:
    capped = limited(settings, user_turns_per_minute=120.0, user_burst=3)  # 2 per second
    for _ in range(3):
        enqueue_turn(redis_conn, capped, turn("alice"))
    with pytest.raises(UserRateLimited, match=r"try again in \d+ seconds") as refused:
        enqueue_turn(redis_conn, capped, turn("alice"))
    assert 0 < refused.value.retry_after <= 2
    enqueue_turn(redis_conn, capped, turn("bob"))  # buckets are per user
    time.sleep(0.6)  # refills one token
    enqueue_turn(redis_conn, capped, turn("alice"))


def test_local_chat_says_busy_in_one_line(settings: Settings, redis_conn: Redis) -> None:
    capped = limited(settings, queue_max=1)
    enqueue_turn(redis_conn, capped, turn("other"))
    out = io.StringIO()
    ask(redis_conn, capped, turn(), out)
    assert out.getvalue().count("\n") == 1 and "busy" in out.getvalue()


def test_discord_says_busy_at_once(settings: Settings, redis_conn: Redis) -> None:
    capped = limited(settings, queue_max_per_user=1)
    worker = StandInWorker(redis_conn)
    config = DiscordSettings(edit_interval=0.1, _env_file=None)  # type: ignore[call-arg]

    async def scenario() -> None:
        async with running_bot(capped, config) as (fake, _bot):
            await fake.user_says(CHANNEL, f"<@{BOT_ID}> first question")
            await worker.take()  # running, never finished
            second = await fake.user_says(CHANNEL, f"<@{BOT_ID}> second question")
            thread = int(second["id"])
            texts = await fake.wait_for(
                lambda: [m["content"] for m in fake.bot_messages(thread)] or None
            )
            assert len(texts) == 1 and texts[0].startswith("⚠️ ") and "wait for" in texts[0]
            assert "\n" not in texts[0]

    asyncio.run(scenario())


def test_discord_retry_reuses_the_placeholder(settings: Settings, redis_conn: Redis) -> None:
    """A retried attempt (fresh ``started``, with or without an error first) edits the same
    message: the user ends with one message holding only the final answer."""
    worker = StandInWorker(redis_conn)
    config = DiscordSettings(edit_interval=0.1, _env_file=None)  # type: ignore[call-arg]

    async def scenario() -> None:
        async with running_bot(settings, config) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"<@{BOT_ID}> tell me")
            job_id, _turn = await worker.take()
            thread = int(question["id"])

            def shown() -> list[str]:
                return [m["content"] for m in fake.bot_messages(thread)]

            worker.emit(job_id, "started")
            worker.emit(job_id, "delta", "Partial from a dying worker")
            await fake.wait_for(lambda: shown() == ["Partial from a dying worker"])
            worker.emit(job_id, "started")  # no error event: it was lost with the worker
            worker.emit(job_id, "delta", "The whole ")
            await fake.wait_for(lambda: shown() == ["The whole "])
            worker.emit(job_id, "error", error="worker stopped", retrying=True)
            worker.emit(job_id, "started")
            worker.finish(job_id, "The whole answer.")
            await fake.wait_for(lambda: shown() == ["The whole answer."])

    asyncio.run(scenario())


def test_slack_says_busy_at_once(settings: Settings, redis_conn: Redis, redis_url: str) -> None:
    capped = limited(settings, user_turns_per_minute=60.0, user_burst=1)
    worker = FakeWorker(redis_conn)

    async def main() -> None:
        async with slack_bot(capped, redis_url) as bot:
            await bot.send_event(event_body(mention("first", ts="1.0")))
            await worker.take()
            await bot.send_event(event_body(mention("second", ts="2.0")))

            def notice() -> list[str] | None:
                texts = [m.text for m in bot.fake.bot_messages("C1", "2.0")]
                return texts if texts and texts[0].startswith(":warning:") else None

            texts = await bot.fake.wait_for(notice)
            assert len(texts) == 1 and "try again in" in texts[0] and "\n" not in texts[0]
            assert worker.queued() == 0

    asyncio.run(main())
