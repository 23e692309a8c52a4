"""Cancellation and deadlines, with a real worker process and the embedded model."""

from __future__ import annotations

import time
import uuid

import pytest
from redis import Redis
from rq.job import Job, JobStatus

from shared.cancel import cancel_job
from shared.contract import Sampling, StreamEvent, Turn
from shared.settings import Settings
from shared.streams import follow, stream_key
from shared.turnqueue import enqueue_turn
from worker.turn import TIMEOUT_NOTE

pytestmark = pytest.mark.model


def long_turn(tokens: int = 2000, platform: str = "local") -> Turn:
    return Turn(
        platform=platform, channel="c1", thread=uuid.uuid4().hex[:8], user="u1",  # type: ignore[arg-type]
        message_id=uuid.uuid4().hex, text="Tell me a long story about a lighthouse.",
        sampling=Sampling(max_new_tokens=tokens),
    )  # fmt: skip


def test_cancel_running_and_queued_turns_and_deadline_note(
    start_worker, redis_conn: Redis, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    # One slot, so a second turn waits in the queue; a 10 s job timeout (deadline 5 s).
    start_worker(ignore_eos="1", slots=1, job_timeout=10)

    running = enqueue_turn(redis_conn, settings, long_turn())
    queued = enqueue_turn(redis_conn, settings, long_turn())
    stream = follow(redis_conn, running.id, timeout=60)
    events: list[StreamEvent] = []
    for event in stream:
        events.append(event)
        if event.kind == "delta":
            break
    assert Job.fetch(queued.id, connection=redis_conn).get_status() == JobStatus.QUEUED

    # A queued turn that is cancelled never runs.
    cancel_job(redis_conn, queued.id)
    # A running one stops within a poll interval plus a decode step.
    cancelled_at = time.monotonic()
    cancel_job(redis_conn, running.id)
    events.extend(stream)
    stop_s = time.monotonic() - cancelled_at
    final = events[-1]
    assert final.kind == "done" and final.finish_reason == "cancelled", final
    assert stop_s < 5, stop_s
    assert final.usage and final.usage.completion_tokens < 2000

    # The slot is free again: a new turn runs past the queued-then-cancelled one, which
    # has no events at all and is recorded as canceled.
    timed = enqueue_turn(redis_conn, settings, long_turn())
    events = list(follow(redis_conn, timed.id, timeout=60))
    assert redis_conn.xlen(stream_key(queued.id)) == 0
    assert Job.fetch(queued.id, connection=redis_conn).get_status() == JobStatus.CANCELED

    # That turn outran its deadline: what was generated, plus a note the user sees.
    final = events[-1]
    assert final.kind == "done" and final.finish_reason == "timeout", final
    assert final.text.endswith(TIMEOUT_NOTE) and len(final.text) > len(TIMEOUT_NOTE)
    streamed = "".join(e.text for e in events if e.kind == "delta")
    assert streamed == final.text


def test_cancelled_before_pickup_is_never_run(
    start_worker, redis_conn: Redis, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    # The flag set while the worker is down: the job is still queued in RQ's eyes
    # (as when a cancel races a pick-up), and the worker refuses to run it.
    job = enqueue_turn(redis_conn, settings, long_turn(tokens=8))
    redis_conn.set(f"corral:cancel:{job.id}", 1)
    start_worker()
    events = list(follow(redis_conn, job.id, timeout=60))
    assert [e.kind for e in events] == ["started", "done"]
    assert events[-1].finish_reason == "cancelled" and events[-1].text == ""
