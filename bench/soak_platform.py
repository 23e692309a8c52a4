"""What the soak's platform conversations share (bench/soak_slack.py, soak_discord.py):
the questions asked, running a bot in its own thread and event loop, waiting for the
answers, and judging what users saw."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from reliability_load import read_events, retrying, stream_ms

from shared.settings import Settings


@dataclass
class Question:
    conversation: str  # the thread (Slack: its ts; Discord: its id)
    message_id: str  # the question's own message (Slack: its ts)
    sent: float  # wall clock


@dataclass
class PlatformSoak:
    """One platform's conversations; a subclass runs its bot in :meth:`_run`."""

    settings: Settings
    redis_url: str
    conversations: int
    stop_at: float
    seed: int
    max_turns: int
    pause: tuple[float, float]  # seconds between a conversation's questions
    asked: list[Question] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)  # conversation -> bot messages
    # question's message id -> its job, noted while the bots' message index still has it
    # (it expires with the turn: CORRAL_JOB_TTL + CORRAL_JOB_TIMEOUT, shorter than a long run)
    jobs: dict[str, str] = field(default_factory=dict)
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
        raise NotImplementedError

    def find_job(self, conn: Redis, question: Any) -> str | None:
        """The job the bot queued for ``question``, from the bots' message index."""
        raise NotImplementedError

    def job_of(self, conn: Redis, question: Any) -> str | None:
        found = self.jobs.get(question.message_id) or self.find_job(conn, question)
        if found:
            self.jobs[question.message_id] = found
        return found

    def judge(self, conn: Redis) -> dict[str, Any]:
        return judge_questions(conn, self.asked, lambda q: self.job_of(conn, q), self.replies)

    async def _converse_all(self, conversations: Sequence[Awaitable[None]]) -> None:
        """Run the conversations, then wait for their answers; all the while, note each
        question's job while the message index still has it."""
        noting = asyncio.create_task(self._note_jobs())
        try:
            await asyncio.gather(*conversations)
            await self._until_answered()
        finally:
            noting.cancel()

    async def _note_jobs(self) -> None:
        conn = Redis.from_url(self.redis_url)

        def note(pending: list[Any]) -> None:
            for question in pending:
                self.job_of(conn, question)

        while True:
            pending = [q for q in self.asked if q.message_id not in self.jobs]
            with contextlib.suppress(RedisError):  # Redis restarting: next round
                await asyncio.to_thread(note, pending)
            await asyncio.sleep(1.0)

    async def _until_answered(self) -> None:
        """Until the soak stops asking, then until nothing is unsettled (or time is up)."""
        while not self._done.is_set():
            await asyncio.sleep(0.2)
        conn = Redis.from_url(self.redis_url)
        while time.time() < self._drain_until and self.judge(conn)["unsettled"]:
            await asyncio.sleep(1)


@dataclass
class Tally:
    """What became of accepted turns, read back from their event streams."""

    answered: int = 0
    failed: int = 0
    lost: int = 0
    unsettled: int = 0
    disorder: int = 0
    twice_done: int = 0  # streams with two `done` events
    delays: list[float] = field(default_factory=list)
    last_done: dict[str, int] = field(default_factory=dict)  # conversation -> stream ms

    def count(self, conn: Redis, job_id: str, conversation: str, sent: float) -> None:
        events = retrying(read_events, conn, job_id)
        dones = [entry for entry, e in events if e.kind == "done"]
        self.twice_done += len(dones) > 1
        if dones:
            self.answered += 1
            self.delays.append(stream_ms(dones[0]) / 1000 - sent)
            starts = [stream_ms(entry) for entry, e in events if e.kind == "started"]
            if starts and starts[-1] < self.last_done.get(conversation, 0):
                self.disorder += 1
            self.last_done[conversation] = stream_ms(dones[-1])
        elif any(e.final for _, e in events):
            self.failed += 1
        elif retrying(conn.hget, f"rq:job:{job_id}", "status") in (
            b"queued", b"started", b"rate_limited", b"scheduled"
        ):  # fmt: skip
            self.unsettled += 1
        else:
            self.lost += 1


def judge_questions(
    conn: Redis,
    asked: Sequence[Any],
    job_of: Callable[[Any], str | None],
    replies: dict[str, int],
) -> dict[str, Any]:
    """Count a platform's questions (each with ``conversation`` and ``sent``); ``replies``
    maps each conversation to the bot messages it shows (more than its questions: doubled)."""
    tally = Tally()
    never_queued = 0
    for question in asked:
        job_id = retrying(job_of, question)
        if job_id is None:
            never_queued += 1  # acked by the bot, never enqueued: the bot failed
            continue
        tally.count(conn, job_id, question.conversation, question.sent)
    questions: dict[str, int] = {}
    for question in asked:
        questions[question.conversation] = questions.get(question.conversation, 0) + 1
    doubled = sum(max(replies.get(thread, 0) - count, 0) for thread, count in questions.items())
    return {
        "accepted": len(asked), "answered": tally.answered, "failed (message)": tally.failed,
        "cut off": 0, "lost": tally.lost + never_queued, "unsettled": tally.unsettled,
        "doubled": doubled, "out of order": tally.disorder, "delays": tally.delays,
        "never queued": never_queued,
    }  # fmt: skip
