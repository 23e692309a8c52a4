"""`corral render`: the prompt, ids and stop ids a conversation becomes.

Only the tokenizer is loaded (never the weights), so a user can check the
templating of an 8B model on a laptop. The conversation goes through the
worker's own :func:`~worker.model_input.chat_input` (default system prompt,
history trimmed to the context budget), so the ids are the worker's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.contract import Message
from shared.settings import Settings

from .model_input import chat_input
from .model_source import model_location
from .prompt import stop_token_ids


def load_tokenizer(model: str | None, settings: Settings) -> tuple[Any, Any]:
    """Return (tokenizer, generation_config or None) for a path, hub id or the configured model."""
    from transformers import AutoTokenizer, GenerationConfig

    if model and Path(model).is_file():
        from .llama3_tokenizer import from_tiktoken

        return from_tiktoken(Path(model)), None
    location = model or model_location(settings)
    kwargs: dict[str, Any] = {}
    if settings.gguf_file and not model:
        kwargs["gguf_file"] = settings.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    try:
        generation_config = GenerationConfig.from_pretrained(location)
    except OSError:
        generation_config = None
    return tokenizer, generation_config


def render(
    tokenizer: Any,
    messages: Sequence[Message],
    settings: Settings,
    generation_config: Any = None,
) -> tuple[dict[str, Any], int]:
    """The prompt, ids and stop ids, and how many history messages were left out to fit.

    Raises ContractError (last message not from the user), ContextOverflow, TemplateError.
    """
    trimmed, prompt = chat_input(tokenizer, messages, settings)
    result = {
        "prompt": prompt.text,
        "input_ids": prompt.input_ids,
        "stop_token_ids": stop_token_ids(tokenizer, generation_config),
    }
    return result, trimmed.dropped
