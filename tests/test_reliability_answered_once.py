"""A worker killed after it sent a turn's final event, before RQ recorded the job's end.

Found by the 1,000-turn soak: the worker was SIGKILLed 0.1 s after publishing
``done``; 12 s later the keeper saw the job abandoned, told readers "another
worker is taking over" and RQ re-queued it, so a second attempt answered the
turn again (a second ``done``) and saved the exchange into the history twice.
The turn was over when its final event was sent: a later attempt must see that
and end without running (the real job path: queue, RQ worker, run_turn, with
a scripted sampler).
"""

from __future__ import annotations

from typing import Any

from fakes.scripted_engine import ScriptedEngine
from redis import Redis
from rq import SimpleWorker
from rq.exceptions import AbandonedJobError
from rq.job import Job

from shared import fencing
from shared.contract import Message, StreamEvent, Turn
from shared.history import ConversationStore
from shared.settings import Settings
from shared.streams import publish, stream_key
from shared.turnqueue import enqueue_turn, turn_queue
from worker.keeper import on_abandoned
from worker.turn import install_engine

ANSWER = "Lighthouses guide ships."


def events(conn: Redis, job_id: str) -> list[StreamEvent]:
    return [StreamEvent.model_validate_json(f[b"e"]) for _, f in conn.xrange(stream_key(job_id))]


def answered_by_a_dead_attempt(conn: Redis, settings: Settings) -> tuple[Turn, Job]:
    """A queued turn whose stream and history hold a first attempt's whole answer."""
    turn = Turn(platform="local", channel="c", user="u", message_id="m1", text="Lighthouses?")
    job = enqueue_turn(conn, settings, turn)
    assert fencing.claim(conn, job.id, "a1")
    for seq, (kind, text) in enumerate([("started", ""), ("delta", ANSWER), ("done", ANSWER)]):
        event = StreamEvent(job_id=job.id, seq=seq, kind=kind, text=text, attempt="a1")  # type: ignore[arg-type]
        assert publish(conn, event)
    assert fencing.release(conn, job.id, "a1")  # the keeper declared that attempt dead
    exchange = [Message(role="user", content=turn.text), Message(role="assistant", content=ANSWER)]
    ConversationStore(conn, 600).save(turn.conversation_key, exchange)
    return turn, job


def test_a_turn_whose_final_event_was_sent_is_not_answered_again(
    settings: Settings, redis_conn: Redis, smol: Any
) -> None:
    turn, job = answered_by_a_dead_attempt(redis_conn, settings)
    engine = ScriptedEngine(smol, [("A second answer.", False)], stop="<|im_end|>")
    install_engine(engine.serve(settings))  # type: ignore[arg-type]
    try:
        SimpleWorker([turn_queue(redis_conn, settings)], connection=redis_conn).work(burst=True)
    finally:
        install_engine(None)
    assert engine.calls == []  # the model was not run again
    assert [e.kind for e in events(redis_conn, job.id)] == ["started", "delta", "done"]
    assert job.get_status(refresh=True) == "finished"
    history = ConversationStore(redis_conn, 600).load(turn.conversation_key) or []
    assert [m.content for m in history] == [turn.text, ANSWER]  # the exchange once


def test_the_keeper_says_nothing_after_a_final_event(settings: Settings, redis_conn: Redis) -> None:
    _, job = answered_by_a_dead_attempt(redis_conn, settings)
    job.retries_left = 2
    on_abandoned(job, AbandonedJobError, AbandonedJobError("gone"), None)
    assert [e.kind for e in events(redis_conn, job.id)] == ["started", "delta", "done"]
    # An unfinished turn's readers still hear that another worker takes over.
    _, unfinished = answered_by_a_dead_attempt(redis_conn, settings)
    redis_conn.delete(stream_key(unfinished.id))
    publish(redis_conn, StreamEvent(job_id=unfinished.id, seq=0, kind="started"))
    unfinished.retries_left = 2
    on_abandoned(unfinished, AbandonedJobError, AbandonedJobError("gone"), None)
    kinds = [(e.kind, e.retrying) for e in events(redis_conn, unfinished.id)]
    assert kinds == [("started", False), ("error", True)]
