"""/v1/completions and Ollama raw: the prompt goes to the worker as a raw-prompt turn."""

from __future__ import annotations

import openai
import pytest
from test_api_fixtures import MODEL, REPLY, FakeWorker, ServerThread

from shared.contract import Message

pytest_plugins = ["test_api_fixtures"]


def oai(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=10)


def test_a_completion_is_a_raw_prompt_turn(api: ServerThread, fake_worker: FakeWorker) -> None:
    reply = oai(api).completions.create(model=MODEL, prompt=["Once upon"], stop="\n", seed=1)
    assert reply.choices[0].text == REPLY and reply.model == MODEL
    assert reply.usage is not None and reply.usage.total_tokens == 18
    chunks = list(oai(api).completions.create(model=MODEL, prompt="Once upon", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    first, second = fake_worker.turns
    assert first.raw_prompt and first.messages == [Message(role="user", content="Once upon")]
    assert (first.sampling.max_new_tokens, first.sampling.stop, first.sampling.seed) == (
        16,  # OpenAI's default for this endpoint
        ["\n"],
        1,
    )
    assert second.raw_prompt


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"n": 2}, "only n=1"),
        ({"echo": True}, "echo, suffix, logprobs and logit_bias"),
        ({"logprobs": 2}, "echo, suffix, logprobs and logit_bias"),
        ({"prompt": ["a", "b"]}, "one prompt per request"),
        ({"prompt": ""}, "must not be empty"),
        ({"model": "nope"}, "The model `nope` does not exist"),
        ({"max_tokens": 0}, "invalid field max_tokens"),  # named as the caller sent it
        ({"presence_penalty": 3}, "invalid field presence_penalty"),
    ],
)
def test_what_is_not_supported_is_a_400(
    api: ServerThread, fake_worker: FakeWorker, fields: dict[str, object], named: str
) -> None:
    request = {"model": MODEL, "prompt": "x", **fields}
    with pytest.raises(openai.APIStatusError, match=named):
        oai(api).completions.create(**request)  # type: ignore[call-overload]
    assert fake_worker.turns == []


def test_ollama_raw_generate_sends_only_the_prompt(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    import ollama

    client = ollama.Client(host=api.url, timeout=10)
    client.generate(model=MODEL, prompt="[INST] hi [/INST]", system="ignored when raw", raw=True)
    (turn,) = fake_worker.turns
    assert turn.raw_prompt and [m.role for m in turn.messages or []] == ["user"]
