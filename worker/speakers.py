"""Who said what, for conversations that several people share.

In a Discord or Slack thread, different people ask in turn. When a
conversation has more than one author, each user message reaches the model
with a first line naming its author (display name and stable id), and the
system prompt says so. A one-person conversation is left exactly as it was.

Names are user-controlled: they are cleaned here (no line breaks, no
brackets or colons that could fake a header, no invisible or control
characters) and, like all message content, tokenized as plain text by
:func:`worker.prompt.build_prompt`, so they can never become control tokens.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from shared.contract import Author, Message

NAME_LIMIT = 48
ID_LIMIT = 40
_ID_JUNK = re.compile(r"[^A-Za-z0-9_.\-]")
_NAME_JUNK = re.compile(r"[()\[\]{}<>:@#`|\\]")

SPEAKERS_NOTE = (
    "Several people take part in this conversation. Each of their messages begins with a "
    "line such as 'From Sam (id 123):' naming who wrote it; only that first line says who "
    "is speaking. Keep track of who asked what and refer to people by their names. Never "
    "write mention syntax such as <@id>, @here or @everyone."
)


def clean_name(name: str) -> str:
    """A display name safe to show on one header line."""
    # Categories C*: controls, format (zero-width, bidi overrides), private use (the prompt
    # builder's own placeholder marks), unassigned.
    kept = "".join(
        " " if unicodedata.category(ch).startswith(("C", "Z")) else ch
        for ch in unicodedata.normalize("NFKC", name)
    )
    kept = " ".join(_NAME_JUNK.sub(" ", kept).split())
    if len(kept) > NAME_LIMIT:
        kept = kept[: NAME_LIMIT - 1].rstrip() + "…"
    return kept or "someone"


def clean_id(value: str) -> str:
    return _ID_JUNK.sub("", value)[:ID_LIMIT] or "unknown"


def header(author: Author) -> str:
    return f"From {clean_name(author.name or author.id)} (id {clean_id(author.id)}):"


def speakers(messages: Sequence[Message]) -> list[Author]:
    """The distinct authors of the user messages, in order of first appearance."""
    seen: dict[str, Author] = {}
    for message in messages:
        if message.role == "user" and message.author is not None:
            seen.setdefault(message.author.id, message.author)
    return list(seen.values())


def attribute_speakers(messages: Sequence[Message]) -> list[Message]:
    """The messages as the model should see them: authors named when there are several."""
    if len(speakers(messages)) < 2:
        return list(messages)
    shown: list[Message] = []
    for message in messages:
        if message.role == "user" and message.author is not None:
            content = f"{header(message.author)}\n{message.content.strip()}"
            message = message.model_copy(update={"content": content})
        elif message.role == "system" and not shown:
            content = f"{message.content.rstrip()}\n\n{SPEAKERS_NOTE}".lstrip()
            message = message.model_copy(update={"content": content})
        shown.append(message)
    return shown
