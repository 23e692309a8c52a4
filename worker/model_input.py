"""What the model is fed for a conversation: corral's system prompt and the history that fits.

The worker (``worker.turn``) and ``corral render`` both call these, so what render
prints is, id for id, what the worker hands the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shared.contract import ContractError, Message
from shared.history import Trimmed, trim_to_budget
from shared.settings import Settings

from .prompt import Prompt, build_prompt


def system_message(prompt: str | None, default: str) -> Message:
    """The system turn of a chat conversation: its own prompt, else ``CORRAL_SYSTEM_PROMPT``.

    Without one the model template's built-in prompt (SmolLM2's, Llama's date line)
    would speak for corral instead.
    """
    return Message(role="system", content=prompt or default)


def fit_to_context(
    tokenizer: Any,
    system: Message | None,
    history: Sequence[Message],
    newest: Message,
    budget: int,
    images: bool = False,
    count_tokens: Callable[[Sequence[Message]], int] | None = None,
) -> tuple[Trimmed, Prompt | None]:
    """Drop the oldest history until the prompt fits ``budget`` tokens; build that prompt.

    ``tokenizer`` None is a remote engine: ``count_tokens`` estimates and no ids are
    built (it is sent the messages). Raises ContextOverflow when even the system prompt
    and ``newest`` alone do not fit.
    """
    # Trimming measures candidate prompts by building them; the one that fits is the
    # prompt itself, so keep what was built rather than tokenizing it all again.
    built: dict[tuple[int, ...], Prompt] = {}

    def count(messages: Sequence[Message]) -> int:
        if tokenizer is None:
            assert count_tokens is not None, "a remote engine must estimate its own tokens"
            return count_tokens(messages)
        candidate = build_prompt(tokenizer, messages, images=images)
        built[tuple(map(id, messages))] = candidate
        return len(candidate.input_ids)

    trimmed = trim_to_budget(system, history, newest, count, budget)
    if tokenizer is None:
        return trimmed, None
    kept = tuple(map(id, trimmed.messages))
    prompt = built.get(kept) or build_prompt(tokenizer, trimmed.messages, images=images)
    return trimmed, prompt


def chat_input(
    tokenizer: Any, messages: Sequence[Message], settings: Settings
) -> tuple[Trimmed, Prompt]:
    """A whole conversation (as `corral render` reads it) as the worker would feed it.

    A leading system message is kept; without one, ``CORRAL_SYSTEM_PROMPT`` is used, as
    for a chat turn. The budget is the worker's: ``CORRAL_CONTEXT_TOKENS`` minus
    ``CORRAL_MAX_NEW_TOKENS``.
    """
    rest = list(messages)
    given = rest.pop(0).content if rest and rest[0].role == "system" else None
    if not rest or rest[-1].role != "user":
        raise ContractError("the last message must be from the user")
    system = system_message(given, settings.system_prompt)
    budget = settings.context_tokens - settings.max_new_tokens
    trimmed, prompt = fit_to_context(tokenizer, system, rest[:-1], rest[-1], budget)
    assert prompt is not None  # a tokenizer always builds one
    return trimmed, prompt
