"""Stop texts on the streamed text: nothing of a stop text ever goes out, nothing else is lost."""

from __future__ import annotations

import pytest

from worker.engine import Completion
from worker.stop_text import StopText


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], StopText]:
    sent: list[str] = []
    stopper = StopText(stops, sent.append)
    for piece in pieces:
        stopper.feed(piece)
    return sent, stopper


def completion(text: str, reason: str = "cancelled") -> Completion:
    return Completion(text, 3, 4, reason, 0.1, 0.2)


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        (["END"], ["Hello ", "wor", "ld E", "N", "D and more"], "Hello world "),
        (["END"], ["ENDless"], ""),
        (["\n\n", "###"], ["a\n", "b#", "#c\n", "\nd"], "a\nb##c"),
        (["abcd", "bc"], ["xab", "cz"], "xa"),  # the earlier-starting hit wins
        (["stop"], ["sto", "p"], ""),
    ],
)
def test_answer_ends_before_the_first_stop_text(
    stops: list[str], pieces: list[str], expected: str
) -> None:
    sent, stopper = run(stops, pieces)
    assert stopper.stopped
    assert "".join(sent) == expected
    done = stopper.finish(completion("".join(pieces)))
    assert (done.text, done.finish_reason) == (expected, "stop")


def test_text_that_might_begin_a_stop_is_held_back_until_it_cannot() -> None:
    sent, stopper = run(["</answer>"], ["The answer is 4 <", "/ans"])
    assert "".join(sent) == "The answer is 4 "  # "</ans" could still become the stop text
    stopper.feed("wer-ish>")  # it did not: all of it goes out
    assert "".join(sent) == "The answer is 4 </answer-ish>" and not stopper.stopped


def test_held_text_goes_out_when_the_answer_ends_without_a_stop() -> None:
    sent, stopper = run(["STOP"], ["Count: 1 2 ST"])
    assert "".join(sent) == "Count: 1 2 "
    done = stopper.finish(completion("Count: 1 2 ST", "length"))
    assert "".join(sent) == done.text == "Count: 1 2 ST" and done.finish_reason == "length"


def test_no_stops_passes_everything_and_keeps_the_completion() -> None:
    sent, stopper = run([], ["a", "b"])
    assert sent == ["a", "b"]
    original = completion("ab", "stop")
    assert stopper.finish(original) is original


def test_the_engine_is_told_to_end_once_a_stop_is_seen() -> None:
    stopper = StopText(["x"], None)
    polled = stopper.cancelled(lambda: False)
    assert not polled()
    stopper.feed("ax")
    assert polled() and stopper.cancelled(None)()
