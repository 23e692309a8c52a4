"""Caller-declared tools in both dialects, in the contract's terms and back.

Requests: ``tools`` (both dialects' ``{"type": "function", "function": {...}}``),
OpenAI's ``tool_choice``, assistant messages carrying ``tool_calls`` (kept as the JSON
call Llama 3.1 writes) and ``tool`` messages (results, fed back as ``ipython`` turns).
Answers: the worker's calls as OpenAI ``tool_calls`` (arguments as a JSON string) or
Ollama ``message.tool_calls`` (arguments as an object). corral never runs these tools.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import ValidationError

from bots.api.turns import ApiError
from shared.contract import FunctionSpec, ToolCallOut
from shared.structured import SchemaError, grammar, tool_call_format

CHOICES = ("auto", "none", "required")


def function_specs(tools: list[Any] | None) -> list[FunctionSpec]:
    specs = []
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not (isinstance(function, dict))
        ):
            raise ApiError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        try:
            specs.append(
                FunctionSpec(
                    name=function.get("name", ""),
                    description=function.get("description") or "",
                    parameters=function.get("parameters") or {"type": "object"},
                )
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ApiError(400, f"tools[{i}].function.{first['loc'][0]}: {first['msg']}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ApiError(400, "tools: two tools have the same name")
    return specs


def tool_choice(value: Any, specs: list[FunctionSpec]) -> str:
    """OpenAI's tool_choice as the contract's string, checked against the tools."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value in CHOICES:
        choice = value
    elif isinstance(value, dict) and isinstance(value.get("function"), dict):
        choice = str(value["function"].get("name", ""))
    else:
        raise ApiError(400, 'tool_choice must be "auto", "none", "required" or a named function')
    if choice != "auto" and choice != "none" and not specs:
        raise ApiError(400, "tool_choice needs tools")
    try:
        forced = tool_call_format(specs, choice)
        if forced is not None:
            grammar(forced)
    except SchemaError as exc:
        raise ApiError(400, f"tools: {exc}") from None
    return choice


def call_text(name: str, arguments: Any, where: str) -> str:
    """An earlier call, as the model itself writes one (Llama 3.1 JSON)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            raise ApiError(400, f"{where}.arguments is not JSON") from None
    if not isinstance(arguments, dict):
        raise ApiError(400, f"{where}.arguments must be a JSON object")
    return json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)


def calls_text(calls: list[Any], where: str) -> str:
    texts = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise ApiError(400, f"{where}[{j}] must carry function.name and arguments")
        texts.append(call_text(function["name"], function.get("arguments"), f"{where}[{j}]"))
    return "\n".join(texts)


def openai_calls(calls: list[ToolCallOut]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
        }
        for c in calls
    ]


def ollama_calls(calls: list[ToolCallOut]) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]
