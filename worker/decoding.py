"""A turn's decoding requests (response format, seed, stop texts) in the worker's terms.

The grammar mask guarantees the shape of the answer, not its sense: a model that has
not been told what the JSON is for fills it with whatever keeps the grammar happy (a
135M model happily writes one string forever). So, like OpenAI's structured outputs,
the schema is also put in the system prompt; the mask then only has to keep a model
that is already trying on the rails.
"""

from __future__ import annotations

import json
from typing import Any

from shared.contract import Message, ResponseFormat, Turn
from shared.structured import SchemaError, grammar

from .engines import Engine, GenerateOptions
from .prompt import Prompt, encode_piece
from .refusals import UnsupportedRequest

JSON_OBJECT_NOTE = "Answer with a single JSON object and nothing else."
JSON_SCHEMA_NOTE = (
    "Answer with a single JSON object and nothing else. It must match this JSON schema:\n"
)


def format_note(fmt: ResponseFormat) -> str:
    if fmt.type == "json_object":
        return JSON_OBJECT_NOTE
    return JSON_SCHEMA_NOTE + json.dumps(fmt.json_schema, separators=(",", ":"))


def with_format_note(system: Message | None, fmt: ResponseFormat | None) -> Message | None:
    """The system message with the response format spelled out (or one that only says so)."""
    if fmt is None:
        return system
    note = format_note(fmt)
    text = f"{system.content}\n\n{note}" if system and system.content else note
    return Message(role="system", content=text)


def raw_prompt(tokenizer: Any, text: str) -> Prompt:
    """A raw prompt's ids: what the tokenizer puts first by itself (Llama's BOS), then
    the text, in which control-token strings stay plain text."""
    ids = list(tokenizer("")["input_ids"]) + encode_piece(tokenizer, text, plain=True)
    return Prompt(text, ids)


def engine_options(engine: Engine, turn: Turn) -> GenerateOptions:
    """The ``generate`` keywords for the turn's format, seed and shaping; UnsupportedRequest
    when the engine cannot honour them or the schema cannot be enforced."""
    sampling = turn.sampling
    if turn.raw_prompt and engine.tokenizer is None:
        raise UnsupportedRequest(
            f"the model {engine.name} takes chat messages only, not raw prompts"
        )
    options: GenerateOptions = {}
    if sampling.response_format is not None:
        try:
            grammar(sampling.response_format)
        except SchemaError as exc:
            raise UnsupportedRequest(str(exc)) from None
        options["response_format"] = sampling.response_format
    if sampling.seed is not None:
        options["seed"] = sampling.seed
    shaping = sampling.shaping()
    if shaping:
        options["shaping"] = shaping
    if options and not engine.structured_outputs:
        raise UnsupportedRequest(
            f"the model {engine.name} cannot take a response format, a seed, top_k, min_p "
            "or penalties in this worker"
        )
    if shaping and not engine.per_request_shaping:
        raise UnsupportedRequest(
            "top_k, min_p and penalties are not available on this worker (accelerator "
            "graphs are on)"
        )
    return options
