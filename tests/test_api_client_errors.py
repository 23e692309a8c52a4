"""A client's mistake is a 4xx in the route's dialect that names the cause; 5xx is ours.

The too-long prompt and images sent to a text-only model are found by the worker,
which says so with a machine-readable ``code`` on its error event.
"""

from __future__ import annotations

import ollama
import openai
import pytest
from rq.job import Job
from test_api_fixtures import MODEL, FakeWorker, ServerThread, post_bytes

from shared.contract import CONTEXT_LENGTH_EXCEEDED, IMAGES_NOT_SUPPORTED, Turn

pytest_plugins = ["test_api_fixtures"]

TOO_LONG = "Your message is too long for me (50030 tokens; the limit is 4080)."
NO_VISION = f"the model {MODEL} cannot see images"


def refuse(message: str, code: str):  # type: ignore[no-untyped-def]
    def behave(worker: FakeWorker, job: Job, turn: Turn) -> None:
        worker.emit(job, 0, "started")
        worker.emit(job, 1, "error", error=message, code=code, finish_reason="error")

    return behave


post = post_bytes


def test_too_long_prompt_is_openai_context_length_exceeded(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    fake_worker.behave = refuse(TOO_LONG, CONTEXT_LENGTH_EXCEEDED)
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=10)
    messages = [{"role": "user", "content": "x"}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            result = client.chat.completions.create(model=MODEL, messages=messages, stream=stream)  # type: ignore[call-overload]
            list(result) if stream else None
        assert caught.value.status_code == 400
        assert caught.value.code == CONTEXT_LENGTH_EXCEEDED
        assert "too long" in caught.value.message
    with pytest.raises(ollama.ResponseError) as ollama_caught:
        ollama.Client(host=api.url).chat(model=MODEL, messages=messages, stream=False)
    assert ollama_caught.value.status_code == 400 and "too long" in ollama_caught.value.error


def test_images_to_a_text_only_model_are_a_400(api: ServerThread, fake_worker: FakeWorker) -> None:
    fake_worker.behave = refuse(NO_VISION, IMAGES_NOT_SUPPORTED)
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=api.url).generate(model=MODEL, prompt="what is this?", stream=False)
    assert caught.value.status_code == 400 and "cannot see images" in caught.value.error


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/v1/chat/completions"])
def test_unparseable_and_too_deeply_nested_json_are_400(
    api: ServerThread, fake_worker: FakeWorker, path: str
) -> None:
    deep = b'{"messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    for body in (deep, b"[" * 200_000, b'{"model": "x", "messages": [', b"\xff\xfe"):
        status, answer = post(api.url + path, body)
        assert status == 400, (path, body[:20], answer)
        error = answer["error"]
        message = error["message"] if path.startswith("/v1") else error
        assert "JSON" in message, message


def test_a_worker_fault_stays_a_500(api: ServerThread, fake_worker: FakeWorker) -> None:
    fake_worker.behave = refuse("Sorry, the model failed while answering.", "")
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=api.url).generate(model=MODEL, prompt="x", stream=False)
    assert caught.value.status_code == 500
