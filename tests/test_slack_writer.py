"""Streaming an answer into Slack (the pipeline's paced writer on the Slack surface) against
the fake Slack Web API, through the real slack_sdk client."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

from fakes.slack_api import FakeSlack

from bots.answer import PacedReply
from bots.slack.bot import make_client
from bots.slack.mrkdwn import to_mrkdwn
from bots.slack.surface import THINKING, SlackSurface
from shared.contract import StreamEvent

Scenario = Callable[[FakeSlack, PacedReply, "asyncio.Queue[StreamEvent]"], Awaitable[None]]


def run_writer(scenario: Scenario, *, interval: float = 0.2, limit: int = 3500) -> None:
    async def main() -> None:
        fake = FakeSlack()
        await fake.start()
        client = make_client("xoxb-test", fake.api_url)
        try:
            surface = SlackSurface(client, "C1", "100.1", interval=interval, limit=limit)
            writer = PacedReply(surface)
            events: asyncio.Queue[StreamEvent] = asyncio.Queue()
            await asyncio.wait_for(scenario(fake, writer, events), 20)
        finally:
            await fake.close()

    asyncio.run(main())


async def drain(events: asyncio.Queue[StreamEvent]) -> AsyncIterator[StreamEvent]:
    while True:
        event = await events.get()
        yield event
        if event.final:
            return


def ev(seq: int, kind: str, text: str = "", **fields: object) -> StreamEvent:
    return StreamEvent(job_id="j1", seq=seq, kind=kind, text=text, **fields)  # type: ignore[arg-type]


def test_rate_limited_update_is_waited_out_without_losing_text() -> None:
    answer = "First part. Second part, written while Slack made us wait. The end."

    async def scenario(fake: FakeSlack, writer: PacedReply, events) -> None:
        await writer.start()
        # Three 429s in a row: the client's retry handler absorbs two (Retry-After 1 s,
        # then 0 s), the writer's own loop the third.
        fake.fail_next("chat.update", retry_after=1)
        fake.fail_next("chat.update", retry_after=0)
        fake.fail_next("chat.update", retry_after=0)
        stream = asyncio.create_task(writer.follow(drain(events)))
        events.put_nowait(ev(0, "delta", "First part. "))
        await fake.wait_for(lambda: fake.calls_to("chat.update"))  # the stalled edit
        events.put_nowait(ev(1, "delta", "Second part, written while Slack made us wait."))
        events.put_nowait(ev(2, "done", answer, finish_reason="stop"))
        final = await stream
        assert final.phase == "done"

        updates = fake.calls_to("chat.update")
        assert [c.status for c in updates[:3]] == [429, 429, 429]
        assert updates[1].at - updates[0].at >= 1.0  # Retry-After honoured
        assert updates[-1].status == 200
        assert [m.text for m in fake.bot_messages("C1", "100.1")] == [to_mrkdwn(answer)]

    run_writer(scenario)


def test_updates_are_throttled_per_message() -> None:
    async def scenario(fake: FakeSlack, writer: PacedReply, events) -> None:
        await writer.start()
        stream = asyncio.create_task(writer.follow(drain(events)))
        text = ""
        for i in range(40):  # ~1.2 s of fast tokens
            word = f"word{i} "
            text += word
            events.put_nowait(ev(i, "delta", word))
            await asyncio.sleep(0.03)
        events.put_nowait(ev(40, "done", text.strip()))
        await stream
        updates = fake.calls_to("chat.update")
        gaps = [b.at - a.at for a, b in itertools.pairwise(updates[:-1])]
        # Streamed (several edits) but never faster than the interval, the last edit aside.
        assert 3 <= len(updates) <= 9
        assert all(gap >= 0.19 for gap in gaps), gaps
        assert fake.bot_messages("C1")[0].text == text.strip()

    run_writer(scenario, interval=0.2)


def test_long_answer_continues_in_more_messages() -> None:
    paragraph = "Lorem ipsum **dolor** sit amet, consectetur adipiscing elit. " * 5
    code = "```python\n" + "".join(f"print({i})\n" for i in range(60)) + "```\n"
    answer = "\n\n".join([paragraph, paragraph, code, paragraph])

    async def scenario(fake: FakeSlack, writer: PacedReply, events) -> None:
        await writer.start()
        stream = asyncio.create_task(writer.follow(drain(events)))
        for i in range(0, len(answer), 200):
            events.put_nowait(ev(i, "delta", answer[i : i + 200]))
        events.put_nowait(ev(10_000, "done", answer))
        await stream
        texts = [m.text for m in fake.bot_messages("C1", "100.1")]
        assert len(texts) >= 3
        assert all(len(t) <= 500 for t in texts)
        assert all(t.count("```") % 2 == 0 for t in texts)  # every piece renders on its own
        assert THINKING not in texts
        words = " ".join(texts).replace("```", " ").split()
        assert words == to_mrkdwn(answer).replace("```", " ").split()

    run_writer(scenario, limit=500)


def test_silent_job_ends_with_a_note() -> None:
    async def scenario(fake: FakeSlack, writer: PacedReply, events) -> None:
        async def silent() -> AsyncIterator[StreamEvent]:
            yield ev(0, "delta", "Partial")
            # then the stream times out: no final event

        await writer.start()
        assert (await writer.follow(silent())).phase == "lost"
        (only,) = fake.bot_messages("C1")
        assert only.text.startswith("Partial\n\n:warning: No answer arrived in time")

    run_writer(scenario)
