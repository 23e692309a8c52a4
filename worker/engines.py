"""What the worker needs from a model (:class:`Engine`), and choosing one (``CORRAL_ENGINE``).

Three engines implement it: :class:`~worker.engine.TransformersEngine` (the model in
this process, continuous batching), :class:`~worker.vision.VisionEngine` (a Llama 3.2
Vision model in this process) and :class:`~worker.openai_engine.OpenAIEngine` (an
OpenAI-compatible server). Everything that holds an engine holds it as an
:class:`Engine`, so mypy reports an engine whose signature drifts from the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from shared.contract import Message, ResponseFormat
from shared.settings import Settings

if TYPE_CHECKING:
    from .engine import Completion
    from .model_source import Loaded


class GenerateOptions(TypedDict, total=False):
    """:meth:`Engine.generate`'s keyword arguments but ``on_text``, to pass on as a whole
    (the tool loop puts its own ``on_text`` between the model and the stream)."""

    images: Sequence[bytes]
    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None
    deadline: float | None
    cancelled: Callable[[], bool] | None
    response_format: ResponseFormat | None
    seed: int | None
    shaping: dict[str, Any] | None


class Engine(Protocol):
    """A model that answers turns.

    ``tokenizer`` is the model's own tokenizer when the prompt is built here (by
    :func:`worker.prompt.build_prompt`, so user text never becomes control tokens):
    ``generate`` then takes token ids. It is None for an engine whose server renders
    the prompt: ``generate`` then takes the messages, and ``count_tokens`` estimates.
    """

    name: str  # the model's name, as users and the API see it
    settings: Settings
    device: str  # cpu | cuda | remote
    quantization: str
    tokenizer: Any
    vision: bool  # prompts may carry images (``generate(images=...)``)
    max_images: int  # at most this many images in one prompt
    # Takes ``response_format`` and ``seed`` (and ``shaping`` when per_request_shaping);
    # worker/decoding.py refuses a turn that asks an engine without them.
    structured_outputs: bool
    per_request_shaping: bool  # top-k, min-p, penalties per request

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """How many prompt tokens ``messages`` take (for trimming history)."""
        ...

    def generate(
        self,
        prompt: Sequence[int] | Sequence[Message],
        /,
        *,
        images: Sequence[bytes] = (),
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        on_text: Callable[[str], None] | None = None,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        response_format: ResponseFormat | None = None,
        seed: int | None = None,
        shaping: dict[str, Any] | None = None,
    ) -> Completion:
        """Generate one reply, calling ``on_text`` with each new piece of text.

        ``images`` are the prompt's images in prompt order (vision engines only).
        ``deadline`` (monotonic seconds) ends the reply early with what exists so far
        (finish reason ``timeout``); ``cancelled`` is polled for the same purpose.
        ``response_format`` constrains the answer to JSON (or a JSON schema), ``seed``
        makes the draw repeatable, ``shaping`` holds top-k, min-p and the penalties.
        """
        ...

    def close(self) -> None: ...


def prompt_token_ids(prompt: Sequence[int] | Sequence[Message]) -> list[int]:
    """The prompt of an engine that tokenizes here, which is never sent messages."""
    ids = [token for token in prompt if not isinstance(token, Message)]
    if len(ids) != len(prompt):
        raise TypeError("this engine takes token ids, not messages")
    return ids


def build_engine(settings: Settings, loaded: Loaded | None = None) -> Engine:
    """``transformers``: the model in this process (``loaded``, or loaded now from the
    settings); ``openai``: an OpenAI-compatible server at ``CORRAL_ENGINE_URL``."""
    if settings.engine == "openai":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(settings)
    from .engine import TransformersEngine
    from .model_source import load

    loaded = loaded if loaded is not None else load(settings)
    if loaded.processor is not None:
        from .vision import VisionEngine

        return VisionEngine(loaded, settings)
    return TransformersEngine(loaded, settings)


def build_guard(settings: Settings) -> Engine | None:
    """The moderation classifier (``CORRAL_GUARD_MODEL``) in this process, or None."""
    if not settings.guard_model:
        return None
    from .engine import TransformersEngine
    from .model_source import load

    guard = settings.model_copy(
        update={"model": settings.guard_model, "gguf_file": "", "model_name": ""}
    )
    return TransformersEngine(load(guard), guard)
