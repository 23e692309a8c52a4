"""The RQ job for embeddings: the served model's final hidden states, mean-pooled.

As Ollama does for chat models: each input is encoded (control-token strings stay
text), run through the model without its language-model head, and the last layer's
states are averaged over the tokens and scaled to unit length. The continuous-batching
loop is paused for the forward passes (the model is shared with it); they are short.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from rq import get_current_job

from shared.contract import CONTRACT_VERSION
from shared.embeddings import EmbedRequest

from .prompt import encode_piece
from .turn import current_engine

log = logging.getLogger(__name__)


def embed(engine: Any, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
    import torch

    limit = engine.settings.context_tokens
    encoded = []
    for i, text in enumerate(texts):
        ids = list(engine.tokenizer("")["input_ids"]) + encode_piece(
            engine.tokenizer, text, plain=True
        )
        if len(ids) > limit and not truncate:
            raise ValueError(f"input {i} is {len(ids)} tokens; the limit is {limit}")
        encoded.append(ids[:limit] or [engine.stop_ids[0]])
    base = engine.model.get_decoder() if hasattr(engine.model, "get_decoder") else engine.model
    vectors = []
    with engine.manager.pause(), torch.no_grad():
        for ids in encoded:
            tensor = torch.tensor([ids], device=engine.model.device)
            states = base(input_ids=tensor).last_hidden_state[0].float()
            pooled = states.mean(dim=0)
            vectors.append(torch.nn.functional.normalize(pooled, dim=0).tolist())
    return vectors, sum(len(ids) for ids in encoded)


def run_embed(payload: dict[str, Any]) -> dict[str, Any]:
    if get_current_job() is None:
        raise RuntimeError("run_embed must run as an RQ job")
    engine = current_engine()
    if not isinstance(payload, dict) or payload.get("v") != CONTRACT_VERSION:
        return {"error": "embedding request of an unsupported version; upgrade the older side"}
    try:
        request = EmbedRequest.model_validate(payload)
    except ValidationError as exc:
        return {"error": f"invalid embedding request: {exc.errors()[0].get('msg')}"}
    if getattr(engine, "tokenizer", None) is None or not hasattr(engine, "manager"):
        return {"error": f"the model {engine.name} does not provide embeddings here"}
    try:
        vectors, tokens = embed(engine, request.inputs, request.truncate)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"embeddings": vectors, "prompt_tokens": tokens, "model": engine.name}
