"""The job's stages (worker/turn.py) called directly: no RQ, real Redis and tokenizers,
a scripted model (fakes/scripted_engine.py) standing in for sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes.scripted_engine import ScriptedEngine
from redis import Redis

from shared.contract import IMAGE_ONLY_TEXT, Attachment, ContractError, Message, StreamEvent, Turn
from shared.history import ContextOverflow, ConversationStore
from shared.images import image_id, image_key
from shared.settings import Settings
from shared.streams import stream_key
from worker.engine import Completion
from worker.moderation import BLOCKED_REPLY
from worker.prompt import build_prompt
from worker.turn import (
    TIMEOUT_NOTE,
    Answered,
    Prepared,
    Reply,
    TurnJob,
    finish,
    generate,
    prepare,
    run_turn,
    screen,
)

CALL = '<function=calculator>{"expression": "(3+4)*2"}</function>'
TRACE = '🔧 calculator(expression="(3+4)*2") → {"expression": "(3+4)*2", "result": 14}'


def chat(text: str, *attachments: Attachment, **fields: Any) -> Turn:
    return Turn(
        platform="local", channel="c", thread="t", user="u", message_id="m", text=text,
        attachments=list(attachments), **fields,
    )  # fmt: skip


def job(conn: Redis, engine: ScriptedEngine, job_id: str = "job-1") -> TurnJob:
    return TurnJob(job_id, conn, engine, picked_up=1000.0)  # type: ignore[arg-type]


def published(conn: Redis, job_id: str = "job-1") -> list[StreamEvent]:
    return [StreamEvent.model_validate_json(f[b"e"]) for _, f in conn.xrange(stream_key(job_id))]


def ready(
    conn: Redis, engine: ScriptedEngine, turn: Turn, job_id: str = "job-1"
) -> tuple[TurnJob, Prepared]:
    run = job(conn, engine, job_id)
    prepared = prepare(run, turn)
    assert isinstance(prepared, Prepared)
    return run, prepared


def never() -> bool:
    return False


# prepare


def test_prepare_trims_stored_history_and_keeps_the_prompt_it_measured(
    smol: Any, redis_conn: Redis, settings: Settings
) -> None:
    settings = settings.model_copy(update={"context_tokens": 256})  # 208 after the answer's 48
    engine = ScriptedEngine(smol, [], stop="<|im_end|>").serve(settings)
    history = [
        Message(role=role, content=f"{role} message {i}: " + "words " * 20)  # type: ignore[arg-type]
        for i in range(3)
        for role in ("user", "assistant")
    ]
    ConversationStore(redis_conn, 60).save(chat("").conversation_key, history)

    _, prepared = ready(redis_conn, engine, chat("and now?"))
    messages = prepared.trimmed.messages
    assert prepared.history == history  # untrimmed: what the tools may search
    dropped = prepared.trimmed.dropped
    assert dropped in (2, 4) and messages[1:-1] == history[dropped:]  # whole exchanges
    assert messages[0] == Message(role="system", content=settings.system_prompt)
    assert messages[-1] == prepared.newest == Message(role="user", content="and now?")
    assert prepared.prompt is not None
    assert prepared.prompt.input_ids == build_prompt(smol, messages).input_ids
    assert len(prepared.prompt.input_ids) <= 256 - 48
    one_more = [messages[0], *history[dropped - 2 :], messages[-1]]
    assert len(build_prompt(smol, one_more).input_ids) > 256 - 48  # it kept all that fits
    assert prepared.tools == {} and prepared.note == "" and prepared.max_new_tokens == 48
    assert published(redis_conn) == []  # preparing says nothing; run_turn sends "started"


def test_prepare_refuses_what_no_retry_can_answer(
    smol: Any, redis_conn: Redis, settings: Settings
) -> None:
    engine = ScriptedEngine(smol, [], stop="<|im_end|>").serve(settings)
    run = job(redis_conn, engine)
    with pytest.raises(ContextOverflow):
        prepare(run, chat("word " * 5000))
    ends_with_assistant = [
        Message(role="user", content="hi"),
        Message(role="assistant", content="x"),
    ]
    with pytest.raises(ContractError, match="last message must be from the user"):
        prepare(run, chat("", messages=ends_with_assistant))
    photo = Message(role="user", content="what is it?", images=["abc"])
    with pytest.raises(ContractError, match="cannot see images"):
        prepare(run, Turn(platform="api", channel="api", user="u", message_id="m", text="",
                          messages=[photo]))  # fmt: skip


def test_prepare_tells_a_chat_that_a_text_only_model_cannot_see(
    smol: Any, redis_conn: Redis, settings: Settings
) -> None:
    engine = ScriptedEngine(smol, [], stop="<|im_end|>").serve(settings)
    photo = Attachment(name="dog.png", content_type="image/png", image_id="abc")
    alone = prepare(job(redis_conn, engine), chat(IMAGE_ONLY_TEXT, photo))
    assert isinstance(alone, Reply) and alone.finish_reason == "stop"
    assert "can't see images" in alone.text and "dog.png" in alone.text

    _, asked = ready(redis_conn, engine, chat("what animal barks?", photo))
    assert asked.note.startswith("_(This model (scripted) can't see images")
    assert asked.images == []


def test_prepare_declares_tools_in_the_system_prompt(
    smol: Any, redis_conn: Redis, settings: Settings
) -> None:
    settings = settings.model_copy(update={"tools": "calculator"})
    engine = ScriptedEngine(smol, [], stop="<|im_end|>").serve(settings)
    _, prepared = ready(redis_conn, engine, chat("what is 2+2?"))
    assert list(prepared.tools) == ["calculator"]
    system = prepared.trimmed.messages[0].content
    assert "calculator" in system and settings.system_prompt in system


def test_prepare_shows_a_vision_model_the_latest_stored_image_and_no_tools(
    tiny_mllama_dir: Path, redis_conn: Redis, settings: Settings
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_mllama_dir)
    settings = settings.model_copy(update={"tools": "calculator"})
    engine = ScriptedEngine(tokenizer, [], stop="<|im_end|>").serve(settings, vision=True)
    old, new = b"old picture bytes", b"new picture bytes"
    for data in (old, new):
        redis_conn.set(image_key(image_id(data)), data, ex=60)
    key = chat("").conversation_key
    earlier = Message(role="user", content="this?", images=[image_id(old)])
    ConversationStore(redis_conn, 60).save(key, [earlier, Message(role="assistant", content="A.")])
    shown = Attachment(name="b.png", content_type="image/png", image_id=image_id(new))

    _, prepared = ready(redis_conn, engine, chat("and this?", shown))
    assert prepared.images == [new]  # vision_max_images=1: the most recent only
    assert prepared.history[0].images == [] and prepared.newest.images == [image_id(new)]
    assert prepared.tools == {}  # Llama 3.2 Vision does not call tools beside an image
    assert prepared.prompt is not None
    assert prepared.prompt.input_ids.count(tokenizer.convert_tokens_to_ids("<|image|>")) == 1


# screen


def test_screen_stops_a_cancelled_or_blocked_question(
    smol: Any, redis_conn: Redis, moderated: Settings
) -> None:
    engine = ScriptedEngine(smol, [], stop="<|im_end|>").serve(moderated)
    run, clean = ready(redis_conn, engine, chat("capital of France?"))
    assert screen(run, clean, never) is None
    assert screen(run, clean, lambda: True) == Reply("", "cancelled")
    _, leaky = ready(redis_conn, engine, chat("my SSN is 123-45-6789"))
    blocked = screen(run, leaky, never)
    assert blocked == Reply(BLOCKED_REPLY, "stop", outcome="blocked")
    assert blocked.send(run.events) == {"text": BLOCKED_REPLY, "finish_reason": "blocked"}
    assert [(e.kind, e.text, e.finish_reason) for e in published(redis_conn)] == [
        ("done", BLOCKED_REPLY, "stop")
    ]
    assert engine.calls == []


# generate


def test_generate_streams_the_tool_steps_then_the_answer(
    smol: Any, redis_conn: Redis, settings: Settings
) -> None:
    settings = settings.model_copy(update={"tools": "calculator"})
    replies = [(CALL, False), ("The answer is 14.", False)]
    engine = ScriptedEngine(smol, replies, stop="<|im_end|>").serve(settings)
    run, prepared = ready(redis_conn, engine, chat("what is (3+4)*2?"))
    answered = generate(run, prepared, never)
    assert answered.completion.text == "The answer is 14."
    assert answered.traces == [f"{TRACE}\n\n"]
    assert prepared.prompt is not None and engine.calls[0] == prepared.prompt.input_ids
    deltas = [e.text for e in published(redis_conn) if e.kind == "delta"]
    assert "".join(deltas) == f"{TRACE}\n\nThe answer is 14."  # the raw call never shown
    assert [e.seq for e in published(redis_conn)] == list(range(1, len(deltas) + 1))


def test_generate_says_the_note_first(smol: Any, redis_conn: Redis, settings: Settings) -> None:
    engine = ScriptedEngine(smol, [("Dogs bark.", False)], stop="<|im_end|>").serve(settings)
    photo = Attachment(name="dog.png", content_type="image/png", image_id="abc")
    run, prepared = ready(redis_conn, engine, chat("what animal barks?", photo))
    answered = generate(run, prepared, never)
    deltas = [e.text for e in published(redis_conn) if e.kind == "delta"]
    assert deltas[0] == prepared.note and "".join(deltas[1:]) == "Dogs bark."
    assert answered.traces == []


# finish


def completion(text: str, finish_reason: str = "stop") -> Completion:
    return Completion(text, 30, 7, finish_reason, first_token_s=0.5, total_s=2.0)


def test_finish_records_the_exchange_and_sends_usage(
    smol: Any, redis_conn: Redis, settings: Settings
) -> None:
    engine = ScriptedEngine(smol, [], stop="<|im_end|>").serve(settings)
    question = chat("capital of France?", created_at=999.0)
    run, prepared = ready(redis_conn, engine, question)
    result = finish(run, prepared, Answered(completion("Paris.", "timeout"), ["🔧 step\n\n"]))

    events = published(redis_conn)
    assert [e.kind for e in events] == ["delta", "done"] and events[0].text == TIMEOUT_NOTE
    done = events[-1]
    assert done.text == "🔧 step\n\nParis." + TIMEOUT_NOTE and done.finish_reason == "timeout"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (30, 7)
    assert done.usage.queue_ms == pytest.approx(1000.0)  # picked up at 1000.0, sent at 999.0
    assert done.usage.prompt_ms == pytest.approx(500.0)
    assert done.usage.generate_ms == pytest.approx(1500.0)
    assert result["text"] == "Paris." and result["finish_reason"] == "timeout"
    assert result["completion_tokens"] == 7
    assert ConversationStore(redis_conn, 60).load(question.conversation_key) == [
        Message(role="user", content="capital of France?"),
        Message(role="assistant", content="Paris."),  # the answer, without traces or notes
    ]


def test_finish_keeps_no_history_for_a_stateless_api_turn(
    smol: Any, redis_conn: Redis, settings: Settings
) -> None:
    engine = ScriptedEngine(smol, [], stop="<|im_end|>").serve(settings)
    api = Turn(platform="api", channel="api", user="u", message_id="m", text="",
               messages=[Message(role="user", content="hi")])  # fmt: skip
    run, prepared = ready(redis_conn, engine, api)
    finish(run, prepared, Answered(completion("Hello.", "timeout"), []))
    done = published(redis_conn)[-1]
    assert done.text == "Hello." and done.finish_reason == "timeout"  # no note for the API
    assert redis_conn.keys("corral:history:*") == []


def test_finish_replaces_a_blocked_answer_everywhere(
    smol: Any, redis_conn: Redis, moderated: Settings
) -> None:
    engine = ScriptedEngine(smol, [], stop="<|im_end|>").serve(moderated)
    question = chat("make one up")
    run, prepared = ready(redis_conn, engine, question)
    result = finish(run, prepared, Answered(completion("Try 078-05-1120."), ["🔧 step\n\n"]))
    assert published(redis_conn)[-1].text == BLOCKED_REPLY == result["text"]
    stored = ConversationStore(redis_conn, 60).load(question.conversation_key)
    assert [m.content for m in stored] == ["make one up", BLOCKED_REPLY]


def test_run_turn_is_an_rq_job_only() -> None:
    with pytest.raises(RuntimeError, match="must run as an RQ job"):
        run_turn(chat("hi").to_payload())
