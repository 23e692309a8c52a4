"""Choosing the engine the worker runs turns on (``CORRAL_ENGINE``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:
    from .engine import Engine
    from .model_source import Loaded
    from .openai_engine import OpenAIEngine
    from .vision import VisionEngine


def build_engine(
    settings: Settings, loaded: Loaded | None = None
) -> Engine | OpenAIEngine | VisionEngine:
    """``transformers``: the model in this process (``loaded``, or loaded now from the
    settings); ``openai``: an OpenAI-compatible server at ``CORRAL_ENGINE_URL``."""
    if settings.engine == "openai":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(settings)
    from .engine import Engine
    from .model_source import load

    loaded = loaded if loaded is not None else load(settings)
    if loaded.processor is not None:
        from .vision import VisionEngine

        return VisionEngine(loaded, settings)
    return Engine(loaded, settings)


def build_guard(settings: Settings) -> Engine | None:
    """The moderation classifier (``CORRAL_GUARD_MODEL``) in this process, or None."""
    if not settings.guard_model:
        return None
    from .engine import Engine
    from .model_source import load

    guard = settings.model_copy(
        update={"model": settings.guard_model, "gguf_file": "", "model_name": ""}
    )
    return Engine(load(guard), guard)
