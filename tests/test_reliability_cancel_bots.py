"""Cancelling from the chat platforms: deleting the question, and Slack's `/ask cancel`.

Real discord.py and Bolt clients against the fake servers in ``tests/fakes``, a
real Redis and RQ queue, and a stand-in worker that takes (or leaves) the jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fakes.discord_harness import StandInWorker, running_bot
from fakes.discord_server import BOT_ID, FakeDiscord
from fakes.slack_harness import BotUnderTest, FakeWorker, event_body, mention, message
from fakes.slack_harness import running_bot as slack_bot
from redis import Redis
from rq.job import Job, JobStatus

from bots.discord.settings import DiscordSettings
from bots.discord.surface import CANCELLED
from bots.slack.commands import CANCEL_DONE, NOTHING_TO_CANCEL
from bots.slack.surface import CANCELLED as SLACK_CANCELLED
from shared.cancel import cancel_key
from shared.settings import Settings
from shared.turn_index import job_for

pytestmark = pytest.mark.timeout(30)

CHANNEL = 800_000_000_000_000_010  # the fake guild's first text channel


def discord_config() -> DiscordSettings:
    return DiscordSettings(edit_interval=0.1, _env_file=None)  # type: ignore[call-arg]


def contents(fake: FakeDiscord, channel_id: int) -> list[str]:
    return [m["content"] for m in fake.bot_messages(channel_id)]


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """For state outside the fakes (Redis): poll until truthy."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)
    return result


def status(conn: Redis, job_id: str) -> JobStatus:
    return Job.fetch(job_id, connection=conn).get_status()


# -- Discord ---------------------------------------------------------------------------


def test_discord_deleting_a_queued_question_cancels_it_and_frees_the_slot(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, discord_config()) as (fake, bot):
            question = await fake.user_says(CHANNEL, f"<@{BOT_ID}> write me a long poem")
            thread_id = int(question["id"])
            await fake.wait_for(lambda: contents(fake, thread_id))  # the placeholder
            job_id = job_for(redis_conn, "discord", str(CHANNEL), question["id"])
            assert job_id and status(redis_conn, job_id) == JobStatus.QUEUED

            # Deleting some other message cancels nothing.
            other = await fake.user_says(CHANNEL, "unrelated chatter")
            deleted = asyncio.create_task(bot.wait_for("corral_delete_done", timeout=5))
            await fake.user_deletes(CHANNEL, int(other["id"]))
            await deleted
            assert not redis_conn.exists(cancel_key(job_id))

            await fake.user_deletes(CHANNEL, thread_id)
            await fake.wait_for(lambda: contents(fake, thread_id) == [CANCELLED])
            assert redis_conn.exists(cancel_key(job_id))
            assert status(redis_conn, job_id) == JobStatus.CANCELED

            # The cancelled turn never reaches a worker, and its conversation's slot is
            # free: the next question in the thread is queued at once, not held back.
            await fake.user_says(thread_id, "never mind, something short")
            next_id, turn = await worker.take()
            assert next_id != job_id and turn.text == "never mind, something short"
            worker.finish(next_id, "Short.")
            await fake.wait_for(lambda: contents(fake, thread_id) == [CANCELLED, "Short."])

    asyncio.run(scenario())


def test_discord_deleting_a_question_stops_its_running_answer(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, discord_config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"<@{BOT_ID}> tell me a story")
            thread_id = int(question["id"])
            job_id, _turn = await worker.take()
            Job.fetch(job_id, connection=redis_conn).set_status(JobStatus.STARTED)  # as a worker
            worker.emit(job_id, "started")
            worker.emit(job_id, "delta", "Once upon a time")
            await fake.wait_for(lambda: contents(fake, thread_id) == ["Once upon a time"])

            await fake.user_deletes(CHANNEL, thread_id)
            # The worker sees the flag between decode steps and ends the turn.
            await eventually(lambda: redis_conn.exists(cancel_key(job_id)))
            assert status(redis_conn, job_id) == JobStatus.STARTED  # running: flagged only
            worker.emit(job_id, "done", "Once upon a time", finish_reason="cancelled")
            worker.release(job_id)
            wanted = [f"Once upon a time\n\n{CANCELLED}"]
            await fake.wait_for(lambda: contents(fake, thread_id) == wanted)

    asyncio.run(scenario())


# -- Slack -----------------------------------------------------------------------------


def run_slack(
    settings: Settings, redis_url: str, scenario: Callable[[BotUnderTest], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with slack_bot(settings, redis_url) as bot:
            await asyncio.wait_for(scenario(bot), 20)

    asyncio.run(main())


def deleted(ts: str, *, channel: str = "C1", thread_ts: str | None = None) -> dict[str, Any]:
    """The `message` event Slack sends when a message is deleted."""
    previous = {"type": "message", "user": "U1", "text": "(gone)", "ts": ts}
    if thread_ts:
        previous["thread_ts"] = thread_ts
    now = f"{time.time():.6f}"
    return {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "channel": channel,
        "channel_type": "channel",
        "ts": now,
        "event_ts": now,
        "deleted_ts": ts,
        "previous_message": previous,
    }


def test_slack_deleting_a_queued_question_cancels_it(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    ts = "1700000100.000100"

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(mention("write me a long poem", ts=ts)))
        job_id = await bot.fake.wait_for(lambda: job_for(redis_conn, "slack", "C1", ts), poll=0.02)
        assert status(redis_conn, job_id) == JobStatus.QUEUED

        # Other subtypes still do nothing: an edit neither answers nor cancels.
        edited = message("edited", subtype="message_changed", thread_ts=ts)
        assert (await bot.send_event(event_body(edited))).status == 200
        await bot.send_event(event_body(deleted("1700000100.999999")))  # not a question

        reply = await bot.send_event(event_body(deleted(ts)))
        assert reply.status == 200
        placeholder = await bot.fake.wait_for(
            lambda: [m.text for m in bot.fake.bot_messages("C1", ts)] == [SLACK_CANCELLED]
        )
        assert placeholder
        assert redis_conn.exists(cancel_key(job_id))
        assert status(redis_conn, job_id) == JobStatus.CANCELED

    run_slack(settings, redis_url, scenario)
    assert FakeWorker(redis_conn).queued() == 0  # never reaches a worker


def test_slack_ask_cancel_stops_the_callers_running_turn(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    ts = "1700000200.000100"
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(mention("tell me a story", ts=ts)))
        job_id, _turn = await worker.take()
        Job.fetch(job_id, connection=redis_conn).set_status(JobStatus.STARTED)
        worker.emit(job_id, "started")
        worker.emit(job_id, "delta", "Once upon a time")
        await bot.fake.wait_for(
            lambda: [m.text for m in bot.fake.bot_messages("C1", ts)] == ["Once upon a time"]
        )

        # Someone else's `/ask cancel` leaves it alone.
        await bot.send_command("cancel", user_id="U2")
        await bot.fake.wait_for(lambda: bot.fake.responses)
        assert bot.fake.responses[-1]["text"] == NOTHING_TO_CANCEL
        assert not redis_conn.exists(cancel_key(job_id))

        reply = await bot.send_command("cancel")
        assert reply.status == 200
        await bot.fake.wait_for(lambda: len(bot.fake.responses) == 2)
        assert bot.fake.responses[-1]["text"] == CANCEL_DONE
        assert bot.fake.responses[-1].get("response_type") == "ephemeral"
        assert redis_conn.exists(cancel_key(job_id))

        worker.emit(job_id, "done", "Once upon a time", finish_reason="cancelled")
        wanted = [f"Once upon a time\n\n{SLACK_CANCELLED}"]
        await bot.fake.wait_for(lambda: [m.text for m in bot.fake.bot_messages("C1", ts)] == wanted)
        # Nothing of the caller's is left unfinished.
        await bot.send_command("cancel")
        await bot.fake.wait_for(lambda: len(bot.fake.responses) == 3)
        assert bot.fake.responses[-1]["text"] == NOTHING_TO_CANCEL

    run_slack(settings, redis_url, scenario)
