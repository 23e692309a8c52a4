"""SIGTERM: running turns get a bounded grace to finish; the rest go back to the queue."""

from __future__ import annotations

import signal
import time
import uuid

import pytest
from redis import Redis

from shared.contract import Sampling, StreamEvent, Turn
from shared.settings import Settings
from shared.streams import follow
from shared.turnqueue import enqueue_turn

pytestmark = pytest.mark.model

GRACE = 8


def a_turn(tokens: int) -> Turn:
    return Turn(
        platform="local", channel="c1", thread=uuid.uuid4().hex[:8], user="u1",
        message_id=uuid.uuid4().hex, text="Tell me a story.",
        sampling=Sampling(max_new_tokens=tokens),
    )  # fmt: skip


def first_delta(conn: Redis, job_id: str) -> tuple[list[StreamEvent], object]:
    stream = follow(conn, job_id, timeout=60)
    seen = []
    for event in stream:
        seen.append(event)
        if event.kind == "delta":
            return seen, stream
    raise AssertionError(seen)


def test_sigterm_finishes_short_turns_and_hands_long_ones_back(
    start_worker, redis_conn: Redis, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    leaving = start_worker(ignore_eos="1", slots=2, shutdown_grace=GRACE)
    short = enqueue_turn(redis_conn, settings, a_turn(4))
    endless = enqueue_turn(redis_conn, settings, a_turn(4000))
    short_events, short_stream = first_delta(redis_conn, short.id)
    long_events, long_stream = first_delta(redis_conn, endless.id)

    leaving.send_signal(signal.SIGTERM)
    term_at = time.monotonic()
    # The one who takes over answers within 5 s (its job timeout is 10 s).
    start_worker(wait=False, job_timeout=10, ignore_eos="1")

    short_events.extend(short_stream)  # type: ignore[arg-type]
    kinds = [e.kind for e in short_events]
    assert kinds[-1] == "done" and "error" not in kinds, kinds

    leaving.wait(timeout=GRACE + 30)
    exit_s = time.monotonic() - term_at
    print(f"\nworker exited {exit_s:.1f} s after SIGTERM (grace {GRACE} s)")
    assert leaving.returncode == 0
    assert GRACE <= exit_s < GRACE + 20

    long_events.extend(long_stream)  # type: ignore[arg-type]
    kinds = [e.kind for e in long_events]
    handed = kinds.index("error")
    assert long_events[handed].retrying, long_events[handed]
    assert kinds[handed + 1] == "started" and kinds.count("done") == 1 and kinds[-1] == "done"
    assert long_events[-1].finish_reason == "timeout"
