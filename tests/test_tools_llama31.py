"""Llama 3.1 tool calling: declarations and call parsing against Meta's published examples."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from shared.contract import Message
from worker.tools.builtin import ToolContext, available_tools, run_tool
from worker.tools.llama31 import ToolCallError, ToolSpec, parse_call, result_content, system_prompt

WEATHER = ToolSpec(
    "get_current_conditions",
    "Get the current weather conditions for a specific location",
    {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
)


def test_builtin_tools_system_prompt_matches_the_published_layout() -> None:
    prompt = system_prompt(
        "You are a helpful assistant", ["brave_search", "wolfram_alpha"], today=date(2024, 7, 23)
    )
    assert prompt == (
        "Environment: ipython\nTools: brave_search, wolfram_alpha\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 23 Jul 2024\n\n"
        "You are a helpful assistant"
    )


def test_no_tools_means_no_ipython_environment() -> None:
    prompt = system_prompt("Be brief.", today=date(2024, 7, 23))
    assert "Environment" not in prompt and prompt.endswith("Be brief.")


def test_custom_tools_are_declared_as_json_functions() -> None:
    prompt = system_prompt("Be brief.", custom=[WEATHER], today=date(2024, 7, 23))
    assert prompt.startswith("Environment: ipython\n\nCutting Knowledge Date")
    declared = next(line for line in prompt.splitlines() if line.startswith("{"))
    assert json.loads(declared) == {
        "type": "function",
        "name": "get_current_conditions",
        "description": "Get the current weather conditions for a specific location",
        "parameters": WEATHER.parameters,
    }
    assert "<function=function_name>{parameters}</function>" in prompt


def test_builtin_call_behind_python_tag() -> None:
    call = parse_call('brave_search.call(query="current weather in Menlo Park, California")',
                      python_tag=True, custom_names=set())  # fmt: skip
    assert call is not None
    assert (call.name, call.arguments, call.style) == (
        "brave_search", {"query": "current weather in Menlo Park, California"}, "builtin",
    )  # fmt: skip


def test_wolfram_call_and_bad_builtin_arguments() -> None:
    call = parse_call('wolfram_alpha.call(query="solve x^3 - 4x^2 + 6x - 24 = 0")', True, set())
    assert call and call.name == "wolfram_alpha" and call.arguments["query"].startswith("solve")
    with pytest.raises(ToolCallError, match="literal"):
        parse_call("brave_search.call(query=os.system('rm -rf /'))", True, set())


def test_code_behind_python_tag_is_a_code_interpreter_call() -> None:
    call = parse_call("import math\nprint(math.pi)", True, set())
    assert call and call.name == "code_interpreter" and "math.pi" in call.arguments["code"]


def test_json_custom_call() -> None:
    text = '{"name": "get_current_conditions", "parameters": {"location": "San Francisco, CA"}}'
    call = parse_call(text, python_tag=False, custom_names={"get_current_conditions"})
    assert call and call.style == "json" and call.arguments == {"location": "San Francisco, CA"}
    # JSON in an ordinary answer is not a call unless it names an offered tool.
    assert (
        parse_call('{"name": "Ada", "parameters": {}}', False, {"get_current_conditions"}) is None
    )


def test_function_tag_call() -> None:
    text = '<function=spotify_trending_songs>{"n": "5"}</function>'
    call = parse_call(text, python_tag=False, custom_names=set())
    assert call and (call.name, call.arguments, call.style) == (
        "spotify_trending_songs", {"n": "5"}, "function_tag",
    )  # fmt: skip
    with pytest.raises(ToolCallError, match="not JSON"):
        parse_call("<function=f>{oops}</function>", False, set())


def test_plain_answers_are_not_calls() -> None:
    assert parse_call("Paris is the capital of France.", False, {"calculator"}) is None
    # The *text* <|python_tag|> (a user got the model to echo it) is not the token.
    assert parse_call('<|python_tag|>brave_search.call(query="x")', False, set()) is None


def test_ipython_results_are_json_or_text() -> None:
    assert json.loads(result_content({"result": 4})) == {"result": 4}
    assert result_content("plain") == "plain"


def test_shipped_tools_work_without_any_service() -> None:
    tools = available_tools(env={})
    assert set(tools) == {"calculator", "current_time", "search_conversation"}
    ctx = ToolContext([Message(role="user", content="my badge number is 4471")])
    assert run_tool(tools, "calculator", {"expression": "(3 + 4) * 2 / sqrt(16)"}, ctx) == {
        "expression": "(3 + 4) * 2 / sqrt(16)", "result": 3.5,
    }  # fmt: skip
    assert "error" in run_tool(tools, "calculator", {"expression": "__import__('os')"}, ctx)
    assert "error" in run_tool(tools, "calculator", {"expression": "9 ** 99999"}, ctx)
    assert run_tool(tools, "current_time", {"timezone": "Europe/Paris"}, ctx)["iso"][:2] == "20"
    found = run_tool(tools, "search_conversation", {"query": "badge number"}, ctx)
    assert found["matches"][0]["text"] == "my badge number is 4471"
    assert run_tool(tools, "nope", {}, ctx) == {"error": "no tool named 'nope' is available"}


def test_search_adapters_are_offered_only_with_their_keys() -> None:
    tools = available_tools(env={"BRAVE_API_KEY": "k", "WOLFRAM_ALPHA_APP_ID": "a"})
    assert tools["brave_search"].builtin and tools["wolfram_alpha"].builtin


def test_llama3_ipython_turn_is_a_header_and_plain_result(llama3: Any) -> None:
    from worker.prompt import build_prompt

    messages = [
        Message(role="user", content="What is 2+2?"),
        Message(role="ipython", content=result_content({"result": 4})),
    ]
    ids = build_prompt(llama3, messages).input_ids
    ipython = llama3("ipython", add_special_tokens=False)["input_ids"]
    header = [128006, *ipython, 128007, 271]
    at = next(i for i in range(len(ids)) if ids[i : i + len(header)] == header)
    assert ids[-4:] == [128006, 78191, 128007, 271]  # then the assistant continues
    assert 128009 in ids[at:]  # the result turn ends with <|eot_id|>
