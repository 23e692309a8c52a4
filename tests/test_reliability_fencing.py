"""Fencing and where-a-turn-waits, without a model: real Redis, real RQ queues.

The worker-level behaviour (a frozen or killed worker) is in
tests/test_reliability_freeze.py; these pin the pieces it is built from.
"""

from __future__ import annotations

import time

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from shared import fencing
from shared.contract import StreamEvent, Turn
from shared.settings import Settings
from shared.streams import follow, publish, stream_key
from shared.turnqueue import enqueue_turn, position, serving_queues
from worker.keeper import requeue_orphans


def turn(channel: str, model: str | None = None, thread: str = "") -> Turn:
    return Turn(
        platform="slack", channel=channel, thread=thread, user="U", message_id=channel,
        text="hi", model=model,
    )  # fmt: skip


def test_position_counts_the_queue_the_turn_waits_in(settings: Settings, redis_conn: Redis) -> None:
    jobs = [enqueue_turn(redis_conn, settings, turn(f"C{i}", "big")) for i in range(3)]
    assert position(redis_conn, settings, jobs[2].id).ahead == 2
    # Held back behind its conversation's running turn: all of that queue is ahead.
    held = enqueue_turn(redis_conn, settings, turn("C0", "big"))
    assert position(redis_conn, settings, held.id).status == "rate_limited"
    assert position(redis_conn, settings, held.id).ahead == 4
    # The default model's turns are counted in the plain queue, not the model's.
    plain = enqueue_turn(redis_conn, settings, turn("D1"))
    assert position(redis_conn, settings, plain.id).ahead == 0


def test_every_worker_consumes_exactly_one_queue(settings: Settings, redis_conn: Redis) -> None:
    for is_default in (True, False):
        assert len(serving_queues(redis_conn, settings, is_default)) == 1


def test_only_the_owning_attempt_publishes(redis_conn: Redis) -> None:
    job_id = "turn-fence"
    assert fencing.claim(redis_conn, job_id, "a1")
    assert not fencing.claim(redis_conn, job_id, "a2")  # owned: a duplicate must not run
    assert publish(redis_conn, StreamEvent(job_id=job_id, seq=1, kind="started", attempt="a1"))
    # a1 is presumed dead (frozen); the keeper frees the turn and a2 takes it over.
    assert not fencing.release(redis_conn, job_id, "a2")
    assert fencing.release(redis_conn, job_id, "a1")
    assert fencing.claim(redis_conn, job_id, "a2")
    assert publish(redis_conn, StreamEvent(job_id=job_id, seq=1, kind="started", attempt="a2"))
    # a1 wakes up: nothing it sends reaches the stream.
    late = StreamEvent(job_id=job_id, seq=2, kind="done", text="stale", attempt="a1")
    assert not publish(redis_conn, late)
    done = StreamEvent(job_id=job_id, seq=2, kind="done", text="fresh", attempt="a2")
    assert publish(redis_conn, done)
    assert redis_conn.xlen(stream_key(job_id)) == 3
    assert [e.text for e in follow(redis_conn, job_id, timeout=2)][-1] == "fresh"


def test_readers_ignore_a_superseded_attempt(redis_conn: Redis) -> None:
    # Even if a stale attempt's events got into the stream, readers skip them.
    job_id = "turn-readers"
    for seq, (kind, attempt, text) in enumerate(
        [
            ("started", "a1", ""),
            ("delta", "a1", "Once "),
            ("started", "a2", ""),
            ("delta", "a2", "Hello"),
            ("delta", "a1", "upon"),
            ("done", "a1", "Once upon"),
            ("done", "a2", "Hello"),
        ],
        start=1,
    ):
        event = StreamEvent(job_id=job_id, seq=seq, kind=kind, attempt=attempt, text=text)  # type: ignore[arg-type]
        redis_conn.xadd(stream_key(job_id), {"e": event.model_dump_json()})
    seen = [(e.kind, e.attempt, e.text) for e in follow(redis_conn, job_id, timeout=2)]
    assert seen[-1] == ("done", "a2", "Hello")
    assert ("delta", "a1", "upon") not in seen and ("done", "a1", "Once upon") not in seen


def test_a_turn_stranded_between_dequeue_and_start_is_requeued(
    settings: Settings, redis_conn: Redis
) -> None:
    (queue,) = serving_queues(redis_conn, settings, is_default=True)
    job = enqueue_turn(redis_conn, settings, turn("C1"))
    # What a worker's BLMOVE does just before the worker dies or freezes.
    assert Queue.lmove(redis_conn, queue.key, None) is not None
    fencing.claim(redis_conn, job.id, "dead-attempt")  # it may even have claimed it
    assert queue.count == 0
    seen: dict[str, float] = {}
    assert requeue_orphans(redis_conn, queue, seen, grace=0.5) == []  # first sighting
    time.sleep(0.6)
    assert requeue_orphans(redis_conn, queue, seen, grace=0.5) == [job.id]
    assert queue.job_ids == [job.id] and redis_conn.llen(queue.intermediate_queue_key) == 0
    assert fencing.owner(redis_conn, job.id) == ""  # free for the next attempt
    assert Job.fetch(job.id, connection=redis_conn).get_status() == "queued"


def test_a_slot_starts_over_its_own_registration_restored_by_redis(
    settings: Settings, redis_conn: Redis
) -> None:
    # After a Redis crash the AOF brings back the slot's registration without a death
    # mark; RQ then refuses to start ("active worker named … already") and the slot's
    # thread died for good, leaving the process with fewer slots (found by bench/soak.py).
    from worker.runner import SlotWorker

    slot = SlotWorker(serving_queues(redis_conn, settings, is_default=True), connection=redis_conn)
    redis_conn.hset(slot.key, "birth", "2026-01-01T00:00:00Z")
    assert slot.work(burst=True) is False  # ran (nothing queued) instead of raising


def test_cancelling_a_turn_just_as_it_starts_despite_a_dead_workers_record(
    settings: Settings, redis_conn: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A killed worker's execution record expires before the job's list of executions
    # forgets it (RQ keeps the entry 60 s longer). If the retried turn starts between
    # cancel_job reading "queued" and RQ's cancel, RQ looks the dead execution up and
    # raises ValueError: the API answered its caller's disconnect with a 500 (found by
    # bench/soak.py). The cancel flag, set first, stops the running attempt anyway.
    from shared.cancel import cancel_job, cancel_key

    job = enqueue_turn(redis_conn, settings, turn("C1"))
    redis_conn.zadd(job.execution_registry.key, {"gone-execution": time.time() + 60})
    seen_queued = Job.get_status

    def racing(self: Job, refresh: bool = True) -> object:
        status = seen_queued(self, refresh)
        redis_conn.hset(job.key, "status", "started")  # a worker takes it just now
        return status

    monkeypatch.setattr(Job, "get_status", racing)
    assert cancel_job(redis_conn, job.id) is False  # not dropped from the queue: it runs
    assert redis_conn.exists(cancel_key(job.id))  # and will stop on the flag
