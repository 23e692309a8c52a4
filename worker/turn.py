"""The RQ job: answer one turn, streaming as it goes.

Runs inside a worker slot thread with the resident :class:`~worker.engines.Engine`
installed by :func:`install_engine`. Everything the user should see goes out
as :class:`~shared.contract.StreamEvent`; the return value (RQ's job result)
is the same final text and usage, for callers that poll instead of follow.

Bad payloads and over-long input are answered with an error event and *not*
raised: retrying them cannot help. Anything else is raised so RQ retries the
turn; the error event then says ``retrying`` and the next attempt starts
with a fresh ``started`` event, which tells readers to drop partial text, or
to keep the first ``resume_from`` characters when it continues an answer its
worker died in the middle of (worker/resume.py).

Events go out as the slot's attempt (worker/attempt.py): once another worker
has taken the turn over, this one's events are refused and it stops as if
cancelled, saving no history.

:func:`run_turn` runs the stages in order, each a function of a :class:`TurnJob`
that tests call without RQ: :func:`prepare` (the conversation, images, tools, and
trimming to the context budget), :func:`screen` (a cancelled or blocked question
never reaches the model), :func:`generate`, and :func:`finish` (moderate the answer,
record history and usage, send the final event).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redis import Redis
from rq import get_current_job

from shared.cancel import CancelPoller
from shared.contract import (
    ContractError,
    EventKind,
    Message,
    StreamEvent,
    ToolCallOut,
    Turn,
    Usage,
)
from shared.history import ContextOverflow, ConversationStore, Trimmed
from shared.images import load_image
from shared.streams import final_event

from .attempt import current_attempt
from .client_tools import ClientTools
from .decoding import engine_options, raw_prompt, with_format_note
from .engine import Completion
from .engines import Engine, GenerateOptions
from .model_input import fit_to_context, system_message
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
from .prompt import Prompt, TemplateError
from .refusals import ImagesNotSupported, InvalidConversation, refusal_code
from .resume import Resume
from .sanitize import clean_turn
from .stop_text import StopText
from .tool_loop import ToolStep, generate_with_tools
from .tools.builtin import Tool, ToolContext, select_tools
from .tools.llama31 import system_prompt as tools_system_prompt
from .turn_images import cannot_see, choose_images, image_names, prompt_images
from .vision import ImageError

log = logging.getLogger(__name__)

# Shown under an answer the job deadline cut short (chat platforms only: API callers
# get finish_reason "timeout" instead).
TIMEOUT_NOTE = "\n\n_(Answer cut short: it took longer than the time limit.)_"
CHAT_PLATFORMS = ("discord", "slack", "local")
# Turns that are answered with an error rather than retried: retrying cannot help.
REFUSALS = (ContractError, ContextOverflow, TemplateError, ImageError)

_engine: Engine | None = None
_guard: Engine | None = None  # a Llama Guard-style classifier (CORRAL_GUARD_MODEL)


def install_engine(engine: Engine | None, guard: Engine | None = None) -> None:
    global _engine, _guard
    _engine, _guard = engine, guard


def current_engine() -> Engine:
    if _engine is None:
        raise RuntimeError("no model is loaded in this process (run it under `corral worker`)")
    return _engine


class Events:
    """Numbers and publishes one job's events, as the slot's attempt (worker/attempt.py)."""

    def __init__(self, conn: Redis, job_id: str, model: str) -> None:
        self.attempt = current_attempt(conn, job_id)
        self.job_id = job_id
        self.model = model
        self.seq = 0

    def send(self, kind: EventKind, **fields: Any) -> None:
        self.seq += 1
        event = StreamEvent(job_id=self.job_id, seq=self.seq, kind=kind, model=self.model, **fields)
        self.attempt.publish(event)  # refused (and the attempt marked lost) once it is stale


@dataclass
class TurnJob:
    """One run of one turn: what every stage needs."""

    id: str
    conn: Redis
    engine: Engine
    guard: Engine | None = None  # a moderation classifier
    picked_up: float = field(default_factory=time.time)
    resume: Resume = field(default_factory=Resume)  # the answer text a retry continues
    events: Events = field(init=False)

    def __post_init__(self) -> None:
        self.events = Events(self.conn, self.id, self.engine.name)


@dataclass(frozen=True)
class Reply:
    """An answer given without the model: the whole answer, recorded nowhere."""

    text: str
    finish_reason: str  # in the final event
    outcome: str = ""  # the job result's finish_reason, where it differs ("blocked")

    def send(self, events: Events) -> dict[str, Any]:
        events.send("done", text=self.text, finish_reason=self.finish_reason)
        return {"text": self.text, "finish_reason": self.outcome or self.finish_reason}


@dataclass(frozen=True)
class Prepared:
    """A turn ready for the model."""

    turn: Turn
    history: list[Message]  # before the newest message, untrimmed (what tools may search)
    newest: Message
    trimmed: Trimmed  # what the model is shown: system, the history that fits, newest
    prompt: Prompt | None  # its token ids; None for an engine that is sent the messages
    images: list[bytes]  # the trimmed messages' images, in prompt order (vision engines)
    tools: dict[str, Tool]
    client_tools: ClientTools  # declared by the API caller: offered, never run here
    decoding: GenerateOptions  # response format, seed, shaping (worker/decoding.py)
    note: str  # said above the answer (a text-only model was sent images)
    max_new_tokens: int


@dataclass(frozen=True)
class Answered:
    completion: Completion
    traces: list[str]  # the tool steps, as streamed above the answer
    # The calls of caller-declared tools (the completion then has no text).
    tool_calls: list[ToolCallOut] = field(default_factory=list)


def _conversation(
    turn: Turn, store: ConversationStore, default_system: str
) -> tuple[Message | None, list[Message], Message]:
    """Split a turn into (system, history, newest user message)."""
    if turn.messages:
        msgs = list(turn.messages)
        system = msgs.pop(0) if msgs and msgs[0].role == "system" else None
        if not msgs or msgs[-1].role not in ("user", "ipython"):  # ipython: a tool's result
            raise InvalidConversation("the last message must be from the user or a tool")
        return system, msgs[:-1], msgs[-1]
    history = store.load(turn.conversation_key) or list(turn.history or [])
    history = [m for m in history if m.role != "system"]
    system = system_message(turn.system_prompt, default_system)
    images = [a.image_id for a in turn.attachments if a.image_id]
    newest = Message(role="user", content=turn.text, images=images, author=turn.author)
    return system, history, newest


def _with_tools(system: Message | None, tools: dict[str, Tool]) -> str:
    """The system prompt that declares the tools, in Llama 3.1's format."""
    builtin = [name for name, tool in tools.items() if tool.builtin]
    custom = [tool.spec for tool in tools.values() if not tool.builtin]
    return tools_system_prompt(system.content if system else "", builtin, custom)


def _fit(
    engine: Engine, system: Message | None, history: list[Message], newest: Message, budget: int
) -> tuple[Trimmed, Prompt | None]:
    """Trim the history to ``budget`` prompt tokens; with a tokenizer, also build the prompt.

    The same function ``corral render`` calls, so render shows what the engine is fed.
    """

    # Looked up only when asked: a remote engine (no tokenizer) estimates its own tokens.
    def count(messages: Sequence[Message]) -> int:
        return engine.count_tokens(messages)

    return fit_to_context(engine.tokenizer, system, history, newest, budget, engine.vision, count)


def prepare(job: TurnJob, turn: Turn) -> Prepared | Reply:
    """What the model will be shown: the turn's messages, or its conversation's stored
    history and the new message; the images it can see; the tools it may call; all
    trimmed to the context budget. A :class:`Reply` when there is nothing to ask it.

    Raises one of :data:`REFUSALS` for a turn that cannot be answered.
    """
    engine, settings = job.engine, job.engine.settings
    store = ConversationStore(job.conn, settings.history_ttl)
    system, history, newest = _conversation(turn, store, settings.system_prompt)
    decoding = engine_options(engine, turn)  # response format, seed, shaping
    client_tools = ClientTools(turn)
    decoding.update(client_tools.options())
    system = with_format_note(client_tools.declare(system), decoding.get("response_format"))
    stored: dict[str, bytes] = {}
    note = ""
    if engine.vision:  # the most recent images still stored; the rest are left out
        visible, stored = choose_images(
            [*history, newest], engine.max_images, lambda i: load_image(job.conn, i)
        )
        *history, newest = visible
    elif newest.images:
        if turn.platform == "api":
            raise ImagesNotSupported(f"the model {engine.name} cannot see images")
        note, whole = cannot_see(engine.name, image_names(turn, newest), newest.content)
        if whole:
            return Reply(note, "stop")
    # Tools need our own tokenizer: the loop continues the model's exact token sequence.
    # Not with images: Llama 3.2 Vision does not call tools in a prompt with an image.
    own_tokens = engine.tokenizer is not None and not stored
    tools = select_tools(settings.tools) if own_tokens and not client_tools else {}
    if tools:
        system = Message(role="system", content=_with_tools(system, tools))
    max_new = turn.sampling.max_new_tokens or settings.max_new_tokens
    trimmed, prompt = _fit(engine, system, history, newest, settings.context_tokens - max_new)
    if turn.raw_prompt and engine.tokenizer is not None:  # the text as is, no chat template
        prompt = raw_prompt(engine.tokenizer, newest.content)
    images = prompt_images(trimmed.messages, stored) if engine.vision else []
    return Prepared(
        turn,
        history,
        newest,
        trimmed,
        prompt,
        images,
        tools,
        client_tools,
        decoding,
        note,
        max_new,
    )


def _blocked(job: TurnJob, turn: Turn, messages: Sequence[Message], what: str) -> bool:
    """Does the channel's moderation policy block the last of ``messages``?

    The rules file (if any) is checked first, then the classifier model (if any) sees
    the exchange. Logged, never explained to users.
    """
    rules = job.engine.settings.moderation_rules
    if rules is None and job.guard is None:
        return False
    # With only a classifier, its every category is blocked everywhere.
    policy = current_policy(rules) if rules else Policy()
    verdict = check_rules(policy, messages[-1].content)
    if job.guard is not None and not policy.blocks(turn.channel, verdict):
        try:
            verdict = guard_check(job.guard, messages)
        except Exception:  # unchecked text is not let through (fail closed)
            log.exception("the moderation model failed on the %s of turn %s", what, job.id)
            verdict = Verdict(False, (UNREADABLE,))
    if not policy.blocks(turn.channel, verdict):
        return False
    where = f"{turn.platform}:{turn.channel}"
    log.warning(
        "moderation blocked the %s of turn %s in %s: %s", what, job.id, where, describe(verdict)
    )
    return True


def screen(job: TurnJob, ready: Prepared, cancelled: Callable[[], bool]) -> Reply | None:
    """The reply to a question the model must not see, or None to go ahead."""
    if cancelled():  # cancelled just as a worker picked it up: never run it
        return Reply("", "cancelled")
    if _blocked(job, ready.turn, [ready.newest], "question"):
        return Reply(BLOCKED_REPLY, "stop", outcome="blocked")
    return None


def generate(job: TurnJob, ready: Prepared, cancelled: Callable[[], bool]) -> Answered:
    """Run the model (through the tool loop when tools are on), streaming as it goes."""
    engine, events, resume = job.engine, job.events, job.resume
    traces: list[str] = []

    def stream(delta: str) -> None:
        events.send("delta", text=delta)

    # Stop texts end the answer (held back while they may be starting); a caller's tool
    # call is held back too, and comes back as tool_calls instead of text.
    stops = StopText(ready.turn.sampling.stop, stream)
    on_text = ready.client_tools.relay(stops.feed)

    def show_step(step: ToolStep) -> None:
        traces.append(step.trace() + "\n\n")
        events.send("delta", text=traces[-1])

    options: GenerateOptions = {
        "max_new_tokens": resume.max_new_tokens(ready.max_new_tokens, ready.note),
        "temperature": ready.turn.sampling.temperature,
        "top_p": ready.turn.sampling.top_p,
        "deadline": time.monotonic() + max(engine.settings.job_timeout - 5, 1),
        "cancelled": stops.cancelled(cancelled),
        **ready.decoding,
    }
    if engine.vision:
        options["images"] = ready.images
    if ready.note and not resume.text:  # a resumed answer already shows it
        events.send("delta", text=ready.note)
    if ready.tools and ready.prompt:
        context = ToolContext([*ready.history, ready.newest])
        completion, _ = generate_with_tools(
            engine, ready.prompt.input_ids, ready.tools, context, on_text, show_step, **options
        )
    else:
        prompt = (
            resume.input_ids(ready.prompt.input_ids, ready.note)
            if ready.prompt
            else ready.trimmed.messages
        )
        completion = engine.generate(prompt, on_text=on_text, **options)
        completion = resume.completed(completion, ready.note)
    completion, calls = ready.client_tools.finish(completion, engine.tokenizer)
    return Answered(stops.finish(completion), traces, calls)


def finish(job: TurnJob, ready: Prepared, answered: Answered) -> dict[str, Any]:
    """Moderate the answer, keep the exchange in the conversation's history, and send
    the final event with usage; returns the job's result."""
    turn, completion, traces = ready.turn, answered.completion, answered.traces
    reply = Message(role="assistant", content=completion.text)
    if _blocked(job, turn, [ready.newest, reply], "answer"):
        # The final text replaces what was streamed (chat platforms edit it away).
        completion = replace(completion, text=BLOCKED_REPLY)
        traces = []
    # An API call brings its own history; a chat's is kept here, unless this attempt is
    # stale (another worker took the turn over: its answer is the one kept).
    if not turn.messages and job.events.attempt.check():
        kept = [m for m in ready.trimmed.messages if m.role != "system"]
        answer = Message(role="assistant", content=completion.text)
        store = ConversationStore(job.conn, job.engine.settings.history_ttl)
        store.save(turn.conversation_key, [*kept, answer])
    usage = Usage(
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        queue_ms=max(job.picked_up - turn.created_at, 0.0) * 1000,
        prompt_ms=completion.first_token_s * 1000,
        generate_ms=max(completion.total_s - completion.first_token_s, 0.0) * 1000,
        history_dropped=ready.trimmed.dropped,
    )
    shown = ready.note + "".join(traces) + completion.text  # history keeps only the answer
    if completion.finish_reason == "timeout" and turn.platform in CHAT_PLATFORMS:
        shown += TIMEOUT_NOTE  # the user sees why the answer stops there
        job.events.send("delta", text=TIMEOUT_NOTE)
    job.events.send(
        "done",
        text=shown,
        finish_reason=completion.finish_reason,
        usage=usage,
        tool_calls=answered.tool_calls,
    )
    return {
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        **usage.model_dump(),
    }


def _refused(job: TurnJob, exc: Exception) -> dict[str, Any]:
    log.info("turn %s refused: %s", job.id, exc)
    message = str(exc)
    if isinstance(exc, ContextOverflow):
        message = (
            f"Your message is too long for me ({exc.needed} tokens; the limit is {exc.budget})."
        )
    job.events.send("error", error=message, finish_reason="error", code=refusal_code(exc))
    return {"error": message}


def _failed(job: TurnJob, retrying: bool, what: str, message: str) -> None:
    """Log the exception being handled; RQ retries the turn, but readers must hear
    either way (never silence)."""
    log.exception("turn %s %s (retrying: %s)", job.id, what, retrying)
    job.events.send(
        "error",
        error=message + (" Retrying…" if retrying else ""),
        retrying=retrying,
        finish_reason="error",
    )


def run_turn(payload: dict[str, Any]) -> dict[str, Any]:
    rq_job = get_current_job()
    if rq_job is None:
        raise RuntimeError("run_turn must run as an RQ job")
    job = TurnJob(rq_job.id, rq_job.connection, current_engine(), _guard)
    over = final_event(job.conn, job.id)
    if over is not None:
        # An earlier attempt sent the final event and died before RQ recorded the end;
        # the keeper re-queued it. Running it again would answer twice.
        log.warning("turn %s was already over (%s); not running it again", job.id, over.kind)
        return {"text": over.text, "finish_reason": over.finish_reason, "again": True}
    try:
        turn = clean_turn(Turn.from_payload(payload))  # no lone surrogates or NUL bytes
        job.resume = Resume.read(job.conn, job.id, job.engine, turn)  # a retry continues the text
        job.events.send("started", resume_from=job.resume.offset)
        ready = prepare(job, turn)
    except REFUSALS as exc:
        return _refused(job, exc)
    except Exception:
        retrying = bool(rq_job.retries_left)
        _failed(
            job,
            retrying,
            "could not be prepared",
            "Sorry, something went wrong preparing this answer.",
        )
        raise
    if isinstance(ready, Reply):
        return ready.send(job.events)
    # A lost attempt (another worker took the turn over) stops like a cancelled one.
    cancelled = job.events.attempt.stops(CancelPoller(job.conn, job.id))
    early = screen(job, ready, cancelled)
    if early is not None:
        return early.send(job.events)
    try:
        answered = generate(job, ready, cancelled)
    except Exception:
        retrying = bool(rq_job.retries_left)
        _failed(job, retrying, "failed", "Sorry, the model failed while answering.")
        raise
    return finish(job, ready, answered)
