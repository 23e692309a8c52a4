"""The tool loop: generate, run the tool the model called, feed the result back, repeat.

Each step continues the *same* token sequence: the prompt, the model's own
tokens for its call (so ``<|python_tag|>`` and ``<|eom_id|>`` stay the control
tokens it produced), then an ``ipython`` turn rendered by the model's chat
template with the result as plain text, then a fresh assistant header.
Nothing the model wrote is re-tokenized from text, so no string can turn
into a control token on the way round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.contract import Message

from .prompt import TERMINATOR_STRINGS, encode_piece, render_with_marks
from .tools.builtin import Tool, ToolContext, run_tool
from .tools.llama31 import ToolCall, ToolCallError, parse_call, result_content

if TYPE_CHECKING:
    from .engine import Completion
    from .engines import Engine

log = logging.getLogger(__name__)

MAX_STEPS = 4  # tool calls per turn; then the model must answer
PYTHON_TAG = "<|python_tag|>"
CALL_PREFIXES = ("<function", "{", PYTHON_TAG)
DECIDE_AFTER = len(PYTHON_TAG)  # characters of output that tell prose from a call


@dataclass(frozen=True)
class ToolStep:
    call: ToolCall | None
    result: Any
    error: str = ""

    def trace(self) -> str:
        """One compact line for the thread, e.g. ``🔧 calculator(expression="2+2") → 4``."""
        if self.call is None:
            return f"🔧 unreadable tool call: {self.error}"
        args = ", ".join(
            f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in self.call.arguments.items()
        )
        shown = result_content(self.result)
        shown = shown if len(shown) <= 120 else shown[:117] + "…"
        return f"🔧 {self.call.name}({args}) → {shown}"


def tool_turn_ids(tokenizer: Any, content: str) -> list[int]:
    """Ids that close the model's call turn and add an ``ipython`` result turn + assistant header.

    Derived from the chat template itself: render ``[user, assistant, ipython]``
    and keep what follows the assistant's content.
    """
    messages = [
        Message(role="user", content="u"),
        Message(role="assistant", content="a"),
        Message(role="ipython", content=content),
    ]
    pieces = render_with_marks(tokenizer, messages, add_generation_prompt=True)
    # pieces: control text before each message's content, and the tail after the last.
    after_assistant = pieces.controls[2]
    for terminator in TERMINATOR_STRINGS:  # the model's own stop token already closed its turn
        if after_assistant.startswith(terminator):
            after_assistant = after_assistant[len(terminator) :]
            break
    return [
        *encode_piece(tokenizer, after_assistant, plain=False),
        *encode_piece(tokenizer, content.strip(), plain=True),
        *encode_piece(tokenizer, pieces.tail, plain=False),
    ]


class _Relay:
    """Streams the model's text unless it may be a tool call: a call is never shown raw."""

    def __init__(self, on_text: Callable[[str], None], may_call: bool) -> None:
        self.on_text = on_text
        self.open = not may_call
        self.held = ""

    def __call__(self, delta: str) -> None:
        if self.open:
            self.on_text(delta)
            return
        self.held += delta
        head = self.held.lstrip()
        if len(head) >= DECIDE_AFTER and not head.startswith(CALL_PREFIXES):
            self.open = True  # ordinary prose: show what was held and stream the rest
            self.flush()

    def flush(self) -> None:
        if self.held:
            self.on_text(self.held)
            self.held = ""


def generate_with_tools(
    engine: Engine,
    input_ids: list[int],
    tools: dict[str, Tool],
    context: ToolContext,
    on_text: Callable[[str], None],
    on_step: Callable[[ToolStep], None] | None = None,
    **generate_kwargs: Any,
) -> tuple[Completion, list[ToolStep]]:
    """Run the loop; returns the final completion and the tool steps taken."""
    tokenizer = engine.tokenizer
    python_tag = tokenizer.get_vocab().get(PYTHON_TAG)
    custom = {name for name, tool in tools.items() if not tool.builtin}
    ids = list(input_ids)
    steps: list[ToolStep] = []
    for step in range(MAX_STEPS + 1):
        relay = _Relay(on_text, may_call=step < MAX_STEPS)
        completion = engine.generate(ids, on_text=relay, **generate_kwargs)
        tagged = python_tag is not None and completion.token_ids[:1] == (python_tag,)
        text = completion.text.removeprefix(PYTHON_TAG) if tagged else completion.text
        try:
            call = parse_call(text, tagged, custom) if step < MAX_STEPS else None
        except ToolCallError as exc:
            steps.append(ToolStep(None, None, str(exc)))
            content = result_content({"error": str(exc)})
            if on_step:
                on_step(steps[-1])
        else:
            if call is None:
                relay.flush()
                return completion, steps
            result = run_tool(tools, call.name, call.arguments, context)
            steps.append(ToolStep(call, result))
            content = result_content(result)
            if on_step:
                on_step(steps[-1])
            log.info("tool %s called (step %d)", call.name, step + 1)
        ids = [*ids, *completion.token_ids, *tool_turn_ids(tokenizer, content)]
    raise AssertionError("unreachable: the last step never parses a call")
