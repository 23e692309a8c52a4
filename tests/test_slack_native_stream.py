"""Native streaming (chat.startStream / appendStream / stopStream) against the fake Slack,
through the real slack_sdk client and its chat_stream helper: a NativeReply fed a job's
events as the pipeline feeds it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fakes.slack_api import TEAM_ID, FakeSlack
from fakes.slack_harness import FakeWorker, event_body, mention, running_bot
from redis import Redis

from bots.answer import PacedReply
from bots.slack.app import native_wanted
from bots.slack.bot import make_client
from bots.slack.mrkdwn import to_mrkdwn
from bots.slack.native_stream import NativeReply
from bots.slack.settings import SlackSettings
from bots.slack.surface import SlackSurface
from shared.contract import StreamEvent
from shared.settings import Settings

Scenario = Callable[[FakeSlack, NativeReply, list[str]], Awaitable[None]]
THREAD = "1700000000.000100"


def run_native(scenario: Scenario, *, channel: str = "C1") -> None:
    async def main() -> None:
        fake = FakeSlack()
        await fake.start()
        client = make_client("xoxb-test", fake.api_url)
        statuses: list[str] = []

        async def on_status(text: str) -> None:
            statuses.append(text)

        try:
            writer = NativeReply(
                SlackSurface(client, channel, THREAD, interval=0.1),
                recipient_user="U1", recipient_team="T1", interval=0.05, on_status=on_status,
                final_blocks=lambda job: [{"type": "actions", "block_id": job, "elements": []}],
            )  # fmt: skip
            await asyncio.wait_for(scenario(fake, writer, statuses), 20)
        finally:
            await fake.close()

    asyncio.run(main())


def ev(seq: int, kind: str, text: str = "", **fields: object) -> StreamEvent:
    return StreamEvent(job_id="j1", seq=seq, kind=kind, text=text, **fields)  # type: ignore[arg-type]


async def paced(*events: StreamEvent, gap: float = 0.06) -> AsyncIterator[StreamEvent]:
    for event in events:
        await asyncio.sleep(gap)  # as a model writes: appends are batched by time
        yield event


def answer_events(answer: str, pieces: int = 4) -> list[StreamEvent]:
    step = -(-len(answer) // pieces)
    deltas = [answer[i : i + step] for i in range(0, len(answer), step)]
    return [
        ev(0, "started"),
        *(ev(i + 1, "delta", d) for i, d in enumerate(deltas)),
        ev(len(deltas) + 1, "done", answer, finish_reason="stop"),
    ]


def test_a_streamed_answer_ends_as_one_native_message() -> None:
    answer = "Rotate logs with **logrotate**.\n\n- daily\n- weekly\n\nThat's it."

    async def scenario(fake: FakeSlack, writer: NativeReply, statuses: list[str]) -> None:
        await writer.start()
        final = await writer.follow(paced(*answer_events(answer)))
        assert final.phase == "done"
        [message] = fake.messages.values()
        assert message.streamed and not message.streaming  # stopped: final
        assert message.text == answer  # Markdown: Slack renders it
        assert message.thread_ts == THREAD and writer.ts == message.ts
        assert len(message.appends) >= 2  # it grew while the model wrote
        assert message.blocks == [{"type": "actions", "block_id": "j1", "elements": []}]
        assert writer.posted == []  # the buttons came with chat.stopStream, not an update
        [start] = fake.calls_to("chat.startStream")
        assert start.args["recipient_user_id"] == "U1" and start.args["recipient_team_id"] == "T1"
        assert not fake.calls_to("chat.update") and not fake.calls_to("chat.postMessage")
        await asyncio.sleep(0)
        assert statuses == ["thinking…"]  # the waiting line went to the status, not a message

    run_native(scenario)


def test_a_429_on_append_stream_is_waited_out_and_nothing_is_lost() -> None:
    answer = "First part. Second part, written while Slack made us wait. The end."

    async def scenario(fake: FakeSlack, writer: NativeReply, _statuses: list[str]) -> None:
        # Three in a row: the client's retry handler absorbs two, the writer the third.
        fake.fail_next("chat.appendStream", retry_after=1)
        fake.fail_next("chat.appendStream", retry_after=0)
        fake.fail_next("chat.appendStream", retry_after=0)
        await writer.start()
        await writer.follow(paced(*answer_events(answer)))
        [message] = fake.messages.values()
        assert message.text == answer and not message.streaming
        appends = fake.calls_to("chat.appendStream")
        limited = [c for c in appends if c.status == 429]
        assert len(limited) == 3
        after = next(c for c in appends if c.at > limited[0].at and c is not limited[0])
        assert after.at - limited[0].at >= 0.9  # Retry-After: 1 was honoured
        assert len(fake.calls_to("chat.startStream")) == 1  # one message throughout

    run_native(scenario)


def test_where_streaming_is_refused_the_answer_falls_back_to_edits() -> None:
    answer = "An answer with `code` and **bold**."

    async def scenario(fake: FakeSlack, writer: NativeReply, _statuses: list[str]) -> None:
        fake.stream_error = "feature_not_enabled"
        await writer.start()
        final = await writer.follow(paced(*answer_events(answer)))
        assert final.phase == "done"
        [message] = fake.messages.values()
        assert not message.streamed
        assert message.text == to_mrkdwn(answer) and message.thread_ts == THREAD
        assert isinstance(writer.fallback, PacedReply)
        assert writer.posted == [(message.ts, message.text)]  # buttons go by chat.update

    run_native(scenario)


PARTIAL = "Once upon "


@pytest.mark.parametrize(
    ("resume_from", "rest", "whole"),
    [
        (0, "The retried ", "The retried answer."),  # the retry starts over
        (len(PARTIAL), "a time", "Once upon a time."),  # the retry resumes the answer
    ],
)
def test_a_retried_turn_keeps_one_message(resume_from: int, rest: str, whole: str) -> None:
    async def scenario(fake: FakeSlack, writer: NativeReply, _statuses: list[str]) -> None:
        await writer.start()
        events = [
            ev(0, "started"),
            ev(1, "delta", PARTIAL),
            ev(2, "error", error="The model failed", retrying=True, finish_reason="error"),
            ev(3, "started", resume_from=resume_from),
            ev(4, "delta", rest),
            ev(5, "done", whole, finish_reason="stop"),
        ]
        final = await writer.follow(paced(*events))
        assert final.text == whole
        [message] = fake.messages.values()
        assert message.streamed and not message.streaming
        assert message.text == to_mrkdwn(whole)  # in place
        assert any("retrying" in edit for edit in message.edits)  # said why it waited
        if resume_from:  # it carried on: the text shown was never taken back
            shown = [e for e in message.edits if "retrying" not in e]
            assert all(e.startswith(PARTIAL) for e in shown), message.edits

    run_native(scenario)


def test_a_retry_before_any_text_keeps_streaming_natively() -> None:
    async def scenario(fake: FakeSlack, writer: NativeReply, statuses: list[str]) -> None:
        await writer.start()
        events = [
            ev(0, "started"),
            ev(1, "error", error="The model failed", retrying=True, finish_reason="error"),
            ev(2, "started"),
            *answer_events("Second time lucky.")[1:],
        ]
        await writer.follow(paced(*events))
        [message] = fake.messages.values()
        assert message.streamed and message.text == "Second time lucky."
        assert writer.fallback is None
        await asyncio.sleep(0.05)
        assert "The model failed, retrying…" in statuses  # said why it waited

    run_native(scenario)


def test_a_stream_that_expires_midway_ends_by_edits_in_the_same_message() -> None:
    answer = "One. Two. Three. Four. Five. Six."

    async def scenario(fake: FakeSlack, writer: NativeReply, _statuses: list[str]) -> None:
        await writer.start()
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()

        async def events() -> AsyncIterator[StreamEvent]:
            while True:
                event = await queue.get()
                yield event
                if event.final:
                    return

        task = asyncio.create_task(writer.follow(events()))
        for event in answer_events(answer, pieces=6)[:3]:
            queue.put_nowait(event)
        [started] = await fake.wait_for(lambda: fake.calls_to("chat.startStream"))
        await asyncio.sleep(0.1)
        fake.expire_stream(writer.ts)  # Slack ends the stream on its side
        for event in answer_events(answer, pieces=6)[3:]:
            await asyncio.sleep(0.06)
            queue.put_nowait(event)
        final = await task
        assert final.phase == "done"
        [message] = fake.messages.values()
        assert message.text == to_mrkdwn(answer)  # the whole answer, by chat.update
        assert started.args["channel"] == "C1"

    run_native(scenario)


def test_a_final_text_unlike_the_streamed_one_rewrites_the_same_message() -> None:
    async def scenario(fake: FakeSlack, writer: NativeReply, _statuses: list[str]) -> None:
        await writer.start()
        events = [
            ev(0, "started"),
            ev(1, "delta", "Something the moderation "),
            ev(2, "done", "I can't help with that.", finish_reason="stop"),
        ]
        await writer.follow(paced(*events))
        [message] = fake.messages.values()
        assert message.text == "I can't help with that."

    run_native(scenario)


def test_streamed_text_never_pings_and_errors_end_the_stream() -> None:
    async def scenario(fake: FakeSlack, writer: NativeReply, _statuses: list[str]) -> None:
        await writer.start()
        events = [
            ev(0, "started"),
            ev(1, "delta", "Ask <@U9> or <!channel>, @here."),
            ev(2, "error", error="The model could not answer.", finish_reason="error"),
        ]
        final = await writer.follow(paced(*events))
        assert final.phase == "failed"
        [message] = fake.messages.values()
        assert not message.streaming
        assert "<@" not in message.text and "<!" not in message.text
        assert "@here" not in message.text
        assert message.text.endswith(":warning: The model could not answer.")

    run_native(scenario)


def test_the_writer_choice() -> None:
    # auto: native where the assistant pane shows the status; channels keep edits.
    assert native_wanted("auto", "1.2", in_pane=True)
    assert not native_wanted("auto", "1.2", in_pane=False)
    assert native_wanted("on", "1.2", in_pane=False)
    assert not native_wanted("on", None, in_pane=False)  # a stream is always a reply
    assert not native_wanted("off", "1.2", in_pane=True)


def test_with_native_streaming_on_a_channel_answer_streams_to_its_asker(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    """Through Bolt: a mention in a channel, streamed natively to the one who asked."""
    worker = FakeWorker(redis_conn)
    slack = SlackSettings(native_streaming="on", stream_interval=0.05, _env_file=None)  # type: ignore[call-arg]
    root = "1700000000.000100"

    async def main() -> None:
        async with running_bot(settings, redis_url, slack) as bot:
            await bot.send_event(event_body(mention("rotate logs?", ts=root)))
            job_id, _turn = await worker.take()
            worker.answer(job_id, "Use **logrotate** daily.", pieces=3)
            [reply] = await bot.fake.wait_for(
                lambda: [m for m in bot.fake.bot_messages("C1", root) if m.blocks]
            )
            assert reply.streamed and reply.text == "Use **logrotate** daily."
            [start] = bot.fake.calls_to("chat.startStream")
            assert (start.args["recipient_user_id"], start.args["recipient_team_id"]) == (
                "U1",
                TEAM_ID,
            )
            assert start.args["thread_ts"] == root
            assert not bot.fake.calls_to("chat.postMessage")  # no placeholder in native mode

    asyncio.run(main())  # (the harness ends every other task when it closes)


def test_through_the_pipeline_a_retried_native_answer_is_one_message_with_buttons(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    """Text streamed, then the worker retries: the same message is rewritten by edits,
    and the finished answer still gets its feedback buttons (by chat.update)."""
    worker = FakeWorker(redis_conn)
    slack = SlackSettings(
        native_streaming="on", stream_interval=0.05, update_interval=0.1, _env_file=None
    )  # type: ignore[call-arg]
    root = "1700000000.000100"

    async def main() -> None:
        async with running_bot(settings, redis_url, slack) as bot:
            await bot.send_event(event_body(mention("rotate logs?", ts=root)))
            job_id, _turn = await worker.take()
            worker.emit(job_id, "started")
            worker.emit(job_id, "delta", "A partial answer that ")
            await bot.fake.wait_for(lambda: bot.fake.calls_to("chat.startStream"))
            worker.emit(job_id, "error", error="The model failed", retrying=True)
            worker.answer(job_id, "The retried answer.")
            [reply] = await bot.fake.wait_for(
                lambda: [m for m in bot.fake.bot_messages("C1", root) if m.blocks]
            )
            assert reply.streamed and reply.text == to_mrkdwn("The retried answer.")
            assert any("retrying" in edit for edit in reply.edits)  # said why it waited
            actions = [b for b in reply.blocks if b.get("type") == "actions"]
            assert [e["value"] for e in actions[0]["elements"]] == [job_id, job_id]
            assert len(bot.fake.bot_messages("C1", root)) == 1

    asyncio.run(main())
