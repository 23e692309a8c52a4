"""Llama 3.1's native tool-calling format: declaring tools, and reading calls back.

Three call shapes, as Meta's prompt-format guide publishes them:

- built-in tools (``Environment: ipython`` + ``Tools: brave_search, wolfram_alpha`` in
  the system prompt): ``<|python_tag|>brave_search.call(query="...")<|eom_id|>``;
- custom tools declared as JSON functions, answered with
  ``{"name": ..., "parameters": {...}}``;
- custom tools in the function-tag style: ``<function=name>{...}</function>``.

A call counts as a call only when the model produced it: the ``<|python_tag|>``
marker is checked as a *token id*, never as text, so a user who gets the model
to echo the string ``<|python_tag|>`` does not trigger a tool.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

KNOWLEDGE_CUTOFF = "December 2023"

_FUNCTION_TAG = re.compile(r"<function=([A-Za-z_][\w.-]*)>(.*?)</function>", re.DOTALL)
_BUILTIN_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\.call\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class ToolSpec:
    """A custom tool as the model sees it (JSON-schema parameters)."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def declaration(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    style: str  # builtin | json | function_tag
    raw: str  # the call exactly as the model wrote it (kept for the history)


class ToolCallError(ValueError):
    """The model tried to call a tool but the call cannot be read."""


def system_prompt(
    base: str,
    builtin: list[str] | tuple[str, ...] = (),
    custom: list[ToolSpec] | tuple[ToolSpec, ...] = (),
    today: date | None = None,
) -> str:
    """The system prompt that declares tools, in Meta's published layout."""
    lines: list[str] = []
    if builtin or custom:
        lines.append("Environment: ipython")
    if builtin:
        lines.append("Tools: " + ", ".join(builtin))
    if lines:
        lines.append("")
    lines.append(f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}")
    lines.append(f"Today Date: {(today or date.today()).strftime('%d %b %Y')}")
    lines.append("")
    if custom:
        lines.append("You have access to the following functions:")
        lines.append("")
        for spec in custom:
            lines.append(f"Use the function '{spec.name}' to: {spec.description}")
            lines.append(json.dumps(spec.declaration()))
            lines.append("")
        lines += [
            "If you choose to call a function ONLY reply in the following format:",
            "<function=function_name>{parameters}</function>",
            "where parameters is a JSON dict with the function argument names as keys.",
            "",
            "Reminder:",
            "- Function calls MUST follow the specified format",
            "- Required parameters MUST be specified",
            "- Only call one function at a time",
            "- Put the entire function call reply on one line",
            "",
        ]
    lines.append(base)
    return "\n".join(lines)


def _builtin_arguments(text: str) -> dict[str, Any]:
    """Parse ``query="x", top_k=3`` as Python keyword arguments, literals only."""
    try:
        node = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as exc:
        raise ToolCallError(f"unreadable tool arguments: {exc.msg}") from None
    assert isinstance(node, ast.Call)
    if node.args:
        raise ToolCallError("built-in tool calls take keyword arguments only")
    try:
        return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except ValueError:
        raise ToolCallError("tool arguments must be literal values") from None


def parse_call(text: str, python_tag: bool, custom_names: set[str]) -> ToolCall | None:
    """Read a tool call from a complete model reply, or None for an ordinary answer.

    ``python_tag`` says whether the reply began with the ``<|python_tag|>``
    token (not text); ``custom_names`` are the custom tools on offer, so plain
    JSON in an answer is only a call when it names one of them.
    """
    body = text.strip()
    if python_tag:
        builtin = _BUILTIN_CALL.match(body)
        if builtin:
            return ToolCall(builtin[1], _builtin_arguments(builtin[2]), "builtin", body)
        # Llama 3.1 may also put a JSON custom call behind the tag.
        call = _json_call(body, custom_names)
        if call:
            return call
        return ToolCall("code_interpreter", {"code": body}, "builtin", body)
    tagged = _FUNCTION_TAG.search(body)
    if tagged:
        try:
            arguments = json.loads(tagged[2] or "{}")
        except json.JSONDecodeError as exc:
            raise ToolCallError(f"function arguments are not JSON: {exc.msg}") from None
        if not isinstance(arguments, dict):
            raise ToolCallError("function arguments must be a JSON object")
        return ToolCall(tagged[1], arguments, "function_tag", tagged[0])
    return _json_call(body, custom_names)


def _json_call(body: str, custom_names: set[str]) -> ToolCall | None:
    if not (body.startswith("{") and body.endswith("}")):
        return None
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    if name not in custom_names:
        return None
    arguments = data.get("parameters", data.get("arguments", {}))
    if not isinstance(arguments, dict):
        raise ToolCallError("function parameters must be a JSON object")
    return ToolCall(name, arguments, "json", body)


def result_content(result: Any) -> str:
    """What goes into the ``ipython`` turn: JSON for data, the text itself for text."""
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
