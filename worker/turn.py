"""The RQ job: answer one turn, streaming as it goes.

Runs inside a worker slot thread with the resident :class:`~worker.engine.Engine`
installed by :func:`install_engine`. Everything the user should see goes out
as :class:`~shared.contract.StreamEvent`; the return value (RQ's job result)
is the same final text and usage, for callers that poll instead of follow.

Bad payloads and over-long input are answered with an error event and *not*
raised: retrying them cannot help. Anything else is raised so RQ retries the
turn; the error event then says ``retrying`` and the next attempt starts
with a fresh ``started`` event, which tells readers to drop partial text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from redis import Redis
from rq import get_current_job

from shared.cancel import CancelPoller
from shared.contract import ContractError, Message, StreamEvent, Turn, Usage
from shared.history import ContextOverflow, ConversationStore, trim_to_budget
from shared.images import load_image
from shared.streams import publish

from .client_tools import ClientTools
from .decoding import engine_options, raw_prompt, with_format_note
from .engine import Engine
from .moderation import (
    BLOCKED_REPLY,
    UNREADABLE,
    Policy,
    Verdict,
    check_rules,
    current_policy,
    describe,
    guard_check,
)
from .prompt import Prompt, TemplateError, build_prompt
from .sanitize import clean_turn
from .stop_text import StopText
from .tool_loop import generate_with_tools
from .tools.builtin import ToolContext, select_tools
from .tools.llama31 import system_prompt as tools_system_prompt
from .turn_images import cannot_see, choose_images, image_names, prompt_images
from .vision import ImageError

log = logging.getLogger(__name__)

# Shown under an answer the job deadline cut short (chat platforms only: API callers
# get finish_reason "timeout" instead).
TIMEOUT_NOTE = "\n\n_(Answer cut short: it took longer than the time limit.)_"
CHAT_PLATFORMS = ("discord", "slack", "local")

_engine: Engine | None = None
_guard: Engine | None = None  # a Llama Guard-style classifier (CORRAL_GUARD_MODEL)


def install_engine(engine: Engine | None, guard: Engine | None = None) -> None:
    global _engine, _guard
    _engine, _guard = engine, guard


def current_engine() -> Engine:
    if _engine is None:
        raise RuntimeError("no model is loaded in this process (run it under `corral worker`)")
    return _engine


class _Events:
    """Numbers and publishes one job's events."""

    def __init__(self, conn: Redis, job_id: str, model: str) -> None:
        self.conn = conn
        self.job_id = job_id
        self.model = model
        self.seq = 0

    def send(self, kind: str, **fields: Any) -> None:
        self.seq += 1
        event = StreamEvent(job_id=self.job_id, seq=self.seq, kind=kind, model=self.model, **fields)
        publish(self.conn, event)


def _conversation(
    turn: Turn, store: ConversationStore, default_system: str
) -> tuple[Message | None, list[Message], Message]:
    """Split a turn into (system, history, newest user message)."""
    if turn.messages:
        msgs = list(turn.messages)
        system = msgs.pop(0) if msgs and msgs[0].role == "system" else None
        if not msgs or msgs[-1].role not in ("user", "ipython"):  # ipython: a tool's result
            raise ContractError("the last message must be from the user or a tool")
        return system, msgs[:-1], msgs[-1]
    history = store.load(turn.conversation_key) or list(turn.history or [])
    history = [m for m in history if m.role != "system"]
    system = Message(role="system", content=turn.system_prompt or default_system)
    images = [a.image_id for a in turn.attachments if a.image_id]
    return system, history, Message(role="user", content=turn.text, images=images)


def _with_tools(system: Message | None, tools: dict[str, Any]) -> str:
    """The system prompt that declares the tools, in Llama 3.1's format."""
    builtin = [name for name, tool in tools.items() if tool.builtin]
    custom = [tool.spec for tool in tools.values() if not tool.builtin]
    return tools_system_prompt(system.content if system else "", builtin, custom)


def _blocked(
    settings: Any, turn: Turn, messages: Sequence[Message], job_id: str, what: str
) -> bool:
    """Does the channel's moderation policy block the last of ``messages``?

    The rules file (if any) is checked first, then the classifier model (if any) sees
    the exchange. Logged, never explained to users.
    """
    if settings.moderation_rules is None and _guard is None:
        return False
    # With only a classifier, its every category is blocked everywhere.
    policy = current_policy(settings.moderation_rules) if settings.moderation_rules else Policy()
    verdict = check_rules(policy, messages[-1].content)
    if _guard is not None and not policy.blocks(turn.channel, verdict):
        try:
            verdict = guard_check(_guard, messages)
        except Exception:  # unchecked text is not let through (fail closed)
            log.exception("the moderation model failed on the %s of turn %s", what, job_id)
            verdict = Verdict(False, (UNREADABLE,))
    if not policy.blocks(turn.channel, verdict):
        return False
    where = f"{turn.platform}:{turn.channel}"
    log.warning(
        "moderation blocked the %s of turn %s in %s: %s", what, job_id, where, describe(verdict)
    )
    return True


def run_turn(payload: dict[str, Any]) -> dict[str, Any]:
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_turn must run as an RQ job")
    engine = current_engine()
    settings = engine.settings
    events = _Events(job.connection, job.id, engine.name)
    picked_up = time.time()
    try:
        turn = clean_turn(Turn.from_payload(payload))  # no lone surrogates or NUL bytes
        events.send("started")
        store = ConversationStore(job.connection, settings.history_ttl)
        system, history, newest = _conversation(turn, store, settings.system_prompt)
        decoding = engine_options(engine, turn)  # response format, seed
        client_tools = ClientTools(turn)  # declared by the API caller, never run here
        decoding.update(client_tools.options())
        system = with_format_note(client_tools.declare(system), decoding.get("response_format"))
        vision = getattr(engine, "vision", False)
        stored: dict[str, bytes] = {}
        note = ""  # said above the answer (a text-only model was sent images)
        if vision:  # the most recent images still stored; the rest are left out
            visible, stored = choose_images(
                [*history, newest], engine.max_images, lambda i: load_image(job.connection, i)
            )
            *history, newest = visible
        elif newest.images:
            if turn.platform == "api":
                raise ContractError(f"the model {engine.name} cannot see images")
            note, whole = cannot_see(engine.name, image_names(turn, newest), newest.content)
            if whole:
                events.send("done", text=note, finish_reason="stop")
                return {"text": note, "finish_reason": "stop"}
        # Tools need our own tokenizer: the loop continues the model's exact token sequence.
        # Not with images: Llama 3.2 Vision does not call tools in a prompt with an image.
        own_tokens = engine.tokenizer is not None and not stored
        tools = select_tools(settings.tools) if own_tokens and not client_tools else {}
        if tools:
            system = Message(role="system", content=_with_tools(system, tools))
        max_new = turn.sampling.max_new_tokens or settings.max_new_tokens
        budget = settings.context_tokens - max_new

        # Trimming measures candidate prompts by building them; the one that fits is the
        # prompt itself, so keep what was built rather than tokenizing it all again.
        built: dict[tuple[int, ...], Prompt] = {}

        def count(messages: Sequence[Message]) -> int:
            if engine.tokenizer is None:  # a remote engine (CORRAL_ENGINE=openai) estimates
                return engine.count_tokens(messages)
            candidate = build_prompt(engine.tokenizer, messages, images=vision)
            built[tuple(map(id, messages))] = candidate
            return len(candidate.input_ids)

        trimmed = trim_to_budget(system, history, newest, count, budget)
        prompt: Prompt | None = None  # a remote engine is sent the messages instead
        if engine.tokenizer is not None:
            kept = tuple(map(id, trimmed.messages))
            prompt = (
                built[kept]
                if kept in built
                else build_prompt(engine.tokenizer, trimmed.messages, images=vision)
            )
            if turn.raw_prompt:
                prompt = raw_prompt(engine.tokenizer, newest.content)
    except (ContractError, ContextOverflow, TemplateError, ImageError) as exc:
        log.info("turn %s refused: %s", job.id, exc)
        message = str(exc)
        if isinstance(exc, ContextOverflow):
            message = (
                f"Your message is too long for me ({exc.needed} tokens; the limit is {exc.budget})."
            )
        events.send("error", error=message, finish_reason="error")
        return {"error": message}
    except Exception:
        # Unexpected: RQ retries it, but readers must hear either way (never silence).
        retrying = bool(job.retries_left)
        log.exception("turn %s could not be prepared (retrying: %s)", job.id, retrying)
        events.send(
            "error",
            error="Sorry, something went wrong preparing this answer."
            + (" Retrying…" if retrying else ""),
            retrying=retrying,
            finish_reason="error",
        )
        raise

    cancelled = CancelPoller(job.connection, job.id)
    if cancelled():  # cancelled just as a worker picked it up: never run it
        events.send("done", text="", finish_reason="cancelled")
        return {"text": "", "finish_reason": "cancelled"}
    if _blocked(settings, turn, [newest], job.id, "question"):
        events.send("done", text=BLOCKED_REPLY, finish_reason="stop")
        return {"text": BLOCKED_REPLY, "finish_reason": "blocked"}

    traces: list[str] = []

    def show_step(step: Any) -> None:
        traces.append(step.trace() + "\n\n")
        events.send("delta", text=traces[-1])

    stops = StopText(turn.sampling.stop, lambda delta: events.send("delta", text=delta))
    options: dict[str, Any] = {
        "max_new_tokens": max_new,
        "temperature": turn.sampling.temperature,
        "top_p": turn.sampling.top_p,
        "on_text": client_tools.relay(stops.feed),
        "deadline": time.monotonic() + max(settings.job_timeout - 5, 1),
        "cancelled": stops.cancelled(cancelled),
        **decoding,
    }
    if vision:
        options["images"] = prompt_images(trimmed.messages, stored)
    if note:
        events.send("delta", text=note)
    try:
        if tools and prompt:
            context = ToolContext([*history, newest])
            completion, _ = generate_with_tools(
                engine, prompt.input_ids, tools, context, on_step=show_step, **options
            )
        else:
            completion = engine.generate(
                prompt.input_ids if prompt else trimmed.messages, **options
            )
        completion, calls = client_tools.finish(completion, engine.tokenizer)
        completion = stops.finish(completion)
    except Exception:
        retrying = bool(job.retries_left)
        log.exception("turn %s failed (retrying: %s)", job.id, retrying)
        events.send(
            "error",
            error="Sorry, the model failed while answering." + (" Retrying…" if retrying else ""),
            retrying=retrying,
            finish_reason="error",
        )
        raise

    answered = Message(role="assistant", content=completion.text)
    if _blocked(settings, turn, [newest, answered], job.id, "answer"):
        # The final text replaces what was streamed (chat platforms edit it away).
        completion = replace(completion, text=BLOCKED_REPLY)
        traces.clear()
    answer = Message(role="assistant", content=completion.text)
    if not turn.messages:
        kept = [m for m in trimmed.messages if m.role != "system"]
        store.save(turn.conversation_key, [*kept, answer])
    usage = Usage(
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        queue_ms=max(picked_up - turn.created_at, 0.0) * 1000,
        prompt_ms=completion.first_token_s * 1000,
        generate_ms=max(completion.total_s - completion.first_token_s, 0.0) * 1000,
        history_dropped=trimmed.dropped,
    )
    shown = note + "".join(traces) + completion.text  # history keeps only the answer itself
    if completion.finish_reason == "timeout" and turn.platform in CHAT_PLATFORMS:
        shown += TIMEOUT_NOTE  # the user sees why the answer stops there
        events.send("delta", text=TIMEOUT_NOTE)
    events.send(
        "done", text=shown, finish_reason=completion.finish_reason, usage=usage, tool_calls=calls
    )
    return {
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        **usage.model_dump(),
    }
