"""What a retried attempt resumes from: the text a reader shows, read back from the stream.

The end-to-end case (a worker SIGKILLed mid-answer, the survivor carrying on) is
tests/test_reliability_worker_death.py; these pin the reading and the prompt.
"""

from __future__ import annotations

from typing import Any

from redis import Redis

from shared.contract import StreamEvent
from shared.streams import publish
from worker.engine import Completion
from worker.resume import Resume, shown_text

JOB = "turn-resume"


def send(conn: Redis, seq: int, kind: str, **fields: Any) -> None:
    publish(conn, StreamEvent(job_id=JOB, seq=seq, kind=kind, **fields))  # type: ignore[arg-type]


def test_the_text_shown_so_far_survives_attempts(redis_conn: Redis) -> None:
    assert shown_text(redis_conn, JOB) == ""
    send(redis_conn, 1, "started")
    send(redis_conn, 2, "delta", text="Once ")
    send(redis_conn, 3, "delta", text="upon")
    send(redis_conn, 4, "error", error="worker stopped", retrying=True)
    assert shown_text(redis_conn, JOB) == "Once upon"
    send(redis_conn, 1, "started", resume_from=9)  # the second attempt resumed
    send(redis_conn, 2, "delta", text=" a time")
    send(redis_conn, 3, "error", error="stopped again", retrying=True)
    assert shown_text(redis_conn, JOB) == "Once upon a time"
    send(redis_conn, 1, "started")  # a third that could not resume starts afresh
    send(redis_conn, 2, "delta", text="Hello")
    assert shown_text(redis_conn, JOB) == "Hello"
    send(redis_conn, 3, "done", text="Hello")
    assert shown_text(redis_conn, JOB) == ""  # over: nothing to resume


def test_the_model_continues_after_the_shown_text(smol: Any) -> None:
    resume = Resume("Once upon", smol)
    prefix = smol("Once upon", add_special_tokens=False)["input_ids"]
    assert resume.offset == 9
    assert resume.input_ids([1, 2, 3], note="") == [1, 2, 3, *prefix]
    assert resume.max_new_tokens(10, note="") == 10 - len(prefix)
    rest = Completion(" a time", 3, 2, "stop", 0.1, 0.2)
    assert resume.completed(rest, note="").text == "Once upon a time"
    # A note the worker put above the answer was shown but never written by the model.
    noted = Resume("_(note)_\n\nOnce upon", smol)
    assert noted.input_ids([1], note="_(note)_\n\n") == [1, *prefix]
    assert Resume().completed(rest, note="").text == " a time"  # nothing to resume


def test_turns_whose_decoding_depends_on_the_whole_answer_start_afresh(
    redis_conn: Redis, smol: Any
) -> None:
    # A schema's grammar, a caller's tools, stop texts, a seed and a raw prompt all
    # begin at the answer's start: continuing mid-way would break them.
    from types import SimpleNamespace

    from shared.contract import ResponseFormat, Sampling, Turn

    send(redis_conn, 1, "started")
    send(redis_conn, 2, "delta", text='{"a": ')
    send(redis_conn, 3, "error", error="worker stopped", retrying=True)
    engine = SimpleNamespace(tokenizer=smol, vision=False, settings=SimpleNamespace(tools=""))
    base = {"platform": "api", "channel": "c", "user": "u", "message_id": "m", "text": "hi"}
    plain = Turn(**base)
    assert Resume.read(redis_conn, JOB, engine, plain).text == '{"a": '
    for changed in (
        Turn(**base, sampling=Sampling(response_format=ResponseFormat(type="json_object"))),
        Turn(**base, sampling=Sampling(stop=["\n"])),
        Turn(**base, sampling=Sampling(seed=7)),
        Turn(**base, raw_prompt=True),
    ):
        assert Resume.read(redis_conn, JOB, engine, changed).text == ""
