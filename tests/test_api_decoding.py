"""Response format, stop and seed in both dialects reach the worker as the contract's
Sampling; what the worker cannot enforce is a 400 before anything is queued."""

from __future__ import annotations

from typing import Any

import ollama
import openai
import pytest
from redis import Redis
from test_api_fixtures import MODEL, FakeWorker, ServerThread

from shared import model_info
from shared.contract import ResponseFormat

pytest_plugins = ["test_api_fixtures"]

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "rank": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}
USER = [{"role": "user", "content": "A city?"}]


def oai(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=10)


def test_ollama_format_stop_and_seed(api: ServerThread, fake_worker: FakeWorker) -> None:
    client = ollama.Client(host=api.url, timeout=10)
    client.chat(model=MODEL, messages=USER, format=SCHEMA, options={"stop": ["\n\n"], "seed": 7})
    client.generate(model=MODEL, prompt="Hi", format="json", options={"stop": "END", "seed": -1})
    client.chat(model=MODEL, messages=USER)
    schema, json_mode, plain = (turn.sampling for turn in fake_worker.turns)
    assert schema.response_format == ResponseFormat(type="json_schema", json_schema=SCHEMA)
    assert (schema.stop, schema.seed) == (["\n\n"], 7)
    assert json_mode.response_format == ResponseFormat(type="json_object")
    assert (json_mode.stop, json_mode.seed) == (["END"], None)  # -1: a random seed
    assert (plain.response_format, plain.stop, plain.seed) == (None, [], None)


def test_openai_response_format_stop_and_seed(api: ServerThread, fake_worker: FakeWorker) -> None:
    client = oai(api)
    spec = {"name": "city", "schema": SCHEMA, "strict": True}
    client.chat.completions.create(
        model=MODEL,
        messages=USER,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": spec},  # type: ignore[arg-type,typeddict-item]
        stop=["###", "END"],
        seed=123,
    )
    client.chat.completions.create(
        model=MODEL,
        messages=USER,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
        stop="\n",
    )
    client.chat.completions.create(
        model=MODEL,
        messages=USER,  # type: ignore[arg-type]
        response_format={"type": "text"},
    )
    schema, json_mode, text = (turn.sampling for turn in fake_worker.turns)
    assert schema.response_format == ResponseFormat(type="json_schema", json_schema=SCHEMA)
    assert (schema.stop, schema.seed) == (["###", "END"], 123)
    assert (json_mode.response_format, json_mode.stop) == (
        ResponseFormat(type="json_object"),
        ["\n"],
    )
    assert text.response_format is None


@pytest.mark.parametrize(
    ("response_format", "named"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema must be a JSON schema"),
        ({"type": "yaml"}, "response_format.type"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}},
            'Unimplemented keys: ["not"]',
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"if": {}, "then": {}, "type": "object"}},
            },
            '["if", "then"]',
        ),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "strng"}}}, "strng"),
    ],
)
def test_openai_refuses_what_cannot_be_enforced(
    api: ServerThread, fake_worker: FakeWorker, response_format: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=named.replace("[", r"\[")):
        oai(api).chat.completions.create(
            model=MODEL,
            messages=USER,  # type: ignore[arg-type]
            response_format=response_format,  # type: ignore[arg-type]
        )
    assert fake_worker.turns == []


@pytest.mark.parametrize(
    ("request_fields", "named"),
    [
        ({"format": "yaml"}, 'format must be "json"'),
        ({"format": {"type": "array", "uniqueItems": True}}, "uniqueItems"),
        ({"options": {"stop": [1, 2]}}, "options.stop must be a string or a list"),
        ({"options": {"stop": ["s"] * 17}}, "at most 16"),
        ({"options": {"seed": -5}}, "options.seed"),
    ],
)
def test_ollama_refuses_what_cannot_be_enforced(
    api: ServerThread, fake_worker: FakeWorker, request_fields: dict[str, Any], named: str
) -> None:
    client = ollama.Client(host=api.url, timeout=10)
    with pytest.raises(ollama.ResponseError, match=named) as raised:
        client._request_raw(
            "POST",
            "/api/chat",
            json={"model": MODEL, "messages": USER, "stream": False, **request_fields},
        )
    assert raised.value.status_code == 400
    assert fake_worker.turns == []


def test_penalties_top_k_and_min_p_in_both_dialects(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    client = ollama.Client(host=api.url, timeout=10)
    options = {"top_k": 20, "min_p": 0.05, "repeat_penalty": 1.3, "repeat_last_n": 32,
               "presence_penalty": 0.5, "frequency_penalty": 0.25, "num_ctx": 2048,
               "typical_p": 1.0, "mirostat": 0}  # fmt: skip
    client.chat(model=MODEL, messages=USER, options=options)
    client.chat(model=MODEL, messages=USER, options={"repeat_penalty": 1.3, "repeat_last_n": 0})
    oai(api).chat.completions.create(
        model=MODEL,
        messages=USER,  # type: ignore[arg-type]
        presence_penalty=0.4,
        frequency_penalty=-0.2,
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1},
    )
    full, off, openai_side = (turn.sampling for turn in fake_worker.turns)
    assert full.shaping() == {
        "top_k": 20,
        "min_p": 0.05,
        "repetition_penalty": 1.3,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "penalty_window": 32,
    }
    assert off.shaping() == {}  # repeat_last_n 0: Ollama's "penalties off"
    assert openai_side.shaping() == {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.4,
        "frequency_penalty": -0.2,
    }


@pytest.mark.parametrize(
    ("dialect", "fields", "named"),
    [
        ("ollama", {"options": {"typical_p": 0.9}}, "options.typical_p is not supported"),
        ("ollama", {"options": {"mirostat": 2}}, "options.mirostat is not supported"),
        ("ollama", {"options": {"repeat_penalty": 0}}, "options.repeat_penalty"),
        ("generate", {"context": [1, 2, 3]}, "context is not supported"),
        ("generate", {"template": "{{ .Prompt }}"}, "template is not supported"),
        ("openai", {"logit_bias": {"50256": -100}}, "logit_bias and logprobs"),
        ("openai", {"logprobs": True}, "logit_bias and logprobs"),
        ("openai", {"presence_penalty": 3}, "presence_penalty"),
    ],
)
def test_options_that_would_change_the_answer_unapplied_are_refused(
    api: ServerThread, fake_worker: FakeWorker, dialect: str, fields: dict[str, Any], named: str
) -> None:
    if dialect == "generate":
        with pytest.raises(ollama.ResponseError, match=named):
            ollama.Client(host=api.url, timeout=10)._request_raw(
                "POST",
                "/api/generate",
                json={"model": MODEL, "prompt": "x", "stream": False, **fields},
            )
    elif dialect == "ollama":
        with pytest.raises(ollama.ResponseError, match=named):
            ollama.Client(host=api.url, timeout=10)._request_raw(
                "POST",
                "/api/chat",
                json={"model": MODEL, "messages": USER, "stream": False, **fields},
            )
    else:
        with pytest.raises(openai.BadRequestError, match=named):
            oai(api).chat.completions.create(model=MODEL, messages=USER, **fields)  # type: ignore[arg-type]
    assert fake_worker.turns == []


def test_a_model_without_constrained_decoding_is_a_400_before_queueing(
    api: ServerThread, fake_worker: FakeWorker, redis_conn: Redis
) -> None:
    # What a vision worker publishes: it cannot mask, seed or shape its tokens.
    model_info.write(redis_conn, MODEL, {"structured_outputs": False, "per_request_shaping": False})
    with pytest.raises(openai.BadRequestError, match="cannot take a response format"):
        oai(api).chat.completions.create(
            model=MODEL,
            messages=USER,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
        )
    with pytest.raises(ollama.ResponseError, match="cannot take a response format") as raised:
        ollama.Client(host=api.url, timeout=10).chat(
            model=MODEL, messages=USER, options={"seed": 3}
        )
    assert raised.value.status_code == 400
    assert fake_worker.turns == []
    ollama.Client(host=api.url, timeout=10).chat(model=MODEL, messages=USER)  # plain: served
    assert len(fake_worker.turns) == 1
