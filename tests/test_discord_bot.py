"""The real discord.py client, against a local fake Discord and real Redis/RQ."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import pytest
from fakes.discord_harness import StandInWorker, running_bot
from fakes.discord_server import ALICE_ID, BOT_ID, BOT_USER, TOKEN, FakeDiscord, user_payload
from redis import Redis

from bots.discord import bot as discord_bot
from bots.discord.settings import DiscordSettings, load_discord_settings
from bots.splitting import split_message
from shared.contract import Author, Message, conversation_key
from shared.history import ConversationStore
from shared.settings import Settings, SettingsError

pytestmark = pytest.mark.timeout(30)

MENTION = f"<@{BOT_ID}>"
CHANNEL = 800_000_000_000_000_010  # the fake guild's first text channel


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def config(**values: Any) -> DiscordSettings:
    return DiscordSettings(edit_interval=0.1, _env_file=None, **values)  # type: ignore[call-arg]


def contents(fake: FakeDiscord, channel_id: int) -> list[str]:
    return [m["content"] for m in fake.bot_messages(channel_id)]


def test_mention_opens_a_thread_and_streams_the_answer(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    answer = "Rotate logs with `logrotate`.\n\nIt runs daily from cron."

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} how do I rotate logs?")
            job_id, turn = await worker.take()
            thread_id = int(question["id"])  # a thread on a message takes its id

            assert turn.text == "how do I rotate logs?"
            assert (turn.platform, turn.channel, turn.thread) == (
                "discord",
                str(CHANNEL),
                str(thread_id),
            )
            assert turn.workspace == str(fake.guild_id)
            assert turn.history is None  # a brand-new thread has nothing to rebuild
            [thread] = fake.threads()
            assert thread["name"] == "how do I rotate logs?"
            assert thread["parent_id"] == str(CHANNEL)
            # The placeholder appears before the model says anything.
            await fake.wait_for(lambda: contents(fake, thread_id))

            worker.emit(job_id, "started")
            worker.emit(job_id, "delta", "Rotate logs ")
            await fake.wait_for(lambda: contents(fake, thread_id) == ["Rotate logs "])
            worker.emit(job_id, "delta", "with `logrotate`.")
            worker.finish(job_id, answer)
            await fake.wait_for(lambda: contents(fake, thread_id) == [answer])
            assert fake.rest_calls("POST", f"/channels/{thread_id}/typing")
            # Nothing went to the channel itself: the answer lives in the thread.
            assert contents(fake, CHANNEL) == []

    run(scenario())


def test_follow_up_in_the_thread_needs_no_mention_and_keeps_the_conversation(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    store = ConversationStore(redis_conn, settings.history_ttl)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} what is RQ?")
            thread_id = int(question["id"])
            job_id, first = await worker.take()
            worker.answer(job_id, "A Redis job queue.")
            await fake.wait_for(lambda: contents(fake, thread_id) == ["A Redis job queue."])

            # The store lost the conversation (the stand-in worker never saved it):
            # the bot rebuilds it from the thread, the question included.
            await fake.user_says(thread_id, "who maintains it?")
            job_id, second = await worker.take()
            assert second.conversation_key == first.conversation_key
            assert second.text == "who maintains it?"
            alice = Author(id=str(ALICE_ID), name="alice")
            assert second.history == [
                Message(role="user", content="what is RQ?", author=alice),
                Message(role="assistant", content="A Redis job queue."),
            ]
            assert second.author == alice
            worker.answer(job_id, "Its community.")
            await fake.wait_for(lambda: contents(fake, thread_id)[-1:] == ["Its community."])

            # With the history in the store, the bot leaves it to the worker.
            store.save(first.conversation_key, [Message(role="user", content="x")])
            await fake.user_says(thread_id, "thanks")
            job_id, third = await worker.take()
            assert third.history is None
            assert third.conversation_key == first.conversation_key
            worker.answer(job_id, "You're welcome.")
            await fake.wait_for(lambda: contents(fake, thread_id)[-1:] == ["You're welcome."])
            # The bot's own messages (echoed back by Discord) started no turns.
            assert worker.queue.count == 0

    run(scenario())


def test_other_bots_and_plain_channel_messages_are_ignored(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    other_bot = user_payload(700_000_000_000_000_099, "otherbot", bot=True)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            ignored = [
                await fake.user_says(CHANNEL, f"{MENTION} from a bot", author=other_bot),
                await fake.user_says(CHANNEL, f"{MENTION} from myself", author=BOT_USER),
                await fake.user_says(CHANNEL, "no mention here"),
            ]
            await fake.wait_for(lambda: all(int(m["id"]) in fake.handled for m in ignored))
            assert worker.queue.count == 0
            assert fake.threads() == []
            assert fake.rest_calls("POST", r"/channels/\d+/messages") == []
            # The same bot does answer a person (the test can tell the difference).
            await fake.user_says(CHANNEL, f"{MENTION} from a person")
            _job_id, turn = await worker.take()
            assert turn.text == "from a person"

    run(scenario())


def test_a_bare_mention_gets_a_usage_hint(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            await fake.user_says(CHANNEL, MENTION)
            [hint] = await fake.wait_for(lambda: contents(fake, CHANNEL))
            assert "Mention me with a question" in hint
            assert fake.threads() == []
            assert worker.queue.count == 0

    run(scenario())


def test_allow_lists_limit_where_the_bot_answers(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)
    other_channel = 800_000_000_000_000_011
    other_guild = 800_000_000_000_000_200

    async def scenario() -> None:
        fake = FakeDiscord(extra_guilds=(other_guild,))
        allowed = config(allowed_guilds=str(fake.guild_id), allowed_channels=f"{CHANNEL}")
        async with running_bot(settings, allowed, fake) as (fake, _bot):
            ignored = [
                await fake.user_says(other_guild + 10, f"{MENTION} other guild"),
                await fake.user_says(other_channel, f"{MENTION} other channel"),
            ]
            await fake.wait_for(lambda: all(int(m["id"]) in fake.handled for m in ignored))
            assert worker.queue.count == 0
            assert fake.threads() == []
            await fake.user_says(CHANNEL, f"{MENTION} allowed channel")
            _job_id, turn = await worker.take()
            assert turn.text == "allowed channel"
            assert [t["parent_id"] for t in fake.threads()] == [str(CHANNEL)]

    run(scenario())


def test_direct_messages_are_answered_unless_turned_off(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    dm_channel = 600_000_000_000_000_001

    async def scenario(allow: bool) -> None:
        async with running_bot(settings, config(allow_dms=allow)) as (fake, _bot):
            dm = await fake.user_says(dm_channel, "hello in private", dm=True)
            if not allow:
                await fake.wait_for(lambda: int(dm["id"]) in fake.handled)
                assert worker.queue.count == 0
                assert contents(fake, dm_channel) == []
                return
            job_id, turn = await worker.take()
            assert turn.text == "hello in private"
            assert (turn.channel, turn.thread, turn.workspace) == (str(dm_channel), "", "")
            worker.answer(job_id, "Hi there.")
            await fake.wait_for(lambda: contents(fake, dm_channel) == ["Hi there."])

    run(scenario(True))
    run(scenario(False))


def test_long_answers_continue_in_more_messages(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)
    code = "```python\n" + "\n".join(f"value_{i} = {i} * {i}" for i in range(150)) + "\n```"
    answer = "Here is the table:\n\n" + code + "\n\nThat is all."
    assert len(answer) > 3000

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} print squares")
            thread_id = int(question["id"])
            job_id, _turn = await worker.take()
            worker.answer(job_id, answer, pieces=7)
            expected = split_message(answer, 2000)
            assert len(expected) >= 2
            await fake.wait_for(lambda: contents(fake, thread_id) == expected)
            for piece in contents(fake, thread_id):
                assert len(piece) <= 2000
                assert piece.count("```") % 2 == 0  # every piece renders its code block

    run(scenario())


def test_a_429_during_streaming_is_waited_out_and_no_text_is_lost(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} count")
            thread_id = int(question["id"])
            job_id, _turn = await worker.take()
            [placeholder] = await fake.wait_for(lambda: fake.bot_messages(thread_id))
            edits = rf"/channels/{thread_id}/messages/{placeholder['id']}"
            fake.rate_limit("PATCH", edits, times=1, retry_after=0.6)

            worker.emit(job_id, "started")
            worker.emit(job_id, "delta", "one ")
            await fake.wait_for(
                lambda: [c for c in fake.rest_calls("PATCH", edits) if c.status == 429]
            )
            # Streams on while discord.py sleeps out retry_after.
            worker.emit(job_id, "delta", "two ")
            worker.emit(job_id, "delta", "three")
            # Before any final event: the edit after the wait carries everything.
            await fake.wait_for(lambda: contents(fake, thread_id) == ["one two three"])
            statuses = [c.status for c in fake.rest_calls("PATCH", edits)]
            assert statuses[0] == 429 and statuses[-1] == 200
            worker.finish(job_id, "one two three")
            await fake.wait_for(lambda: contents(fake, thread_id) == ["one two three"])

    run(scenario())


def test_worker_errors_reach_the_user_as_one_short_notice(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    too_long = "Your message is too long for the model (5000 tokens, the limit is 4096)."

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} {'words ' * 50}")
            thread_id = int(question["id"])
            job_id, _turn = await worker.take()
            worker.emit(job_id, "error", error=too_long)
            await fake.wait_for(lambda: contents(fake, thread_id) == [f"⚠️ {too_long}"])

    run(scenario())


def test_the_placeholder_tells_the_place_in_line(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            first = await fake.user_says(CHANNEL, f"{MENTION} first question")
            await fake.wait_for(lambda: contents(fake, int(first["id"])))
            second = await fake.user_says(CHANNEL, f"{MENTION} second question")
            # Nobody works the queue: the second turn waits behind the first.
            [waiting] = await fake.wait_for(lambda: contents(fake, int(second["id"])))
            assert "1 question ahead" in waiting
            assert worker.queue.count == 2

    run(scenario())


def test_slash_reset_forgets_the_thread(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)
    store = ConversationStore(redis_conn, settings.history_ttl)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} remember 42")
            thread_id = int(question["id"])
            job_id, turn = await worker.take()
            worker.answer(job_id, "Noted: 42.")
            await fake.wait_for(lambda: contents(fake, thread_id) == ["Noted: 42."])
            key = conversation_key("discord", str(CHANNEL), str(thread_id))
            assert turn.conversation_key == key
            store.save(key, [Message(role="user", content="remember 42")])

            interaction = await fake.interact(thread_id, "reset")
            [reply] = await fake.wait_for(lambda: fake.followups)
            assert "forgot" in reply["content"]
            assert reply["flags"] & 64  # ephemeral: only the user who asked sees it
            [ack] = fake.interaction_callbacks
            assert (ack["id"], ack["type"]) == (int(interaction["id"]), 5)  # deferred
            assert not store.exists(key)

            # The thread still shows the old turns, but they are not rebuilt either.
            await fake.user_says(thread_id, "what number?")
            _job_id, after = await worker.take()
            assert after.conversation_key == key
            assert after.history is None

    run(scenario())


def test_slash_status_reports_queue_worker_and_model(settings: Settings, redis_conn: Redis) -> None:
    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            first = await fake.user_says(CHANNEL, f"{MENTION} one")
            second = await fake.user_says(CHANNEL, f"{MENTION} two")
            for message in (first, second):
                await fake.wait_for(lambda m=message: contents(fake, int(m["id"])))
            await fake.interact(CHANNEL, "status")
            [reply] = await fake.wait_for(lambda: fake.followups)
            assert reply["content"] == (
                f"Queue: 2 waiting · Worker: down · Model: {settings.display_model_name}"
            )
            assert fake.interaction_callbacks[0]["type"] == 5

    run(scenario())


def test_slash_ask_in_a_channel_answers_in_a_new_thread(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            await fake.interact(CHANNEL, "ask", {"question": "what is a slot?"})
            job_id, turn = await worker.take()
            assert turn.text == "what is a slot?"
            [ack] = fake.interaction_callbacks
            assert ack["type"] == 4 and "what is a slot?" in ack["data"]["content"]
            [thread] = fake.threads()
            assert thread["name"] == "what is a slot?"
            assert turn.thread == thread["id"]
            worker.answer(job_id, "A concurrent generation.")
            thread_id = int(thread["id"])
            await fake.wait_for(lambda: contents(fake, thread_id) == ["A concurrent generation."])

    run(scenario())


def test_channel_prompts_apply_to_threads_and_the_token_is_never_logged(
    settings: Settings, redis_conn: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    worker = StandInWorker(redis_conn)
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        prompts = config(channel_prompts={CHANNEL: "Answer like a pirate."})
        async with running_bot(settings, prompts) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} hello")
            job_id, turn = await worker.take()
            assert turn.system_prompt == "Answer like a pirate."
            worker.answer(job_id, "Arr.")
            thread_id = int(question["id"])
            await fake.wait_for(lambda: contents(fake, thread_id) == ["Arr."])
            await fake.user_says(thread_id, "again")
            _job_id, follow_up = await worker.take()
            assert follow_up.system_prompt == "Answer like a pirate."  # the parent's prompt

    run(scenario())
    assert caplog.records  # debug logging was on, so the check below means something
    assert TOKEN not in caplog.text


def test_discord_settings_read_lists_and_prompts_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_DISCORD_ALLOWED_GUILDS", "1, 2")
    monkeypatch.setenv("CORRAL_DISCORD_ALLOWED_CHANNELS", "[3]")
    monkeypatch.setenv("CORRAL_DISCORD_ALLOW_DMS", "false")
    monkeypatch.setenv("CORRAL_DISCORD_CHANNEL_PROMPTS", '{"3": "Be brief."}')
    loaded = load_discord_settings(_env_file=None)
    assert loaded.allowed_guilds == {1, 2}
    assert loaded.allowed_channels == {3}
    assert loaded.allow_dms is False
    assert loaded.channel_prompts == {3: "Be brief."}

    monkeypatch.setenv("CORRAL_DISCORD_ALLOWED_GUILDS", "one,two")
    with pytest.raises(SettingsError, match="CORRAL_DISCORD_ALLOWED_GUILDS"):
        load_discord_settings(_env_file=None)


def test_run_refuses_to_start_without_a_token(settings: Settings) -> None:
    assert settings.discord_token is None
    with pytest.raises(SettingsError, match="DISCORD_TOKEN"):
        discord_bot.run(settings, str(settings.redis_url))


def test_a_mention_in_someone_elses_thread_answers_there_and_follow_ups_continue(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    alice = 700_000_000_000_000_001

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            thread_id = await fake.open_thread(CHANNEL, owner_id=alice)
            chatter = await fake.user_says(thread_id, "just people talking")
            await fake.wait_for(lambda: int(chatter["id"]) in fake.handled)
            assert worker.queue.count == 0  # not the bot's thread, no mention: not for us

            await fake.user_says(thread_id, f"{MENTION} summarise this thread")
            job_id, turn = await worker.take()
            assert (turn.channel, turn.thread) == (str(CHANNEL), str(thread_id))
            assert turn.text == "summarise this thread"
            # Earlier messages of the thread are the rebuilt history.
            asker = Author(id=str(ALICE_ID), name="alice")
            assert turn.history == [
                Message(role="user", content="just people talking", author=asker)
            ]
            assert len(fake.threads()) == 1  # answered in place, no new thread
            worker.answer(job_id, "People talked.")
            await fake.wait_for(lambda: contents(fake, thread_id) == ["People talked."])
            [reply] = fake.bot_messages(thread_id)
            assert str(reply["message_reference"]["message_id"]) == turn.message_id

            await fake.user_says(thread_id, "and then?")  # no mention needed any more
            _job_id, follow_up = await worker.take()
            assert follow_up.conversation_key == turn.conversation_key

    run(scenario())


def test_a_retried_job_restarts_the_answer_in_place(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} hi")
            thread_id = int(question["id"])
            job_id, _turn = await worker.take()
            worker.emit(job_id, "started")
            worker.emit(job_id, "delta", "Half an ans")
            await fake.wait_for(lambda: contents(fake, thread_id) == ["Half an ans"])
            worker.emit(job_id, "error", error="The worker restarted.", retrying=True)
            [notice] = await fake.wait_for(
                lambda: [c for c in contents(fake, thread_id) if "Retrying" in c]
            )
            assert "The worker restarted." in notice
            worker.answer(job_id, "A whole answer.")
            await fake.wait_for(lambda: contents(fake, thread_id) == ["A whole answer."])

    run(scenario())


def test_a_replayed_delivery_is_answered_once(settings: Settings, redis_conn: Redis) -> None:
    """A gateway RESUME (or a second bot process) delivers MESSAGE_CREATE again."""
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, config()) as (fake, _bot):
            question = await fake.user_says(CHANNEL, f"{MENTION} first question")
            job_id, _ = await worker.take()
            thread_id = int(question["id"])
            mention = fake.last_message_create
            worker.finish(job_id, "first answer")
            follow_up = await fake.user_says(thread_id, "second question")
            job_id, turn = await worker.take()
            assert turn.text == "second question"
            worker.finish(job_id, "second answer")
            for replay in (mention, fake.last_message_create):
                await fake.dispatch("MESSAGE_CREATE", replay)
            ids = (int(question["id"]), int(follow_up["id"]))
            await fake.wait_for(lambda: all(fake.handled_times.get(i) == 2 for i in ids))
            assert worker.queue.count == 0
            assert len(list(redis_conn.scan_iter("rq:job:*"))) == 2  # no third turn anywhere
            assert len(fake.threads()) == 1  # and no second thread on the mention

    run(scenario())
