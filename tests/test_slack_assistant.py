"""The assistant pane through Bolt's own dispatch: signed events in, the fake Slack behind."""

from __future__ import annotations

import pytest
from fakes.slack_harness import (
    BotUnderTest,
    FakeWorker,
    assistant_context_changed,
    assistant_thread_started,
    event_body,
    message,
    run_scenario,
)
from redis import Redis

from bots.slack.assistant import assistant_pane
from shared.settings import Settings
from shared.team_config import ConfigError, parse_config

pytestmark = pytest.mark.timeout(40)

PANE = "D1"
THREAD = "1700000100.000100"


def pane_question(text: str, ts: str = "1700000100.000200") -> dict[str, object]:
    return message(text, channel=PANE, ts=ts, thread_ts=THREAD, channel_type="im")


def test_a_new_pane_thread_offers_the_configured_prompts(
    settings: Settings, redis_url: str
) -> None:
    config = """
assistant:
  title: "Ask the on-call helper"
  suggested_prompts:
    - {title: "Runbook", message: "Where is the runbook for the API?"}
    - {title: "Status", message: "What is broken right now?"}
"""

    async def scenario(bot: BotUnderTest) -> None:
        reply = await bot.send_event(event_body(assistant_thread_started(PANE, THREAD)))
        assert reply.status == 200
        prompts = await bot.fake.wait_for(lambda: bot.fake.suggested.get((PANE, THREAD)))
        assert [p["title"] for p in prompts] == ["Runbook", "Status"]
        assert prompts[0]["message"] == "Where is the runbook for the API?"
        [call] = bot.fake.calls_to("assistant.threads.setSuggestedPrompts")
        assert call.args["title"] == "Ask the on-call helper"

    run_scenario(settings, redis_url, scenario, config)


def test_a_pane_question_streams_natively_with_status_title_and_viewed_channel(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)
    answer = "The runbook lives in **#ops-docs**, pinned."

    async def scenario(bot: BotUnderTest) -> None:
        bot.fake.channel_names["C42"] = "ops"
        started = assistant_thread_started(PANE, THREAD, channel_id="C42", team_id="T1")
        await bot.send_event(event_body(started))
        await bot.fake.wait_for(lambda: bot.fake.suggested.get((PANE, THREAD)))  # defaults
        # The user switches to another channel: the model hears of the new one.
        bot.fake.channel_names["C99"] = "secret-ish"
        changed = assistant_context_changed(PANE, THREAD, channel_id="C99", team_id="T1")
        await bot.send_event(event_body(changed))  # handled before Slack gets its 200
        await bot.send_event(event_body(pane_question("where is the API runbook?")))
        job_id, turn = await worker.take()
        assert turn.text == "where is the API runbook?" and turn.thread == THREAD
        assert turn.system_prompt and "#secret-ish (channel id C99)" in turn.system_prompt
        statuses = await bot.fake.wait_for(lambda: bot.fake.statuses.get((PANE, THREAD)))
        assert statuses[0] == "is thinking…"
        assert bot.fake.titles[(PANE, THREAD)] == "where is the API runbook?"
        worker.answer(job_id, answer, pieces=4)
        done = await bot.fake.wait_for(
            lambda: [m for m in bot.fake.bot_messages(PANE, THREAD) if not m.streaming]
        )
        [reply] = done  # one message, streamed natively, no placeholder and no edits
        assert reply.streamed and reply.text == answer and not reply.edits
        assert not bot.fake.calls_to("chat.update")
        assert not bot.fake.calls_to("chat.postMessage")
        # A second question keeps the title: only the first names the thread.
        pane = await assistant_pane(bot.fake_client(), bot.turns.aredis, PANE, THREAD, "again?")
        assert pane is not None
        assert len(bot.fake.calls_to("assistant.threads.setTitle")) == 1

    run_scenario(settings, redis_url, scenario)


def test_the_viewed_channel_is_named_only_when_the_bot_can_read_it(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        started = assistant_thread_started(PANE, THREAD, channel_id="CPRIVATE", team_id="T1")
        await bot.send_event(event_body(started))
        await bot.fake.wait_for(lambda: bot.fake.suggested.get((PANE, THREAD)))
        await bot.send_event(event_body(pane_question("what's up there?")))
        job_id, turn = await worker.take()
        assert turn.system_prompt is not None
        assert "a Slack channel you cannot read" in turn.system_prompt
        assert "CPRIVATE" not in turn.system_prompt
        assert turn.system_prompt.startswith(settings.system_prompt.rstrip())
        worker.answer(job_id, "Can't say.")
        await bot.fake.wait_for(lambda: bot.fake.bot_messages(PANE, THREAD))

    run_scenario(settings, redis_url, scenario)


def test_a_dm_thread_outside_the_pane_keeps_the_edit_path(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(pane_question("plain DM thread")))
        job_id, turn = await worker.take()
        assert turn.system_prompt is None  # nothing added outside the pane
        worker.answer(job_id, "Answered.")
        await bot.fake.wait_for(
            lambda: [m.text for m in bot.fake.bot_messages(PANE, THREAD)] == ["Answered."]
        )
        assert not bot.fake.calls_to("chat.startStream")
        assert not bot.fake.calls_to("assistant.threads.setStatus")

    run_scenario(settings, redis_url, scenario)


def test_suggested_prompts_are_validated_with_a_clear_error() -> None:
    five = "\n".join(f"    - {{title: t{i}, message: m{i}}}" for i in range(5))
    with pytest.raises(ConfigError, match=r"assistant\.suggested_prompts: .*at most 4"):
        parse_config(f"assistant:\n  suggested_prompts:\n{five}\n")
    with pytest.raises(ConfigError, match=r"assistant\.suggested_prompts\[0\]\.message"):
        parse_config("assistant:\n  suggested_prompts:\n    - {title: t}\n")
    assert len(parse_config("").assistant.suggested_prompts) == 3  # the defaults
    assert parse_config("assistant:\n  suggested_prompts: []\n").assistant.suggested_prompts == []
