"""A worker frozen (SIGSTOP) or killed between dequeue and start: no turn lost, none doubled.

Real worker processes (the embedded model), a real Redis; signals go to each
worker's process group, as a hung host or an OOM kill would hit it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from conftest import listening_clients, wait_listening
from redis import Redis
from rq import Queue
from rq.job import Job
from test_reliability_worker_death import running_pid

from shared.contract import Sampling, StreamEvent, Turn
from shared.history import ConversationStore
from shared.settings import Settings
from shared.streams import stream_key
from shared.turnqueue import enqueue_turn

pytestmark = pytest.mark.model

ANSWER_LIMIT_S = 30.0


def turn(tokens: int) -> Turn:
    return Turn(
        platform="local", channel="c1", thread=uuid.uuid4().hex[:8], user=uuid.uuid4().hex[:6],
        message_id=uuid.uuid4().hex, text="Tell me about lighthouses.",
        sampling=Sampling(max_new_tokens=tokens),
    )  # fmt: skip


def events(conn: Redis, job_id: str) -> list[StreamEvent]:
    return [
        StreamEvent.model_validate_json(fields[b"e"])
        for _, fields in conn.xrange(stream_key(job_id))
    ]


def wait_done(conn: Redis, job_ids: list[str], sent: dict[str, float], limit: float) -> dict:
    """Seconds from sending to the ``done`` event, per job; fails past ``limit``."""
    answered: dict[str, float] = {}
    deadline = max(sent.values()) + limit
    while len(answered) < len(job_ids):
        for job_id in job_ids:
            if job_id not in answered and any(e.kind == "done" for e in events(conn, job_id)):
                answered[job_id] = time.monotonic() - sent[job_id]
        if time.monotonic() > deadline:
            missing = {j: Job.fetch(j, connection=conn).get_status() for j in job_ids}
            pytest.fail(f"unanswered after {limit} s: {set(job_ids) - set(answered)} {missing}")
        time.sleep(0.1)
    return answered


def test_a_frozen_worker_swallows_no_turns_and_answers_none_twice(
    start_worker, redis_conn: Redis, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    workers = [start_worker(ignore_eos="1", slots=2), start_worker(ignore_eos="1", slots=2)]
    wait_listening(redis_conn, 4)
    # A turn running on the worker that freezes (its registry entry must expire)...
    long = enqueue_turn(redis_conn, settings, turn(40))
    victim = running_pid(redis_conn, long.id)
    assert victim in {w.pid for w in workers}
    os.killpg(victim, signal.SIGSTOP)
    frozen_at = time.monotonic()
    sent = {long.id: frozen_at}
    # ...and turns sent after the freeze (its idle slot is blocked in a dequeue).
    for _ in range(6):
        job = enqueue_turn(redis_conn, settings, turn(12))
        sent[job.id] = time.monotonic()
        time.sleep(0.3)
    answered = wait_done(redis_conn, list(sent), sent, ANSWER_LIMIT_S)
    print(f"\nanswers after the freeze: worst {max(answered.values()):.1f} s: {answered}")

    # The frozen worker wakes up with its stale attempts: no second answer anywhere.
    os.killpg(victim, signal.SIGCONT)
    time.sleep(8)
    for job_id in sent:
        kinds = [e.kind for e in events(redis_conn, job_id)]
        assert kinds.count("done") == 1 and kinds[-1] == "done", (job_id, kinds)
        assert Job.fetch(job_id, connection=redis_conn).get_status() == "finished"
    time.sleep(4)  # and nothing arrives later either
    for job_id in sent:
        assert [e.kind for e in events(redis_conn, job_id)].count("done") == 1
    # Nor a second copy in a conversation's history (a stale attempt saves nothing).
    store = ConversationStore(redis_conn, settings.history_ttl)
    for job_id in sent:
        asked = Turn.from_payload(Job.fetch(job_id, connection=redis_conn).args[0])
        history = store.load(asked.conversation_key) or []
        assert [m.role for m in history] == ["user", "assistant"], (job_id, history)
    assert all(w.poll() is None for w in workers)  # the woken worker carries on serving


def test_a_turn_taken_by_a_worker_killed_before_starting_it_is_answered(
    start_worker, redis_conn: Redis, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    first = start_worker(slots=1)
    wait_listening(redis_conn, 1)
    os.killpg(first.pid, signal.SIGSTOP)  # holds it between dequeue and start
    # Redis still counts the frozen slot's BLMOVE as waiting: it will hand it the turn.
    assert len(listening_clients(redis_conn)) == 1
    job = enqueue_turn(redis_conn, settings, turn(8))
    queue = Queue(job.origin, connection=redis_conn)
    deadline = time.monotonic() + 10
    while queue.count:  # Redis hands the job to the frozen worker's pending dequeue
        assert time.monotonic() < deadline, "the frozen worker never took the turn"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    start_worker(slots=1)
    started = time.monotonic()
    wait_done(redis_conn, [job.id], {job.id: started}, ANSWER_LIMIT_S)
    assert [e.kind for e in events(redis_conn, job.id)].count("done") == 1
