"""Caller-declared tools in both dialects: declarations and results reach the worker in
the contract's terms; the worker's calls come back as each dialect's tool calls."""

from __future__ import annotations

import json
from typing import Any

import ollama
import openai
import pytest
from rq.job import Job
from test_api_fixtures import MODEL, USAGE, FakeWorker, ServerThread

from shared.contract import FunctionSpec, Message, ToolCallOut, Turn

pytest_plugins = ["test_api_fixtures"]

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]  # fmt: skip
CALL = ToolCallOut(name="get_weather", arguments={"city": "Paris", "unit": "C"})


def calls_back(worker: FakeWorker, job: Job, turn: Turn) -> None:
    worker.emit(job, 0, "started")
    worker.emit(job, 1, "done", text="", finish_reason="stop", usage=USAGE, tool_calls=[CALL])


def oai(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=10)


def test_openai_tools_round_trip(api: ServerThread, fake_worker: FakeWorker) -> None:
    fake_worker.behave = calls_back
    ask: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    reply = oai(api).chat.completions.create(
        model=MODEL,
        messages=ask,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (choice,) = reply.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == CALL.arguments  # type: ignore[union-attr]

    chunks = list(
        oai(api).chat.completions.create(
            model=MODEL, messages=ask, tools=TOOLS, tool_choice="required", stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    (streamed,) = [t for d in deltas for t in d.tool_calls or []]
    assert streamed.index == 0 and streamed.function is not None
    assert json.loads(streamed.function.arguments or "") == CALL.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    # The caller ran the tool; the result goes back with the call that asked for it.
    fake_worker.behave = None
    oai(api).chat.completions.create(
        model=MODEL,
        tools=TOOLS,
        messages=[
            *ask,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
        ],
    )
    first, second, third = fake_worker.turns
    assert first.tool_choice == "get_weather" and second.tool_choice == "required"
    assert first.tools == [
        FunctionSpec(name="get_weather", description="Weather now.", parameters=WEATHER),
        FunctionSpec(name="get_time", parameters={"type": "object"}),
    ]
    assert third.messages == [
        Message(role="user", content="Weather in Paris?"),
        Message(
            role="assistant",
            content='{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}',
        ),
        Message(role="ipython", content='{"temp": 21}'),
    ]
    assert third.tool_choice == "auto"


def test_ollama_tools_round_trip(api: ServerThread, fake_worker: FakeWorker) -> None:
    fake_worker.behave = calls_back
    client = ollama.Client(host=api.url, timeout=10)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat(model=MODEL, messages=ask, tools=TOOLS)
    (call,) = reply.message.tool_calls or []
    assert (call.function.name, dict(call.function.arguments)) == (CALL.name, CALL.arguments)
    parts = list(client.chat(model=MODEL, messages=ask, tools=TOOLS, stream=True))
    assert [c.function.name for p in parts for c in p.message.tool_calls or []] == [CALL.name]
    assert parts[-1].done

    fake_worker.behave = None
    client.chat(
        model=MODEL,
        tools=TOOLS,
        messages=[
            *ask,
            {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
            {"role": "tool", "content": "21 degrees"},
        ],
    )
    assert fake_worker.turns[0].tools[0].name == "get_weather"
    assert [m.role for m in fake_worker.turns[-1].messages or []] == [
        "user",
        "assistant",
        "ipython",
    ]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools[0] must be"),
        ({"tool_choice": "always"}, "tool_choice must be"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "'nope', which is not among the tools"),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        ({"tools": TOOLS + TOOLS[:1]}, "same name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "not": {}}}}], "tool_choice": "required"}, "Unimplemented keys"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
         "cannot be combined"),
    ],
)  # fmt: skip
def test_openai_tool_requests_that_cannot_work_are_400s(
    api: ServerThread, fake_worker: FakeWorker, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai(api).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            **fields,
        )
    assert named in str(raised.value)
    assert fake_worker.turns == []


def test_a_tool_result_is_an_ipython_turn_in_llama3_prompt_ids(llama3: Any) -> None:
    """The request's messages, rendered for Llama 3 exactly as the worker renders them."""
    from bots.api.openai import ChatMessage
    from worker.prompt import build_prompt

    request = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
    ]  # fmt: skip
    messages = [ChatMessage.model_validate(m).parse(i)[0] for i, m in enumerate(request)]
    ids = build_prompt(llama3, messages).input_ids
    special = llama3.convert_tokens_to_ids
    header = [special("<|start_header_id|>"), *llama3.encode("ipython", add_special_tokens=False)]
    result = llama3.encode('{"temp": 21}', add_special_tokens=False)
    call = llama3.encode(messages[1].content, add_special_tokens=False)
    tail = [special("<|eot_id|>"), special("<|start_header_id|>")]
    text = llama3.decode(ids)
    assert text.endswith(
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )

    def find(part: list[int]) -> int:
        return next(i for i in range(len(ids)) if ids[i : i + len(part)] == part)

    assert find(call) < find(header) < find(result)
    assert ids[find(result) + len(result) : find(result) + len(result) + 2] == tail
