"""The versioned job contract shared by bots and workers."""

from __future__ import annotations

import pytest

from shared.contract import (
    CONTRACT_VERSION,
    ContractError,
    StreamEvent,
    Turn,
    conversation_key,
)


def make_turn(**fields: object) -> Turn:
    base: dict[str, object] = {
        "platform": "discord", "workspace": "g1", "channel": "c1", "thread": "t1",
        "user": "u1", "message_id": "m1", "text": "hello",
    }  # fmt: skip
    base.update(fields)
    return Turn.model_validate(base)


def test_payload_round_trip_is_plain_json() -> None:
    turn = make_turn(attachments=[{"name": "a.txt", "size": 3}])
    payload = turn.to_payload()
    assert payload["v"] == CONTRACT_VERSION
    assert Turn.from_payload(payload) == turn


def test_unknown_version_is_rejected_clearly() -> None:
    payload = make_turn().to_payload() | {"v": CONTRACT_VERSION + 1}
    with pytest.raises(ContractError, match=f"version {CONTRACT_VERSION + 1} is not supported"):
        Turn.from_payload(payload)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ("not a dict", "must be an object"),
        ({"v": 1, "platform": "irc", "channel": "c", "user": "u", "message_id": "m", "text": ""},
         "platform"),
        ({"v": 1, "platform": "local", "channel": "c", "user": "u", "message_id": "m"}, "text"),
    ],
)  # fmt: skip
def test_malformed_payloads_name_the_field(payload: object, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        Turn.from_payload(payload)


def test_conversation_is_the_thread_or_the_channel() -> None:
    assert make_turn().conversation_key == "discord:c1:t1"
    assert make_turn(thread="").conversation_key == conversation_key("discord", "c1", "c1")
    assert make_turn(thread="t2").conversation_key != make_turn().conversation_key


def test_final_events() -> None:
    done = StreamEvent(job_id="j", seq=3, kind="done", text="x")
    retry = StreamEvent(job_id="j", seq=3, kind="error", error="oops", retrying=True)
    failed = StreamEvent(job_id="j", seq=3, kind="error", error="oops")
    delta = StreamEvent(job_id="j", seq=2, kind="delta", text="x")
    assert [done.final, retry.final, failed.final, delta.final] == [True, False, True, False]
