"""Tools an API caller declares (OpenAI ``tools``, Ollama ``tools``): offered, never run.

They are declared to the model in Llama 3.1's custom-tool format (the system prompt of
``worker/tools/llama31.py``); the model's call comes back to the caller as tool calls
instead of text, and the caller runs it and sends the result as a ``tool`` message (an
``ipython`` turn) on its next request. ``tool_choice`` "required" or a tool's name is
enforced by constrained decoding: the answer must be a JSON call to one of the tools
(or that tool) whose parameters match the tool's schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shared.contract import Message, ToolCallOut, Turn
from shared.structured import SchemaError, grammar, tool_call_format

from .engine import Completion
from .engines import GenerateOptions
from .refusals import UnsupportedRequest
from .tool_loop import PYTHON_TAG, _Relay
from .tools.llama31 import ToolCallError, ToolSpec, parse_call, system_prompt


class ClientTools:
    def __init__(self, turn: Turn) -> None:
        self.tools = list(turn.tools) if turn.tool_choice != "none" else []
        self.choice = turn.tool_choice
        self.names = {t.name for t in self.tools}
        self._relay: _Relay | None = None

    def __bool__(self) -> bool:
        return bool(self.tools)

    def declare(self, system: Message | None) -> Message | None:
        if not self.tools:
            return system
        specs = [ToolSpec(t.name, t.description, t.parameters) for t in self.tools]
        base = system.content if system else ""
        return Message(role="system", content=system_prompt(base, (), specs))

    def options(self) -> GenerateOptions:
        """``generate`` keywords: the call grammar when a call is required."""
        if not self.tools:
            return {}
        try:
            forced = tool_call_format(self.tools, self.choice)
            if forced is not None:
                grammar(forced)  # a parameters schema the grammar cannot enforce: refused
        except SchemaError as exc:
            raise UnsupportedRequest(str(exc)) from None
        return {"response_format": forced} if forced is not None else {}

    def relay(self, on_text: Callable[[str], None]) -> Callable[[str], None]:
        """Holds text while it may be a call (a call is never streamed as text)."""
        if not self.tools:
            return on_text
        self._relay = _Relay(on_text, may_call=True)
        return self._relay

    def finish(
        self, completion: Completion, tokenizer: Any
    ) -> tuple[Completion, list[ToolCallOut]]:
        """The model's calls (the completion then has no text), or none after the held
        text went out."""
        if not self.tools:
            return completion, []
        python_tag = tokenizer.get_vocab().get(PYTHON_TAG) if tokenizer is not None else None
        tagged = python_tag is not None and completion.token_ids[:1] == (python_tag,)
        text = completion.text.removeprefix(PYTHON_TAG) if tagged else completion.text
        try:
            call = parse_call(text, tagged, self.names)
        except ToolCallError:
            call = None
        if call is not None and call.name in self.names:
            return replace(completion, text=""), [
                ToolCallOut(name=call.name, arguments=call.arguments)
            ]
        if self._relay is not None:
            self._relay.flush()
        return completion, []
