"""The OpenAI dialect, driven by the official ``openai`` client and raw requests."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest
from rq.job import Job
from test_api_fixtures import MODEL, REPLY, USAGE, FakeWorker, ServerThread, StartApi

from shared.contract import Message, Turn

pytest_plugins = ["test_api_fixtures"]


def client_for(server: ServerThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=10)


def test_completion_without_stream(api: ServerThread, fake_worker: FakeWorker) -> None:
    result = client_for(api).chat.completions.create(
        model=f"{MODEL}:latest",  # Ollama-style tag of the served model
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Why is the sky "},
                    {"type": "text", "text": "blue?"},
                ],
            },
        ],
        temperature=0.3,
        top_p=0.8,
        max_tokens=9,
        user="alice",
    )
    assert result.object == "chat.completion"
    assert result.id.startswith("chatcmpl-")
    assert result.model == MODEL  # the model that answered, not the name asked for
    (choice,) = result.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == REPLY
    assert choice.finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 7)
    assert result.usage.total_tokens == 18

    (turn,) = fake_worker.turns
    assert turn.messages == [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Why is the sky blue?"),
    ]
    assert turn.user == "alice"
    assert (turn.sampling.temperature, turn.sampling.top_p, turn.sampling.max_new_tokens) == (
        0.3,
        0.8,
        9,
    )


def test_completion_stream_with_usage(api: ServerThread, fake_worker: FakeWorker) -> None:
    fake_worker.finish_reason = "length"
    stream = client_for(api).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == USAGE.completion_tokens


def test_stream_is_server_sent_events_ending_with_done(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    request = urllib.request.Request(
        f"{api.url}/v1/chat/completions", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = response.read().decode().split("\n\n")
    assert events[-1] == ""  # every event ends with a blank line
    assert events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert "usage" not in json.loads(events[-3].removeprefix("data: "))


def test_models_lists_the_served_model(api: ServerThread, fake_worker: FakeWorker) -> None:
    assert [m.id for m in client_for(api).models.list()] == [MODEL]


def test_errors_use_openai_error_objects(api: ServerThread, fake_worker: FakeWorker) -> None:
    client = client_for(api)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], n=2
        )
    assert caught.value.status_code == 400
    assert "n=1" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=0
        )
    assert fake_worker.turns == []

    def fail(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "error", error="out of memory")

    fake_worker.behave = fail
    with pytest.raises(openai.InternalServerError, match="out of memory"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])


def test_error_in_the_middle_of_a_stream_raises_in_the_client(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    def fail_midway(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "delta", text="partial")
        worker.emit(job, 1, "error", error="worker crashed")

    fake_worker.behave = fail_midway
    stream = client_for(api).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="worker crashed"):
        for _ in stream:
            pass


def test_bearer_token_is_the_api_key(start_api: StartApi, fake_worker: FakeWorker) -> None:
    server = start_api(token="s3cret-token")
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(server, "wrong").models.list()
    assert "s3cret" not in caught.value.response.text
    assert [m.id for m in client_for(server, "s3cret-token").models.list()] == [MODEL]
