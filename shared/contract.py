"""The data contract between bots and workers.

Bots enqueue a :class:`Turn` (as a plain dict, so RQ never pickles our classes
and a worker of another release can still read it); workers publish
:class:`StreamEvent` objects while they answer. Both carry a version number:
a worker refuses a payload of a version it does not speak with a clear error
instead of guessing.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

# What this build writes. Version 2 added the optional ``author`` of messages and
# turns; a version 1 payload is still read (it simply names no authors). Stream events
# gained optional fields without a new version (``code``, ``attempt``, ``resume_from``):
# an event without them reads as before, and a reader that does not know them ignores
# them (it then shows a resumed answer's continuation only until its ``done``).
CONTRACT_VERSION = 2
READABLE_VERSIONS = (1, 2)

Platform = Literal["discord", "slack", "local", "api"]
Role = Literal["system", "user", "assistant", "ipython"]  # ipython: a tool result (Llama 3.1)


class ContractError(ValueError):
    """A payload that does not follow this contract (wrong version or shape)."""


# What a bot sends as the text of a message that is only images (the worker says
# just "can't see images" to it when its model is text-only).
IMAGE_ONLY_TEXT = "Describe the attached image."


class Author(BaseModel):
    """Who wrote a user message, as the platform names them.

    ``id`` is stable (a Discord or Slack user id); ``name`` is what people see and
    is user-controlled, so the worker cleans it before the model reads it.
    """

    id: str
    name: str = ""


class Message(BaseModel):
    role: Role
    content: str
    # Ids of images the user attached (kept in Redis by shared.images), so a follow-up
    # question can still show the model the picture while it is kept.
    images: list[str] = Field(default_factory=list)
    # Set on user messages of platforms where several people share a conversation.
    author: Author | None = None


def same_author(a: Message, b: Message) -> bool:
    """Written by the same person (by stable id: a display name may be known for one only)."""
    return (a.author.id if a.author else None) == (b.author.id if b.author else None)


class Attachment(BaseModel):
    name: str
    url: str = ""
    content_type: str = ""
    size: int = 0
    image_id: str = ""  # set for a checked image the bot stored with shared.images


class ReplyTarget(BaseModel):
    """Where the answer goes: a channel, optionally a thread and a message to edit."""

    channel: str
    thread: str = ""
    message_id: str = ""


class ResponseFormat(BaseModel):
    """The shape the answer must have; the worker enforces it token by token.

    ``json_object``: any JSON object (Ollama ``format: "json"``, OpenAI ``json_object``);
    ``json_schema``: an instance of ``json_schema`` (Ollama ``format: {schema}``, OpenAI
    ``json_schema``). ``shared.structured`` checks the schema is one it can enforce.
    """

    type: Literal["json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


MAX_STOPS = 16


class Sampling(BaseModel):
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1, le=32768)
    # Added later, each optional with a default, so payloads without them stay valid.
    # Generation ends at the first of these texts, which is left out of the answer.
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOPS)
    # Same seed, prompt and settings: the same answer when the turn runs alone.
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    response_format: ResponseFormat | None = None
    # Per-request shaping of the next-token distribution (worker/constrained.py).
    top_k: int | None = Field(default=None, ge=1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)  # Ollama repeat_penalty
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)  # OpenAI's
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    penalty_window: int | None = Field(default=None, ge=0)  # last N tokens penalised; 0/None: all

    def shaping(self) -> dict[str, Any]:
        """The shaping fields that are set and not the identity."""
        identity = {
            "top_k": None,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
        }
        chosen = {k: getattr(self, k) for k in identity if getattr(self, k) is not None}
        active = {k: v for k, v in chosen.items() if v != identity[k]}
        if active and self.penalty_window:
            active["penalty_window"] = self.penalty_window
        return active


class FunctionSpec(BaseModel):
    """A tool the API caller declares; the model may call it, the server never runs it."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)  # a JSON schema


class ToolCallOut(BaseModel):
    """A call the model made to a caller-declared tool (in a ``done`` event)."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Turn(BaseModel):
    """One user message to answer, with everything the worker needs to answer it."""

    v: int = CONTRACT_VERSION
    platform: Platform
    workspace: str = ""
    channel: str
    thread: str = ""
    user: str
    message_id: str
    text: str
    author: Author | None = None  # the asker's display name and id (shared threads)
    attachments: list[Attachment] = Field(default_factory=list)
    reply_to: ReplyTarget | None = None
    system_prompt: str | None = None  # per-channel override of the default
    model: str | None = None
    sampling: Sampling = Field(default_factory=Sampling)
    # History the bot rebuilt from the platform when the store had lost it.
    history: list[Message] | None = None
    # When set, the turn is stateless: these messages are the whole conversation
    # (API callers send it every time) and nothing is read from or written to the store.
    messages: list[Message] | None = None
    # The last user message is the model's whole input, as is: no chat template, no
    # system prompt (OpenAI /v1/completions, Ollama raw). Still never control tokens.
    raw_prompt: bool = False
    # Caller-declared tools (declared to the model in Llama 3.1's format) and which it
    # must use: "auto", "none", "required", or one tool's name (enforced by the grammar).
    tools: list[FunctionSpec] = Field(default_factory=list)
    tool_choice: str = "auto"
    created_at: float = Field(default_factory=time.time)

    @property
    def conversation_key(self) -> str:
        return conversation_key(self.platform, self.channel, self.thread)

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_payload(cls, data: Any) -> Turn:
        if not isinstance(data, dict):
            raise ContractError(f"turn payload must be an object, got {type(data).__name__}")
        version = data.get("v")
        if version not in READABLE_VERSIONS:
            raise ContractError(
                f"turn payload version {version!r} is not supported (this build reads "
                f"versions {READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}); upgrade the "
                "older of bot and worker"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "payload"
            raise ContractError(f"invalid turn payload at {where}: {first.get('msg')}") from None


def conversation_key(platform: str, channel: str, thread: str = "") -> str:
    """One conversation per thread; a channel without threads is one conversation."""
    return f"{platform}:{channel}:{thread or channel}"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float = 0.0  # enqueued -> picked up by a worker
    prompt_ms: float = 0.0  # picked up -> first token
    generate_ms: float = 0.0  # first token -> last token
    history_dropped: int = 0  # messages left out to fit the context budget


# ``StreamEvent.code`` values: the caller's mistakes, which retrying cannot fix.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
IMAGES_NOT_SUPPORTED = "images_not_supported"
INVALID_IMAGE = "invalid_image"
INVALID_REQUEST = "invalid_request"
ERROR_CODES = (CONTEXT_LENGTH_EXCEEDED, IMAGES_NOT_SUPPORTED, INVALID_IMAGE, INVALID_REQUEST)

EventKind = Literal["started", "delta", "done", "error"]
FinishReason = Literal["stop", "length", "timeout", "cancelled", "error"]


class StreamEvent(BaseModel):
    """What a worker publishes for a job, in order.

    ``delta`` carries only new text; ``done`` carries the whole final text so a
    reader that joined late (or lost deltas) still ends with the exact answer.
    """

    v: int = CONTRACT_VERSION
    job_id: str
    seq: int
    kind: EventKind
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str = ""
    error: str = ""  # short, user-presentable; never a stack trace
    # Machine-readable cause of an ``error`` that is the caller's mistake (the API maps
    # it to a 4xx): one of ERROR_CODES; empty for server faults.
    code: str = ""
    retrying: bool = False  # an error after which the job will run again
    # The attempt (RQ execution id) that published this event; readers ignore events
    # of an attempt that was superseded (see shared/fencing.py). Empty: not fenced.
    attempt: str = ""
    # On ``started``: the first ``resume_from`` characters of the answer streamed so far
    # stay, and this attempt continues after them (its worker died mid-answer).
    # 0 on a fresh start: readers drop any partial text.
    resume_from: int = Field(default=0, ge=0)
    # On ``done``: the model called caller-declared tools instead of answering in text.
    tool_calls: list[ToolCallOut] = Field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.kind == "done" or (self.kind == "error" and not self.retrying)
