"""End to end with the real worker process and the embedded model: enqueue → stream → history."""

from __future__ import annotations

import threading
import time
import uuid
from itertools import pairwise

import pytest
from redis import Redis
from rq.job import Job, JobStatus

from shared.contract import CONTRACT_VERSION, Message, StreamEvent, Turn
from shared.history import ConversationStore
from shared.settings import Settings
from shared.streams import follow
from shared.turnqueue import enqueue_turn, turn_queue

pytestmark = pytest.mark.model


def turn(text: str, thread: str = "t1", **fields: object) -> Turn:
    return Turn(
        platform="local", channel="c1", thread=thread, user="u1",
        message_id=uuid.uuid4().hex, text=text, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def collect(conn: Redis, job_id: str) -> list[StreamEvent]:
    return list(follow(conn, job_id, timeout=300))


def settled(conn: Redis, job_id: str, timeout: float = 30) -> Job:
    """The job once RQ has recorded its outcome (a moment after its final event)."""
    deadline = time.monotonic() + timeout
    job = Job.fetch(job_id, connection=conn)
    while job.get_status() not in (JobStatus.FINISHED, JobStatus.FAILED):
        assert time.monotonic() < deadline, f"job {job_id} still {job.get_status()}"
        time.sleep(0.05)
    return job


def test_turn_streams_and_lands_in_history(
    worker_proc: object, redis_conn: Redis, settings: Settings
) -> None:
    first = enqueue_turn(redis_conn, settings, turn("What is the capital of France?"))
    events = collect(redis_conn, first.id)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done" and "delta" in kinds, kinds
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    done = events[-1]
    streamed = "".join(e.text for e in events if e.kind == "delta")
    assert streamed == done.text and done.text.strip()
    for marker in ("<|im_end|>", "<|im_start|>", "<|endoftext|>"):
        assert marker not in done.text
    assert done.finish_reason in ("stop", "length")
    assert done.usage and done.usage.completion_tokens > 0 and done.usage.prompt_tokens > 10
    if done.finish_reason == "length":
        assert done.usage.completion_tokens == settings.max_new_tokens
    job = settled(redis_conn, first.id)
    assert job.get_status() == JobStatus.FINISHED and job.return_value()["text"] == done.text

    store = ConversationStore(redis_conn, settings.history_ttl)
    key = turn("").conversation_key
    assert store.load(key) == [
        Message(role="user", content="What is the capital of France?"),
        Message(role="assistant", content=done.text),
    ]
    # A follow-up in the same thread sees the first exchange.
    second = enqueue_turn(redis_conn, settings, turn("And of Italy?"))
    assert collect(redis_conn, second.id)[-1].kind == "done"
    history = store.load(key)
    assert [m.content for m in history[::2]] == ["What is the capital of France?", "And of Italy?"]
    assert history[-1].role == "assistant"


def test_refusals_are_answered_not_retried(
    worker_proc: object, redis_conn: Redis, settings: Settings
) -> None:
    queue = turn_queue(redis_conn, settings)
    bad = queue.enqueue(
        "worker.turn.run_turn", turn("x").to_payload() | {"v": CONTRACT_VERSION + 7}
    )
    events = collect(redis_conn, bad.id)
    assert events[-1].kind == "error" and "not supported" in events[-1].error
    assert not events[-1].retrying

    long = enqueue_turn(redis_conn, settings, turn("word " * 6000, thread="long"))
    events = collect(redis_conn, long.id)
    assert events[-1].kind == "error" and "too long" in events[-1].error
    assert events[-1].code == "context_length_exceeded"  # the API answers 400 with it
    assert settled(redis_conn, long.id).get_status() == JobStatus.FINISHED

    # Stateless (API-style) turns leave the store alone.
    stateless = turn("hi", thread="api", messages=[Message(role="user", content="Say hi")])
    events = collect(redis_conn, enqueue_turn(redis_conn, settings, stateless).id)
    assert events[-1].kind == "done"
    assert ConversationStore(redis_conn, 60).load(stateless.conversation_key) == []


def test_conversations_run_concurrently_each_strictly_in_order(
    worker_proc: object, redis_conn: Redis, settings: Settings
) -> None:
    threads = ["a", "b", "c"]
    jobs: dict[str, list[str]] = {t: [] for t in threads}
    for i in range(3):  # interleaved, as a busy server would receive them
        for t in threads:
            job = enqueue_turn(redis_conn, settings, turn(f"{t} question {i}: count to three", t))
            jobs[t].append(job.id)
    finals: dict[str, StreamEvent] = {}

    def wait(job_id: str) -> None:
        finals[job_id] = collect(redis_conn, job_id)[-1]

    waiters = [threading.Thread(target=wait, args=(j,)) for ids in jobs.values() for j in ids]
    for w in waiters:
        w.start()
    for w in waiters:
        w.join(timeout=300)
    assert all(finals[j].kind == "done" for ids in jobs.values() for j in ids)

    store = ConversationStore(redis_conn, 60)
    spans = {}
    for t, ids in jobs.items():
        history = store.load(turn("", t).conversation_key)
        asked = [m.content for m in history if m.role == "user"]
        assert asked == [f"{t} question {i}: count to three" for i in range(3)]
        fetched = [settled(redis_conn, j) for j in ids]
        for earlier, later in pairwise(fetched):
            assert earlier.ended_at <= later.started_at  # strictly one after another
        spans[t] = [(j.started_at, j.ended_at) for j in fetched]
    # Different conversations overlapped in time (they ran side by side).
    a_start, a_end = spans["a"][0]
    assert any(s < a_end and e > a_start for s, e in spans["b"] + spans["c"])
