"""The Ollama dialect, driven by the official ``ollama`` client and raw requests."""

from __future__ import annotations

import json
import time
import urllib.request

import ollama
import pytest
from rq.job import Job
from test_api_fixtures import MODEL, REPLY, USAGE, FakeWorker, ServerThread

from shared.contract import Message, Turn

pytest_plugins = ["test_api_fixtures"]


def post(url: str, body: dict) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


def test_generate_without_stream_returns_one_object_with_ollama_fields(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    client = ollama.Client(host=api.url)
    result = client.generate(
        model=MODEL,
        prompt="Why is the sky blue?",
        system="Be brief.",
        stream=False,
        options={"temperature": 0.2, "top_p": 0.5, "num_predict": 7},
    )
    assert result.response == REPLY
    assert result.done is True
    assert result.done_reason == "stop"
    assert result.model == MODEL
    # Durations are nanoseconds, taken from the worker's usage (milliseconds).
    assert result.prompt_eval_count == USAGE.prompt_tokens
    assert result.prompt_eval_duration == 12_500_000
    assert result.eval_count == USAGE.completion_tokens
    assert result.eval_duration == 40_000_000
    assert result.load_duration == 2_500_000
    assert result.total_duration > 0

    (turn,) = fake_worker.turns
    assert turn.platform == "api"
    assert turn.text == "Why is the sky blue?"
    assert turn.messages == [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Why is the sky blue?"),
    ]
    assert turn.sampling.temperature == 0.2
    assert turn.sampling.top_p == 0.5
    assert turn.sampling.max_new_tokens == 7


def test_generate_streams_ndjson_chunks_then_a_final_summary(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    status, content_type, raw = post(
        f"{api.url}/api/generate", {"model": MODEL, "prompt": "hi", "options": {"num_predict": -1}}
    )
    assert status == 200
    assert content_type == "application/x-ndjson"
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert len(lines) == len(REPLY.split(" ")) + 1  # one per delta, then the summary
    assert all(line["done"] is False for line in lines[:-1])
    assert "".join(line["response"] for line in lines) == REPLY
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == USAGE.completion_tokens
    assert all(line["created_at"].endswith("Z") for line in lines)
    # -1 means "no limit" in Ollama: the worker's default applies.
    assert fake_worker.turns[0].sampling.max_new_tokens is None
    assert fake_worker.turns[0].messages == [Message(role="user", content="hi")]


def test_chat_stream_sends_the_whole_conversation_verbatim(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2+2?"},
    ]
    client = ollama.Client(host=api.url)
    parts = list(client.chat(model=MODEL, messages=conversation, stream=True))
    assert "".join(p.message.content for p in parts) == REPLY
    assert all(p.message.role == "assistant" for p in parts)
    assert parts[-1].done and parts[-1].done_reason == "stop"
    (turn,) = fake_worker.turns
    # Messages now carry image ids too (none here).
    assert [m.model_dump(exclude={"images", "author"}) for m in turn.messages] == conversation
    assert all(m.images == [] and m.author is None for m in turn.messages)
    assert turn.text == "What is 2+2?"


def test_chat_without_stream_is_one_json_object(api: ServerThread, fake_worker: FakeWorker) -> None:
    fake_worker.finish_reason = "length"
    status, content_type, raw = post(
        f"{api.url}/api/chat",
        {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}]},
    )
    body = json.loads(raw)
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert body["message"] == {"role": "assistant", "content": REPLY}
    assert body["done"] is True and body["done_reason"] == "length"
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert isinstance(body[key], int), key


def test_lost_deltas_are_made_up_from_the_final_text(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    def skip_middle(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "delta", text="one")
        worker.emit(job, 1, "done", text="one two three", usage=USAGE, finish_reason="stop")

    fake_worker.behave = skip_middle
    parts = list(ollama.Client(host=api.url).generate(model=MODEL, prompt="x", stream=True))
    assert "".join(p.response for p in parts) == "one two three"


def test_worker_error_becomes_an_ollama_error(api: ServerThread, fake_worker: FakeWorker) -> None:
    def fail(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "error", error="the prompt is too long")

    fake_worker.behave = fail
    client = ollama.Client(host=api.url)
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model=MODEL, prompt="x", stream=False)
    assert caught.value.status_code == 500
    assert caught.value.error == "the prompt is too long"
    # Before any text was sent a stream can still fail with a status code.
    with pytest.raises(ollama.ResponseError, match="too long"):
        list(client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True))


def test_error_after_text_arrives_as_an_error_line(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    def fail_midway(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "delta", text="partial")
        worker.emit(job, 1, "error", error="worker crashed")

    fake_worker.behave = fail_midway
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError, match="worker crashed"):
        for part in ollama.Client(host=api.url).generate(model=MODEL, prompt="x", stream=True):
            seen.append(part.response)
    assert seen == ["partial"]


def test_empty_chat_only_loads_the_model_and_enqueues_nothing(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    result = ollama.Client(host=api.url).chat(model=MODEL, messages=[])
    assert result.done and result.done_reason == "load"
    assert fake_worker.turns == []


def test_tags_ps_and_version(api: ServerThread, fake_worker: FakeWorker) -> None:
    client = ollama.Client(host=api.url)
    assert [m.model for m in client.list().models] == [MODEL]
    assert [m.model for m in client.ps().models] == [MODEL]
    with urllib.request.urlopen(f"{api.url}/api/version", timeout=5) as response:
        assert json.loads(response.read())["version"]


def test_unsupported_features_are_refused_clearly(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    client = ollama.Client(host=api.url)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "not a name!"}}],
        )
    assert caught.value.status_code == 400 and "tools[0].function.name" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model=MODEL, prompt="x", options={"temperature": 9})
    assert caught.value.status_code == 400 and "options.temperature" in caught.value.error
    assert fake_worker.turns == []


def test_a_failed_attempt_before_any_text_is_retried_transparently(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    def retry_then_answer(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "error", error="transient", retrying=True)
        FakeWorker.answer(worker, job, turn)

    fake_worker.behave = retry_then_answer
    parts = list(ollama.Client(host=api.url).generate(model=MODEL, prompt="x", stream=True))
    assert "".join(p.response for p in parts) == REPLY


def test_a_failed_attempt_after_text_ends_the_stream_and_cancels_the_retry(
    api: ServerThread, fake_worker: FakeWorker, redis_conn
) -> None:
    def fail_after_text(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "delta", text="half")
        worker.emit(job, 1, "error", error="transient", retrying=True)
        worker.emit(job, 2, "started")  # the retry starts over (it could not resume)

    fake_worker.behave = fail_after_text
    with pytest.raises(ollama.ResponseError, match="middle of the answer"):
        list(ollama.Client(host=api.url).generate(model=MODEL, prompt="x", stream=True))
    # The server cancels just after closing the stream, so give it a moment.
    deadline = time.monotonic() + 5
    while not redis_conn.keys("corral:cancel:*") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(redis_conn.keys("corral:cancel:*")) == 1, "the retry was not cancelled"


def test_a_retry_that_resumes_the_answer_carries_on_in_the_same_stream(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    def resume_after_text(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "delta", text="Hello, ")
        worker.emit(job, 1, "error", error="transient", retrying=True)
        worker.emit(job, 2, "started", resume_from=len("Hello, "))
        worker.emit(job, 3, "delta", text="world")
        worker.emit(job, 4, "done", text="Hello, world", finish_reason="stop")

    fake_worker.behave = resume_after_text
    parts = list(ollama.Client(host=api.url).generate(model=MODEL, prompt="x", stream=True))
    assert "".join(p.response for p in parts) == "Hello, world" and parts[-1].done
