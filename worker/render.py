"""`corral render`: the prompt, ids and stop ids a conversation becomes.

Only the tokenizer is loaded (never the weights), so a user can check the
templating of an 8B model on a laptop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.contract import Message
from shared.settings import Settings

from .model_source import model_location
from .prompt import build_prompt, stop_token_ids


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
    tokenizer: Any, messages: Sequence[Message], generation_config: Any = None
) -> dict[str, Any]:
    prompt = build_prompt(tokenizer, messages)
    return {
        "prompt": prompt.text,
        "input_ids": prompt.input_ids,
        "stop_token_ids": stop_token_ids(tokenizer, generation_config),
    }
