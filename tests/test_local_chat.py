"""The terminal chat's answer printing: a retried attempt, lost deltas, a cut answer.

Real Redis and RQ; the test plays the worker by publishing the job's events.
"""

from __future__ import annotations

import io
import threading
import time
import uuid

from redis import Redis
from rq import Queue

from bots.local_chat import ask
from shared.contract import StreamEvent, Turn
from shared.settings import Settings
from shared.streams import publish


def test_a_retried_answer_starts_over_and_the_final_text_is_complete(
    settings: Settings, redis_conn: Redis
) -> None:
    turn = Turn(
        platform="local", channel="terminal", thread=uuid.uuid4().hex[:8], user="u1",
        message_id=uuid.uuid4().hex, text="hi",
    )  # fmt: skip
    out = io.StringIO()
    asking = threading.Thread(target=ask, args=(redis_conn, settings, turn, out))
    asking.start()
    queue = Queue(settings.queue_name, connection=redis_conn)
    deadline = time.monotonic() + 10
    while not queue.job_ids:
        assert time.monotonic() < deadline, "nothing was queued"
        time.sleep(0.02)
    job_id = queue.job_ids[0]
    script = [
        ("started", "", {}),
        ("delta", "Partial", {}),
        ("error", "", {"error": "worker stopped", "retrying": True}),
        ("started", "", {}),
        ("delta", "The whole", {}),  # then a delta is lost; `done` makes up for it
        ("done", "The whole answer", {"finish_reason": "length"}),
    ]
    for seq, (kind, text, fields) in enumerate(script):
        publish(redis_conn, StreamEvent(job_id=job_id, seq=seq, kind=kind, text=text, **fields))  # type: ignore[arg-type]
    asking.join(10)
    assert not asking.is_alive()
    assert out.getvalue() == (
        "corral> Partial\n[worker stopped]\n[retrying]\ncorral> The whole answer […]\n"
    )
