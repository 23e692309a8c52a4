"""The Slack bot end to end over HTTP: signed Events API requests and slash commands in,
real Bolt + slack_sdk, a fake Slack Web API and a scripted worker behind it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fakes.slack_api import BOT_ID, BOT_USER_ID, TEAM_ID
from fakes.slack_harness import (
    BotUnderTest,
    FakeWorker,
    event_body,
    mention,
    message,
    running_bot,
)
from redis import Redis

from bots.slack.mrkdwn import to_mrkdwn
from bots.slack.settings import SlackSettings
from bots.slack.surface import THINKING
from shared.settings import Settings

ANSWER = "Here is **the** answer with `code` and [a link](https://example.com)."


def run_bot(
    settings: Settings,
    redis_url: str,
    scenario: Callable[[BotUnderTest], Awaitable[None]],
    slack: SlackSettings | None = None,
) -> None:
    async def main() -> None:
        async with running_bot(settings, redis_url, slack) as bot:
            await asyncio.wait_for(scenario(bot), 20)

    asyncio.run(main())


async def final_thread(bot: BotUnderTest, channel: str, thread: str, text: str) -> list[str]:
    """Wait until the bot's messages in the thread read ``text`` (as mrkdwn), and return them."""
    wanted = to_mrkdwn(text)

    def done() -> list[str] | None:
        texts = [m.text for m in bot.fake.bot_messages(channel, thread)]
        return texts if "\n".join(texts) == wanted or texts == [wanted] else None

    return await bot.fake.wait_for(done)


# -- request verification ------------------------------------------------------------


def test_url_verification_and_signatures(settings: Settings, redis_url: str) -> None:
    async def scenario(bot: BotUnderTest) -> None:
        challenge = {"type": "url_verification", "challenge": "abc123", "token": "x"}
        ok = await bot.send_event(challenge)
        assert ok.status == 200 and "abc123" in ok.text

        body = event_body(mention("hello"))
        bad = await bot.send_event(body, secret="not-the-secret")
        stale = await bot.send_event(body, timestamp=int(time.time()) - 10 * 60)
        assert (bad.status, stale.status) == (401, 401)
        unsigned = await bot.post('{"type":"event_callback"}', {}, "application/json")
        assert unsigned.status == 401

    worker = FakeWorker(Redis.from_url(redis_url))
    run_bot(settings, redis_url, scenario)
    assert worker.queued() == 0


# -- mentions ----------------------------------------------------------------------------


def test_mention_gets_a_streamed_threaded_answer(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)
    prompts = SlackSettings(
        update_interval=0.2, channel_prompts={"C1": "Be brief."}, _env_file=None
    )

    async def scenario(bot: BotUnderTest) -> None:
        reply = await bot.send_event(event_body(mention("what is   2+2 &amp; why?")))
        assert reply.status == 200
        job_id, turn = await worker.take()
        assert (turn.platform, turn.workspace, turn.channel) == ("slack", TEAM_ID, "C1")
        assert turn.thread == turn.message_id == "1700000000.000100"
        assert turn.text == "what is   2+2 & why?"  # mention stripped, entities decoded
        assert turn.system_prompt == "Be brief."
        assert turn.history is None  # a new thread: nothing to rebuild

        placeholder = await bot.fake.wait_for(lambda: bot.fake.calls_to("chat.postMessage"))
        assert placeholder[0].args["text"] == THINKING
        assert placeholder[0].args["thread_ts"] == "1700000000.000100"

        worker.emit(job_id, "started")
        worker.emit(job_id, "delta", "Here is **the** ")
        await bot.fake.wait_for(lambda: bot.fake.calls_to("chat.update"))  # streamed, not at end
        worker.emit(job_id, "delta", "answer")
        worker.emit(job_id, "done", ANSWER, finish_reason="stop")
        texts = await final_thread(bot, "C1", "1700000000.000100", ANSWER)
        assert texts == ["Here is *the* answer with `code` and <https://example.com|a link>."]
        assert not bot.fake.calls_to("conversations.replies")

    run_bot(settings, redis_url, scenario, prompts)


def test_retried_event_is_answered_once(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        body = event_body(mention("once please"), event_id="EvRETRY1")
        first = await bot.send_event(body)
        job_id, _ = await worker.take()
        retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
        second = await bot.send_event(body, headers=retry)
        # The same message (channel + ts) again under a new event id.
        third = await bot.send_event(event_body(mention("once please")))
        assert (first.status, second.status, third.status) == (200, 200, 200)
        worker.answer(job_id, "Only once.")
        await final_thread(bot, "C1", "1700000000.000100", "Only once.")
        # Give any duplicate a chance to show up: another, unrelated event goes all the way.
        await bot.send_event(event_body(mention("sentinel", channel="C9", ts="1.5")))
        sentinel_id, _ = await worker.take()
        worker.answer(sentinel_id, "ok")
        await final_thread(bot, "C9", "1.5", "ok")
        assert worker.queued() == 0
        assert len(bot.fake.bot_messages("C1")) == 1

    run_bot(settings, redis_url, scenario)


# -- slash command -------------------------------------------------------------------------


def test_slash_command_acks_fast_then_answers_in_thread(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        reply = await bot.send_command("How do I <deploy> & roll back?")
        # Acked before any answer exists: nobody has taken the job yet.
        assert reply.status == 200 and reply.seconds < 3
        assert reply.text == ""
        job_id, turn = await worker.take()
        assert turn.text == "How do I <deploy> & roll back?"
        roots = [m for m in bot.fake.bot_messages("C1") if m.thread_ts is None]
        assert len(roots) == 1
        root = roots[0]
        assert root.text == "<@U1> asked: How do I &lt;deploy&gt; &amp; roll back?"
        assert turn.thread == turn.message_id == root.ts
        worker.answer(job_id, "Use the *runbook*.")
        assert await final_thread(bot, "C1", root.ts, "Use the *runbook*.") == [
            "Use the _runbook_."
        ]

    run_bot(settings, redis_url, scenario)


def test_slash_command_reset_and_usage(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    history_key = "corral:history:slack:C1:1700000000.000001"
    redis_conn.rpush(history_key, '{"role":"user","content":"hi"}')

    async def scenario(bot: BotUnderTest) -> None:
        usage = await bot.send_command("")
        assert usage.status == 200 and "/ask <question>" in usage.text
        howto = await bot.send_command("reset")
        assert "reset" in howto.text and "thread" in howto.text
        assert redis_conn.exists(history_key)
        done = await bot.send_command("reset", thread_ts="1700000000.000001")
        assert done.status == 200
        await bot.fake.wait_for(lambda: bot.fake.responses)
        assert "forgotten" in bot.fake.responses[0]["text"]
        assert not redis_conn.exists(history_key)

    run_bot(settings, redis_url, scenario)
    assert FakeWorker(redis_conn).queued() == 0


def test_slash_command_in_channel_without_the_bot(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    async def scenario(bot: BotUnderTest) -> None:
        bot.fake.fail_next("chat.postMessage", status=200, error="not_in_channel", retry_after=None)
        await bot.send_command("anyone?")
        await bot.fake.wait_for(lambda: bot.fake.responses)
        assert "invite" in bot.fake.responses[0]["text"]

    run_bot(settings, redis_url, scenario)
    assert FakeWorker(redis_conn).queued() == 0


# -- threads, DMs, history -------------------------------------------------------------------


def test_thread_follow_up_rebuilds_history_from_slack(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)
    root = "1700000000.000100"

    async def scenario(bot: BotUnderTest) -> None:
        bot.fake.replies[("C1", root)] = [
            {"ts": root, "user": "U1", "text": f"<@{BOT_USER_ID}> name a colour"},
            {"ts": "1700000000.000150", "user": BOT_USER_ID, "bot_id": BOT_ID, "text": "Blue."},
            {"ts": "1700000000.000160", "user": "U2", "subtype": "channel_join", "text": "joined"},
            {"ts": "1700000000.000200", "user": "U1", "text": "another?"},
        ]
        # Not mentioned, in a thread under one of the bot's messages: it is part of it.
        follow_up = message("another?", thread_ts=root, parent_user_id=BOT_USER_ID)
        await bot.send_event(event_body(follow_up))
        job_id, turn = await worker.take()
        assert turn.thread == root and turn.message_id == "1700000000.000200"
        assert [(m.role, m.content) for m in turn.history or []] == [
            ("user", "name a colour"),
            ("assistant", "Blue."),
        ]
        worker.answer(job_id, "Green.")
        await final_thread(bot, "C1", root, "Green.")

    run_bot(settings, redis_url, scenario)


def test_follow_up_without_mention_in_a_thread_it_answered(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(mention("first", ts="7.0")))
        job_id, _ = await worker.take()
        worker.answer(job_id, "First answer.")
        await final_thread(bot, "C1", "7.0", "First answer.")
        # The root is the user's, not ours: only the "answered here" marker says we belong.
        follow_up = message("and then?", ts="7.1", thread_ts="7.0", parent_user_id="U1")
        await bot.send_event(event_body(follow_up))
        # Accepted: a placeholder in the same thread, which then shows the queue position
        # (the fake worker never finishes the first job, so RQ holds this one behind it).
        texts = await bot.fake.wait_for(
            lambda: (t := [m.text for m in bot.fake.bot_messages("C1", "7.0")])[1:] and t
        )
        assert texts == ["First answer.", THINKING]
        placeholder = bot.fake.bot_messages("C1", "7.0")[1]
        await bot.fake.wait_for(lambda: "1 ahead of you in the queue" in placeholder.text)

    run_bot(settings, redis_url, scenario)


def test_messages_the_bot_must_ignore(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        ignored = [
            message("top-level chatter"),
            message("a thread we are not in", ts="2.1", thread_ts="2.0", parent_user_id="U7"),
            message("edited", subtype="message_changed", thread_ts="2.0", ts="2.2"),
            message("from a bot", bot_id="B9", subtype="bot_message", ts="2.3"),
            mention("bot mentioning us", bot_id="B9", ts="2.4"),
        ]
        for event in ignored:
            assert (await bot.send_event(event_body(event))).status == 200
        # Then a DM, which is answered at the top level of the DM.
        dm = message("hi in private", channel="D1", channel_type="im", ts="3.0")
        await bot.send_event(event_body(dm))
        job_id, turn = await worker.take()
        assert (turn.channel, turn.text, turn.thread) == ("D1", "hi in private", "")
        worker.answer(job_id, "Hello!")
        await bot.fake.wait_for(
            lambda: [m for m in bot.fake.bot_messages("D1") if m.text == "Hello!"]
        )
        assert bot.fake.bot_messages("D1")[0].thread_ts is None
        assert worker.queued() == 0
        assert bot.fake.bot_messages("C1") == []

    run_bot(settings, redis_url, scenario)


def test_allow_lists(settings: Settings, redis_conn: Redis, redis_url: str) -> None:
    worker = FakeWorker(redis_conn)
    limited = SlackSettings(
        update_interval=0.2, allowed_teams="T1", allowed_channels="C1,C2", _env_file=None
    )

    async def scenario(bot: BotUnderTest) -> None:
        other_channel = await bot.send_event(event_body(mention("hi", channel="C3", ts="4.0")))
        other_team = event_body(mention("hi", ts="4.1"))
        other_team["team_id"] = "T2"
        other_team["event"]["team"] = "T2"
        refused = await bot.send_event(other_team)
        command = await bot.send_command("hi", channel="C3")
        assert (other_channel.status, refused.status, command.status) == (200, 200, 200)
        assert "isn't enabled" in command.text
        assert worker.queued() == 0
        await bot.send_event(event_body(mention("allowed", channel="C2", ts="4.2")))
        job_id, turn = await worker.take()
        assert turn.channel == "C2"
        worker.answer(job_id, "yes")
        await final_thread(bot, "C2", "4.2", "yes")
        assert worker.queued() == 0 and not bot.fake.bot_messages("C3")

    run_bot(settings, redis_url, scenario, limited)


# -- errors -------------------------------------------------------------------------------------


def test_worker_error_is_one_short_line(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(mention("break", ts="5.0")))
        job_id, _ = await worker.take()
        worker.emit(job_id, "started")
        worker.emit(job_id, "error", error="the model ran out of memory", retrying=True)
        worker.emit(job_id, "error", error="the model ran out of memory")
        texts = await bot.fake.wait_for(
            lambda: [m.text for m in bot.fake.bot_messages("C1", "5.0") if "warning" in m.text]
        )
        assert texts == [":warning: the model ran out of memory"]
        assert "Traceback" not in "".join(c.args.get("text", "") for c in bot.fake.calls)

    run_bot(settings, redis_url, scenario)


def test_mention_reset_in_thread(settings: Settings, redis_conn: Redis, redis_url: str) -> None:
    key = "corral:history:slack:C1:6.0"
    redis_conn.rpush(key, '{"role":"user","content":"hi"}')

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(mention("reset", ts="6.5", thread_ts="6.0")))
        await bot.fake.wait_for(lambda: bot.fake.bot_messages("C1", "6.0"))
        assert "forgotten" in bot.fake.bot_messages("C1", "6.0")[0].text
        assert not redis_conn.exists(key)

    run_bot(settings, redis_url, scenario)
    assert FakeWorker(redis_conn).queued() == 0
