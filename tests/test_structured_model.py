"""Structured outputs end to end: the real ollama and openai clients, the API server, a real
worker with the embedded 135M model. Every answer must parse and validate against its
schema, streamed and not, with all requests in flight at once through one worker.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import ollama
import openai
import pytest
from test_api_fixtures import ServerThread

from shared.settings import Settings

pytest_plugins = ["test_api_fixtures"]

pytestmark = pytest.mark.model

MAX_TOKENS = 160


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """All the requests come from one caller at once: no per-caller limits here."""
    return settings.model_copy(update={"user_turns_per_minute": 0.0, "queue_max_per_user": 100})


def obj(required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    schema["required"] = list(properties) if required is None else required
    return schema


STR: dict[str, Any] = {"type": "string", "maxLength": 40}
INT: dict[str, Any] = {"type": "integer"}
NUM: dict[str, Any] = {"type": "number"}
BOOL: dict[str, Any] = {"type": "boolean"}


def array(items: dict[str, Any], low: int, high: int) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": low, "maxItems": high}


# (what to ask for, the schema): nested objects, bounded arrays, enums, optional fields,
# numbers with ranges, booleans, $defs, anyOf, const, patterns.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("Describe a person.", obj(name=STR, age=INT)),
    ("Describe a book.", obj(title=STR, author=STR, year=INT, in_print=BOOL)),
    ("Give a city and its population.", obj(city=STR, population=INT)),
    ("List three fruits.", obj(fruits=array(STR, 3, 3))),
    ("List between one and four colours.", obj(colours=array(STR, 1, 4))),
    ("Pick a traffic light colour.", obj(light={"enum": ["red", "amber", "green"]})),
    (
        "Rate a movie.",
        obj(movie=STR, stars={"type": "integer", "minimum": 1, "maximum": 5}),
    ),
    ("Give a temperature reading.", obj(celsius=NUM, city=STR)),
    ("Is the sky blue?", obj(answer=BOOL)),
    (
        "Describe a user account.",
        obj(["username", "active"], username=STR, active=BOOL, email=STR, age=INT),
    ),
    (
        "Describe a company and its address.",
        obj(name=STR, address=obj(street=STR, city=STR, zip=STR)),
    ),
    (
        "Describe an order with its items.",
        obj(order_id=INT, items=array(obj(product=STR, quantity=INT), 1, 3)),
    ),
    (
        "Describe a task.",
        obj(
            title=STR,
            priority={"enum": ["low", "medium", "high"]},
            done=BOOL,
            tags=array(STR, 0, 3),
        ),
    ),
    (
        "Give the coordinates of a place.",
        obj(
            place=STR,
            lat={"type": "number", "minimum": -90, "maximum": 90},
            lon={"type": "number", "minimum": -180, "maximum": 180},
        ),
    ),
    ("Give a short yes or no verdict.", obj(verdict={"type": "string", "enum": ["yes", "no"]})),
    ("Describe a pet.", obj(["species"], species={"enum": ["cat", "dog", "fish"]}, name=STR)),
    (
        "Describe a team.",
        obj(team=STR, members=array(obj(name=STR, lead=BOOL), 1, 3)),
    ),
    (
        "Give a product with a price.",
        obj(
            product=STR,
            price={"type": "number", "exclusiveMinimum": 0},
            currency={"const": "EUR"},
        ),
    ),
    ("Give an HTTP status.", obj(code={"type": "integer", "enum": [200, 404, 500]}, ok=BOOL)),
    (
        "Give an identifier and a value that is a number or a word.",
        obj(id=INT, value={"anyOf": [INT, STR]}),
    ),
    (
        "Give two points.",
        {
            "$defs": {"point": obj(x=INT, y=INT)},
            **obj(start={"$ref": "#/$defs/point"}, end={"$ref": "#/$defs/point"}),
        },
    ),
    ("Give a product code.", obj(code={"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"})),
    (
        "Give a matrix of small numbers.",
        obj(rows=array(array({"type": "integer", "minimum": 0, "maximum": 9}, 2, 2), 2, 2)),
    ),
    ("List some numbers.", {"type": "array", "items": INT, "minItems": 2, "maxItems": 5}),
]


def oai(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)


def ask_ollama(url: str, model: str, prompt: str, fmt: Any, stream: bool) -> tuple[str, str]:
    client = ollama.Client(host=url, timeout=600)
    options = {"num_predict": MAX_TOKENS, "temperature": 0}
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        reply = client.chat(model=model, messages=messages, format=fmt, options=options)
        return reply.message.content or "", str(reply.done_reason)
    parts = list(
        client.chat(model=model, messages=messages, format=fmt, options=options, stream=True)
    )
    assert parts[-1].done
    return "".join(p.message.content or "" for p in parts), str(parts[-1].done_reason)


def ask_openai(
    url: str, model: str, prompt: str, fmt: dict[str, Any], stream: bool
) -> tuple[str, str]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=600)
    request: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "response_format": fmt,
    }
    if not stream:
        reply = client.chat.completions.create(**request)
        return reply.choices[0].message.content or "", reply.choices[0].finish_reason
    chunks = list(client.chat.completions.create(**request, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, str([c.choices[0].finish_reason for c in chunks if c.choices][-1])


def openai_schema(schema: dict[str, Any]) -> dict[str, Any]:
    spec = {"name": "answer", "schema": schema, "strict": True}
    return {"type": "json_schema", "json_schema": spec}


def test_every_answer_validates_against_its_schema(api: ServerThread, start_worker: Any) -> None:
    start_worker(slots=16)
    model = ollama.Client(host=api.url).list().models[0].model or ""
    jobs = []
    for i, (prompt, schema) in enumerate(CASES):
        # Each schema once streamed and once not, in the two dialects alternately.
        for stream in (False, True):
            if (i + stream) % 2:
                jobs.append((schema, ask_ollama, prompt, schema, stream))
            else:
                jobs.append((schema, ask_openai, prompt, openai_schema(schema), stream))
    # Plain JSON mode in both dialects, too (told what to write, as JSON mode wants: any
    # object is allowed, and a 135M model left to itself nests objects until it runs out).
    anything = {"type": "object"}
    jobs.append(
        (
            anything,
            ask_ollama,
            "Give a cat as a JSON object with the keys name and age.",
            "json",
            False,
        )
    )
    jobs.append(
        (
            anything,
            ask_openai,
            "Give a dog as a JSON object with the keys name and breed.",
            {"type": "json_object"},
            True,
        )
    )

    with ThreadPoolExecutor(16) as pool:
        futures = [
            (schema, pool.submit(ask, api.url, model, prompt, fmt, stream))
            for schema, ask, prompt, fmt, stream in jobs
        ]
        answers = [(schema, *future.result()) for schema, future in futures]
    failed = []
    for schema, text, finish in answers:
        try:
            assert finish == "stop", f"finish_reason {finish}"
            jsonschema.validate(json.loads(text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            failed.append(f"{json.dumps(schema)}\n  -> {text!r}\n  {str(exc)[:200]}")
    assert not failed, f"{len(failed)} of {len(answers)} answers failed:\n" + "\n".join(failed)


def test_unenforceable_schema_is_refused_naming_the_keyword(
    api: ServerThread, worker_proc: subprocess.Popen[bytes]
) -> None:
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0)
    model = client.models.list().data[0].id
    schema = {"type": "array", "items": INT, "uniqueItems": True}
    with pytest.raises(openai.BadRequestError, match="uniqueItems"):
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Numbers."}],
            response_format=openai_schema(schema),
        )
    with pytest.raises(ollama.ResponseError, match='"not"') as raised:
        ollama.Client(host=api.url).chat(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            format={"not": {"type": "string"}},
        )
    assert raised.value.status_code == 400


def test_seed_repeats_an_answer_and_stop_cuts_it(
    api: ServerThread, worker_proc: subprocess.Popen[bytes]
) -> None:
    client = oai(api)
    model = client.models.list().data[0].id
    ask: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a short story about a fox."}],
        "max_tokens": 40,
        "temperature": 1.0,
        "seed": 1234,
    }
    first = client.chat.completions.create(**ask).choices[0].message.content or ""
    again = client.chat.completions.create(**ask).choices[0].message.content or ""
    assert first == again and len(first.split()) > 10
    other = client.chat.completions.create(**{**ask, "seed": 99}).choices[0].message.content
    assert other != first  # the seed, not the prompt, chose the words

    # A stop text from the middle of that answer: the same answer, cut just before it.
    words = first.split(" ")
    stop = " " + " ".join(words[5:7])
    cut = first[: first.index(stop)]
    reply = client.chat.completions.create(**ask, stop=[stop, "never appears"])
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (cut, "stop")
    chunks = list(client.chat.completions.create(**ask, stop=stop, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == cut

    parts = list(
        ollama.Client(host=api.url, timeout=120).chat(
            model=model,
            messages=ask["messages"],
            options={"num_predict": 40, "temperature": 1.0, "seed": 1234, "stop": [stop]},
            stream=True,
        )
    )
    assert "".join(p.message.content or "" for p in parts) == cut
    assert parts[-1].done_reason == "stop"


def test_top_k_one_is_greedy_and_penalties_change_the_answer(
    api: ServerThread, worker_proc: subprocess.Popen[bytes]
) -> None:
    client = oai(api)
    model = client.models.list().data[0].id
    ask: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "List some animals."}],
        "max_tokens": 30,
    }
    greedy = client.chat.completions.create(**ask, temperature=0).choices[0].message.content
    hot = [
        client.chat.completions.create(**ask, temperature=1.5, extra_body={"top_k": 1})
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert hot == [greedy, greedy]  # top_k 1 leaves only the likeliest token, at any heat
    penalised = client.chat.completions.create(
        **ask, temperature=0, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert penalised.choices[0].message.content != greedy
