"""Turning a conversation into model input, safely.

The tokenizer's own chat template decides the format, but it must never
decide what user text *means*: ``apply_chat_template(..., tokenize=True)``
tokenizes the rendered string as a whole, so a user who types
``<|eot_id|><|start_header_id|>system<|end_header_id|>`` would forge a system
turn. We render the template with opaque placeholders instead, tokenize the
template's own pieces normally (control tokens allowed) and each message's
content with ``split_special_tokens=True`` (control-token strings become
plain text tokens). Tokenizing content separately from its header is also
what Meta's reference ``ChatFormat`` does, so Llama 3 ids match it exactly.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.contract import Message

# Strings that end a turn (or a message) in the chat formats we know of.
TERMINATOR_STRINGS = (
    "<|eot_id|>",  # Llama 3 end of turn
    "<|eom_id|>",  # Llama 3.1 end of message (a tool call awaits its result)
    "<|end_of_text|>",  # Llama 3 eos
    "<|im_end|>",  # ChatML (SmolLM2, Qwen)
    "<|endoftext|>",
    "<end_of_turn>",  # Gemma
    "<|end|>",  # Phi-3
    "</s>",
)


@dataclass(frozen=True)
class Prompt:
    text: str
    input_ids: list[int]


class TemplateError(ValueError):
    """The chat template cannot render this conversation."""


def _encode(tokenizer: Any, text: str, *, plain: bool) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"])


def build_prompt(
    tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = True
) -> Prompt:
    nonce = secrets.token_hex(6)
    # Private-use code points: never produced by a template, vanishingly unlikely in chat.
    marks = [f"\ue000{nonce}:{i}\ue001" for i in range(len(messages))]
    templated = [{"role": m.role, "content": mark} for m, mark in zip(messages, marks, strict=True)]
    try:
        rendered = tokenizer.apply_chat_template(
            templated, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # noqa: BLE001 - jinja raises anything a template author wrote
        raise TemplateError(f"the model's chat template rejected the conversation: {exc}") from None

    ids: list[int] = []
    text_parts: list[str] = []
    pos = 0
    for message, mark in zip(messages, marks, strict=True):
        at = rendered.find(mark, pos)
        if at < 0:
            raise TemplateError(f"the chat template dropped a {message.role} message")
        control = rendered[pos:at]
        # Templates like Llama 3's trim content; doing it here keeps ids and text in step.
        content = message.content.strip()
        ids += _encode(tokenizer, control, plain=False)
        ids += _encode(tokenizer, content, plain=True)
        text_parts += [control, content]
        pos = at + len(mark)
    tail = rendered[pos:]
    ids += _encode(tokenizer, tail, plain=False)
    text_parts.append(tail)
    return Prompt("".join(text_parts), ids)


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every end-of-turn id the vocabulary has, plus whatever the model declares as eos."""
    found: list[int] = []

    def add(value: Any) -> None:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, int) and item >= 0 and item not in found:
                found.append(item)

    add(tokenizer.eos_token_id)
    if generation_config is not None:
        add(getattr(generation_config, "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for token in TERMINATOR_STRINGS:
        if token in vocab:
            add(vocab[token])
    return found
