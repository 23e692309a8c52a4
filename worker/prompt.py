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

from .speakers import attribute_speakers

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


def encode_piece(tokenizer: Any, text: str, *, plain: bool) -> list[int]:
    """Token ids of one piece; ``plain`` text can contain no control tokens at all."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"])


@dataclass(frozen=True)
class Rendered:
    """A chat template's output with the messages' contents cut out."""

    controls: list[str]  # the template's own text before each message's content
    tail: str  # after the last message (e.g. the assistant header)


def _content(message: Message, mark: str, images: bool) -> str | list[dict[str, str]]:
    if not (images and message.images):
        return mark
    # The structured form vision templates read: the template itself places the image
    # token(s), so they land in the control text before the mark, never in user text.
    return [*({"type": "image"} for _ in message.images), {"type": "text", "text": mark}]


def render_with_marks(
    tokenizer: Any,
    messages: Sequence[Message],
    add_generation_prompt: bool = True,
    images: bool = False,
) -> Rendered:
    """``images``: render each message's images as the template's image tokens (vision models)."""
    nonce = secrets.token_hex(6)
    # Private-use code points: never produced by a template, vanishingly unlikely in chat.
    marks = [f"\ue000{nonce}:{i}\ue001" for i in range(len(messages))]
    templated = [
        {"role": m.role, "content": _content(m, mark, images)}
        for m, mark in zip(messages, marks, strict=True)
    ]
    try:
        rendered = tokenizer.apply_chat_template(
            templated, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # noqa: BLE001 - jinja raises anything a template author wrote
        raise TemplateError(f"the model's chat template rejected the conversation: {exc}") from None
    controls: list[str] = []
    pos = 0
    for message, mark in zip(messages, marks, strict=True):
        at = rendered.find(mark, pos)
        if at < 0:
            raise TemplateError(f"the chat template dropped a {message.role} message")
        controls.append(rendered[pos:at])
        pos = at + len(mark)
    return Rendered(controls, rendered[pos:])


def build_prompt(
    tokenizer: Any,
    messages: Sequence[Message],
    add_generation_prompt: bool = True,
    images: bool = False,
) -> Prompt:
    messages = attribute_speakers(messages)  # a shared thread: each message names its author
    rendered = render_with_marks(tokenizer, messages, add_generation_prompt, images)
    ids: list[int] = []
    text_parts: list[str] = []
    for control, message in zip(rendered.controls, messages, strict=True):
        # Templates like Llama 3's trim content; doing it here keeps ids and text in step.
        content = message.content.strip()
        ids += encode_piece(tokenizer, control, plain=False)
        ids += encode_piece(tokenizer, content, plain=True)
        text_parts += [control, content]
    ids += encode_piece(tokenizer, rendered.tail, plain=False)
    text_parts.append(rendered.tail)
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
