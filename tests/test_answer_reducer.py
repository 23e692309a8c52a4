"""bots.answer.Reply: the one reducer of a job's StreamEvents, pure and fast."""

from __future__ import annotations

from typing import Any

from bots.answer import Change, Reply, merge_runs
from shared.contract import Author, Message, StreamEvent, Usage


def ev(kind: str, text: str = "", **fields: Any) -> StreamEvent:
    return StreamEvent(job_id="j", seq=0, kind=kind, text=text, **fields)


def fold(*events: StreamEvent) -> tuple[Reply, list[Change]]:
    reply = Reply()
    return reply, [reply.apply(event) for event in events]


def test_text_grows_with_deltas_and_done_carries_the_whole_answer() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=2)
    reply, changes = fold(
        ev("started", model="m1"),
        ev("delta", "Hel"),
        ev("delta", "lo"),
        ev("done", "Hello.", finish_reason="stop", usage=usage),
    )
    assert [c.appended for c in changes] == ["", "Hel", "lo", "."]
    assert not any(c.dropped for c in changes)
    assert (reply.text, reply.phase, reply.finish_reason) == ("Hello.", "done", "stop")
    assert reply.usage == usage and reply.model == "m1" and reply.final
    assert reply.attempts == 1 and not reply.cancelled and not reply.empty


def test_done_makes_up_for_lost_deltas() -> None:
    reply, changes = fold(ev("delta", "one"), ev("done", "one two three"))
    assert changes[-1].appended == " two three"
    assert reply.text == "one two three" and reply.phase == "done"


def test_a_retried_attempt_takes_back_the_partial_text_once() -> None:
    reply, changes = fold(
        ev("started"),
        ev("delta", "Partial"),
        ev("error", error="worker stopped", retrying=True),
        ev("started"),
        ev("delta", "Whole"),
    )
    # Taken back by the new attempt's `started` (it might have resumed), not the error.
    assert [c.dropped for c in changes] == ["", "", "", "Partial", ""]
    assert reply.text == "Whole" and reply.attempts == 2 and reply.phase == "started"
    assert reply.problem == "worker stopped"
    assert not reply.final


def test_a_resumed_attempt_keeps_the_text_already_shown_and_carries_on() -> None:
    reply, changes = fold(
        ev("started"),
        ev("delta", "Once upon"),
        ev("error", error="worker stopped", retrying=True),
        ev("started", resume_from=len("Once upon")),
        ev("delta", " a time"),
        ev("done", "Once upon a time", finish_reason="stop"),
    )
    assert not any(c.dropped for c in changes)
    assert [c.appended for c in changes] == ["", "Once upon", "", "", " a time", ""]
    assert reply.text == "Once upon a time" and reply.phase == "done" and reply.attempts == 2


def test_the_text_stays_while_a_retry_is_awaited() -> None:
    reply, _ = fold(ev("delta", "half an"), ev("error", error="worker stopped", retrying=True))
    assert reply.phase == "retrying" and reply.text == "half an"


def test_a_resume_keeps_only_what_its_attempt_saw() -> None:
    # A reader that got a delta the dead attempt's successor did not count keeps N chars.
    reply, changes = fold(ev("delta", "abcdef"), ev("started", resume_from=4), ev("delta", "XY"))
    assert changes[1].dropped == "ef" and reply.text == "abcdXY"


def test_an_error_names_the_askers_mistake() -> None:
    reply, _ = fold(ev("error", error="too long", code="context_length_exceeded"))
    assert reply.phase == "failed" and reply.code == "context_length_exceeded"


def test_retrying_error_is_not_final_and_says_why() -> None:
    reply, _ = fold(ev("started"), ev("error", error="out of memory", retrying=True))
    assert reply.phase == "retrying" and reply.problem == "out of memory" and not reply.final


def test_text_after_a_retry_whose_started_was_lost_is_an_answer_again() -> None:
    reply, _ = fold(ev("delta", "a"), ev("error", error="x", retrying=True), ev("delta", "b"))
    assert reply.phase == "started" and reply.text == "b"


def test_a_lost_worker_shows_as_a_fresh_start_without_an_error() -> None:
    reply, changes = fold(ev("started"), ev("delta", "half"), ev("started"))
    assert changes[-1].dropped == "half" and reply.text == "" and reply.attempts == 2


def test_final_error_ends_the_turn_keeping_the_text() -> None:
    reply, _ = fold(ev("delta", "partial"), ev("error", error="too long"))
    assert reply.phase == "failed" and reply.final and reply.problem == "too long"
    assert reply.text == "partial"


def test_cancelled_and_empty_answers() -> None:
    cancelled, _ = fold(ev("delta", "so far"), ev("done", "so far", finish_reason="cancelled"))
    assert cancelled.cancelled and not cancelled.empty and cancelled.text == "so far"
    empty, _ = fold(ev("started"), ev("done", "  ", finish_reason="stop"))
    assert empty.empty and not empty.cancelled
    nothing_yet, _ = fold(ev("done", "", finish_reason="cancelled"))
    assert nothing_yet.cancelled and not nothing_yet.empty


def test_place_in_line_only_while_waiting() -> None:
    reply = Reply()
    reply.place("queued", 3)
    assert reply.phase == "waiting" and reply.ahead == 3
    reply.place("rate_limited", 1)
    assert reply.ahead == 1
    reply.place("started", 0)
    assert reply.phase == "started"
    reply.place("queued", 5)  # a late poll changes nothing once it runs
    assert reply.ahead == 1 and reply.phase == "started"


def test_our_own_failures_and_silence_are_final() -> None:
    refused = Reply()
    refused.fail("I'm busy right now.")
    assert refused.final and refused.phase == "failed" and refused.problem.startswith("I'm busy")
    silent, _ = fold(ev("delta", "Partial"))
    silent.lose()
    assert silent.final and silent.phase == "lost" and silent.text == "Partial"


def test_merge_runs_joins_one_role_in_a_row() -> None:
    merged = merge_runs(
        [
            Message(role="user", content="q1"),
            Message(role="assistant", content="a1 part 1"),
            Message(role="assistant", content="a1 part 2"),
            Message(role="user", content="q2"),
        ]
    )
    assert [(m.role, m.content) for m in merged] == [
        ("user", "q1"),
        ("assistant", "a1 part 1\n\na1 part 2"),
        ("user", "q2"),
    ]


def test_merge_runs_joins_one_persons_messages_only() -> None:
    sam, lee = Author(id="1", name="Sam"), Author(id="2", name="Lee")
    merged = merge_runs(
        [
            Message(role="user", content="the deploy failed", author=sam),
            Message(role="user", content="at 10:02", author=Author(id="1")),  # name unknown
            Message(role="user", content="I rolled it back", author=lee),
            Message(role="assistant", content="Noted."),
        ]
    )
    assert [(m.content, m.author) for m in merged] == [
        ("the deploy failed\n\nat 10:02", sam),  # one person: one message, author kept
        ("I rolled it back", lee),  # another person stays apart
        ("Noted.", None),
    ]
