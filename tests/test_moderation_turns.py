"""Moderation in turns: the real queue, RQ worker and job function; scripted sampling."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from fakes.scripted_engine import ScriptedEngine
from redis import Redis
from rq import SimpleWorker

from shared.contract import StreamEvent, Turn
from shared.history import ConversationStore
from shared.settings import Settings
from shared.streams import follow
from shared.turnqueue import enqueue_turn, turn_queue
from worker.moderation import BLOCKED_REPLY
from worker.turn import install_engine


def answer(
    smol: Any, redis_conn: Redis, settings: Settings, text: str, reply: str, channel: str = "C1"
) -> tuple[StreamEvent, ScriptedEngine, Turn]:
    engine = ScriptedEngine(smol, [(reply, False)], stop="<|im_end|>").serve(settings)
    turn = Turn(platform="slack", channel=channel, user="U1", message_id="1.0", text=text)
    install_engine(engine)  # type: ignore[arg-type]
    try:
        job = enqueue_turn(redis_conn, settings, turn)
        SimpleWorker([turn_queue(redis_conn, settings)], connection=redis_conn).work(burst=True)
    finally:
        install_engine(None)
    return list(follow(redis_conn, job.id, timeout=10))[-1], engine, turn


def test_a_blocked_question_never_reaches_the_model(
    smol: Any, redis_conn: Redis, moderated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.turn"):
        done, engine, turn = answer(smol, redis_conn, moderated, "my SSN is 123-45-6789", "x")
    assert done.kind == "done" and done.text == BLOCKED_REPLY
    assert engine.calls == []  # the model never saw it
    assert "S7" not in done.text and "rule" not in done.text  # the reply does not explain
    assert any("blocked the question" in r.message and "S7" in r.message for r in caplog.records)
    assert ConversationStore(redis_conn, 60).load(turn.conversation_key) == []


def test_a_blocked_answer_is_replaced_and_not_kept(
    smol: Any, redis_conn: Redis, moderated: Settings
) -> None:
    done, engine, turn = answer(smol, redis_conn, moderated, "make up an SSN", "Try 078-05-1120.")
    assert len(engine.calls) == 1 and done.text == BLOCKED_REPLY
    stored = ConversationStore(redis_conn, 60).load(turn.conversation_key)
    assert [m.content for m in stored] == ["make up an SSN", BLOCKED_REPLY]


def test_channel_policy_decides_and_clean_text_passes(
    smol: Any, redis_conn: Redis, moderated: Settings
) -> None:
    done, _, _ = answer(smol, redis_conn, moderated, "my SSN is 123-45-6789", "Noted.", "C-open")
    assert done.text == "Noted."  # this channel blocks nothing
    done, _, _ = answer(smol, redis_conn, moderated, "capital of France?", "Paris.")
    assert done.text == "Paris."


def test_without_rules_nothing_is_checked(smol: Any, redis_conn: Redis, settings: Settings) -> None:
    done, _, _ = answer(smol, redis_conn, settings, "my SSN is 123-45-6789", "Noted.")
    assert done.text == "Noted."


def test_a_broken_edit_keeps_the_last_good_rules(
    smol: Any, redis_conn: Redis, moderated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    rules = moderated.moderation_rules
    assert rules is not None
    answer(smol, redis_conn, moderated, "hello", "hi")  # loads the good rules
    rules.write_text("rules: [{category: S99, pattern: x}]\n")
    later = rules.stat().st_mtime + 10
    os.utime(rules, (later, later))  # a visibly newer file, whatever the clock resolution
    with caplog.at_level(logging.ERROR, logger="worker.moderation"):
        done, _, _ = answer(smol, redis_conn, moderated, "my SSN is 123-45-6789", "x")
    assert done.text == BLOCKED_REPLY
    assert any("rejected, keeping the previous ones" in r.message for r in caplog.records)
