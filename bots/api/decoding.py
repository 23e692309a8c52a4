"""What a request asks of decoding, in both dialects and the contract's terms: response
format, stop texts, seed, and caller-declared tools (and the calls back).

A response format is checked here with the worker's own grammar compiler, so a
schema it cannot enforce is refused before anything is queued, naming the keywords.

Tools: ``tools`` (both dialects' ``{"type": "function", "function": {...}}``),
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
from shared.contract import MAX_STOPS, FunctionSpec, ResponseFormat, ToolCallOut
from shared.structured import SchemaError, grammar, tool_call_format

CHOICES = ("auto", "none", "required")  # tool_choice's words


def checked(fmt: ResponseFormat, where: str) -> ResponseFormat:
    try:
        grammar(fmt)
    except SchemaError as exc:
        raise ApiError(400, f"{where}: {exc}") from None
    return fmt


def ollama_format(value: Any) -> ResponseFormat | None:
    """Ollama ``format``: ``"json"`` or a JSON schema object ("" or null: free text)."""
    if value is None or value == "":
        return None
    if value == "json":
        return ResponseFormat(type="json_object")
    if isinstance(value, dict):
        return checked(ResponseFormat(type="json_schema", json_schema=value), "format")
    raise ApiError(400, 'format must be "json" or a JSON schema object')


def openai_response_format(value: Any) -> ResponseFormat | None:
    """OpenAI ``response_format``: text, json_object, or json_schema (strict or not:
    corral always enforces the schema)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object")
        fmt = ResponseFormat(type="json_schema", json_schema=schema)
        return checked(fmt, "response_format.json_schema.schema")
    raise ApiError(400, "response_format.type must be one of text, json_object, json_schema")


def stop_texts(value: Any, where: str) -> list[str]:
    """``stop`` as a string or a list of strings; empty strings mean nothing."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(400, f"{where} must be a string or a list of strings")
    stops = [s for s in items if s]
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"{where} takes at most {MAX_STOPS} stop texts")
    return stops


# Tools


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
