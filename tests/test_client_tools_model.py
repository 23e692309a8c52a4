"""Caller-declared tools with the real worker and model: a forced call's arguments always
validate against the tool's schema, and a tool result comes back as a text answer."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import jsonschema
import ollama
import openai
import pytest
from test_api_fixtures import ServerThread

pytest_plugins = ["test_api_fixtures"]

pytestmark = pytest.mark.model

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_forecast", "description": "Weather forecast for a city.",
                     "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "add", "description": "Add two numbers.", "parameters": {
            "type": "object", "properties": {"a": {"type": "number", "maximum": 1e6},
                                             "b": {"type": "number", "maximum": 1e6}},
            "required": ["a", "b"], "additionalProperties": False}},
    },
]  # fmt: skip
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def test_forced_calls_validate_and_results_round_trip(
    api: ServerThread, worker_proc: subprocess.Popen[bytes]
) -> None:
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    ask: list[Any] = [{"role": "user", "content": "What will the weather be in Oslo?"}]
    named = {"type": "function", "function": {"name": "get_forecast"}}
    reply = client.chat.completions.create(
        model=model, messages=ask, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=80
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_forecast"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)  # type: ignore[union-attr]

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is 2 plus 40?"}],
            tools=TOOLS,
            tool_choice="required",
            temperature=0,
            max_tokens=80,
            stream=True,
        )
    )
    (streamed,) = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert streamed.function is not None and streamed.function.name in SCHEMAS
    arguments = json.loads(streamed.function.arguments or "")
    jsonschema.validate(arguments, SCHEMAS[streamed.function.name])
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    # The caller runs the tool and sends the result: the model answers in text.
    answer = client.chat.completions.create(
        model=model,
        tools=TOOLS,
        max_tokens=40,
        messages=[
            *ask,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny, 21C"}'},
        ],
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert (answer.choices[0].message.content or "").strip()

    # Ollama's client: tools offered (the model decides), tool_calls or text back.
    result = ollama.Client(host=api.url, timeout=120).chat(
        model=model, messages=ask, tools=TOOLS, options={"num_predict": 60, "temperature": 0}
    )
    for made in result.message.tool_calls or []:
        jsonschema.validate(dict(made.function.arguments), SCHEMAS[made.function.name])
    assert result.message.tool_calls or (result.message.content or "").strip()
