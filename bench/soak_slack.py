"""The soak's Slack conversations: the real Bolt app against the fake Slack API (tests/fakes).

Runs in its own thread and event loop inside the soak process: each conversation is
a Slack thread; every question is a signed ``app_mention`` event posted to the bot's
HTTP endpoint, a few seconds apart without waiting for the answer. What users would
see is read back from the fake's record of ``chat.postMessage`` / ``chat.update``:
one bot reply per question is right; more replies than questions in a thread is an
answer shown twice. (The bot runs in-process, so the soak's "kill api" fault does not
reach it.)
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import ROOT
from redis import Redis
from reliability_load import read_events, retrying, stream_ms

from shared.settings import Settings
from shared.turn_index import job_for

sys.path.insert(0, str(ROOT / "tests"))
from fakes.slack_harness import event_body, mention, running_bot

CHANNEL = "C1"


@dataclass
class SlackQuestion:
    conversation: str  # the thread's ts
    ts: str
    sent: float  # wall clock


@dataclass
class SlackSoak:
    settings: Settings
    redis_url: str
    conversations: int
    stop_at: float
    seed: int
    max_turns: int
    asked: list[SlackQuestion] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)  # thread ts -> bot messages
    refused: int = 0
    _done: threading.Event = field(default_factory=threading.Event)
    _drain_until: float = 0.0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        thread.start()
        return thread

    def finish(self, drain_until: float) -> None:
        """Stop asking; keep the bot up until every answer landed or ``drain_until``."""
        self._drain_until = drain_until
        self._done.set()

    async def _run(self) -> None:
        async with running_bot(self.settings, self.redis_url) as bot:
            await asyncio.gather(*(self._converse(bot, i) for i in range(self.conversations)))
            while not self._done.is_set():
                await asyncio.sleep(0.2)
            conn = Redis.from_url(self.redis_url)
            while time.time() < self._drain_until and judge_slack(conn, self)["unsettled"]:
                await asyncio.sleep(1)
            for question in self.asked:
                posted = bot.fake.bot_messages(CHANNEL, question.conversation)
                self.replies[question.conversation] = len(posted)

    async def _converse(self, bot: Any, index: int) -> None:
        rng = random.Random(self.seed * 3000 + index)
        thread_ts = ""
        n = 0
        while time.time() < self.stop_at and len(self.asked) < self.max_turns:
            ts = f"{1700000000 + index * 10000 + n}.{index:03d}{n:03d}"
            thread_ts = thread_ts or ts
            extra = {"thread_ts": thread_ts} if ts != thread_ts else {}
            event = mention(f"question {n}: say hi", channel=CHANNEL, ts=ts, **extra)
            sent = time.time()
            reply = await bot.send_event(event_body(event))
            if reply.status == 200:
                self.asked.append(SlackQuestion(thread_ts, ts, sent))
            else:
                self.refused += 1  # e.g. Redis restarting: Slack would deliver it again
            n += 1
            await asyncio.sleep(rng.uniform(1.0, 6.0))


def judge_slack(conn: Redis, soak: SlackSoak) -> dict[str, Any]:
    return judge_questions(
        conn, soak.asked, lambda q: job_for(conn, "slack", CHANNEL, q.ts), soak.replies
    )


def judge_questions(
    conn: Redis,
    asked: Sequence[Any],
    job_of: Callable[[Any], str | None],
    replies: dict[str, int],
) -> dict[str, Any]:
    """Count a platform's questions (each with ``conversation`` and ``sent``); ``replies``
    maps each conversation to the bot messages it shows (more than its questions: doubled)."""
    answered = failed = lost = unsettled = disorder = never_queued = 0
    delays: list[float] = []
    last_done: dict[str, int] = {}
    for question in asked:
        job_id = retrying(job_of, question)
        if job_id is None:
            lost += 1  # acked by the bot, never enqueued: the bot failed
            never_queued += 1
            continue
        events = retrying(read_events, conn, job_id)
        dones = [entry for entry, e in events if e.kind == "done"]
        if dones:
            answered += 1
            delays.append(stream_ms(dones[0]) / 1000 - question.sent)
            starts = [stream_ms(entry) for entry, e in events if e.kind == "started"]
            if starts and starts[-1] < last_done.get(question.conversation, 0):
                disorder += 1
            last_done[question.conversation] = stream_ms(dones[-1])
        elif any(e.final for _, e in events):
            failed += 1
        else:
            status = retrying(conn.hget, f"rq:job:{job_id}", "status")
            if status in (b"queued", b"started", b"rate_limited", b"scheduled"):
                unsettled += 1
            else:
                lost += 1
    questions: dict[str, int] = {}
    for question in asked:
        questions[question.conversation] = questions.get(question.conversation, 0) + 1
    doubled = sum(max(replies.get(thread, 0) - count, 0) for thread, count in questions.items())
    return {
        "accepted": len(asked), "answered": answered, "failed (message)": failed,
        "cut off": 0, "lost": lost, "unsettled": unsettled, "doubled": doubled,
        "out of order": disorder, "delays": delays, "never queued": never_queued,
    }  # fmt: skip
