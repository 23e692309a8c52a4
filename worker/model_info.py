"""The record ``/api/show`` reports for the model this worker serves."""

from __future__ import annotations

from typing import Any

from redis import Redis

from shared import model_info

from .engines import Engine


def _size(parameters: int) -> str:
    """Ollama's parameter_size style: 135M, 8.0B."""
    if parameters >= 1_000_000_000:
        return f"{parameters / 1e9:.1f}B"
    return f"{round(parameters / 1e6)}M"


def describe(engine: Engine) -> dict[str, Any]:
    settings = engine.settings
    capabilities = ["completion"]
    if getattr(engine, "tokenizer", None) is not None:
        capabilities.append("tools")  # declared in Llama 3.1's JSON tool-call format
    if getattr(engine, "vision", False):
        capabilities.append("vision")
    info: dict[str, Any] = {
        "name": engine.name,
        "capabilities": capabilities,
        "context_length": settings.context_tokens,  # what corral lets a turn use
        # What the API checks before queueing a constrained, seeded or shaped turn.
        "structured_outputs": engine.structured_outputs,
        "per_request_shaping": engine.per_request_shaping,
        "quantization_level": getattr(engine, "quantization", ""),
        "family": "",
        "parameter_size": "",
        "template": "",
        "model_info": {},
    }
    model: Any = getattr(engine, "model", None)
    config = getattr(model, "config", None)
    if config is not None and hasattr(model, "parameters"):
        text = config.get_text_config()
        family = str(getattr(config, "model_type", "") or "")
        parameters = sum(p.numel() for p in model.parameters())
        info["family"] = family
        info["parameter_size"] = _size(parameters)
        info["model_info"] = {
            "general.architecture": family,
            "general.basename": engine.name,
            "general.parameter_count": parameters,
            f"{family}.context_length": settings.context_tokens,
            f"{family}.trained_context_length": getattr(text, "max_position_embeddings", 0),
            f"{family}.embedding_length": getattr(text, "hidden_size", 0),
            f"{family}.block_count": getattr(text, "num_hidden_layers", 0),
            f"{family}.vocab_size": getattr(text, "vocab_size", 0),
        }
        info["template"] = getattr(engine.tokenizer, "chat_template", "") or ""
    return info


def publish(conn: Redis, engine: Engine) -> None:
    model_info.write(conn, engine.name, describe(engine))
