"""Making user text safe to tokenize, whatever a platform or a forged payload sent.

Lone UTF-16 surrogates (JSON allows ``"\\ud800"``) cannot be encoded as UTF-8, and
tokenizers reject them; NUL bytes are dropped. Everything else is kept as typed:
control-token look-alikes are already encoded as plain text by the prompt builder.
"""

from __future__ import annotations

import re

from shared.contract import Author, Message, Turn

# A str holds a surrogate code point only when it was lone (pairs decode to one character).
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return text.replace("\x00", "")


def _author(author: Author | None) -> Author | None:
    if author is None:
        return None
    return Author(id=clean_text(author.id), name=clean_text(author.name))


def _messages(messages: list[Message] | None) -> list[Message] | None:
    if messages is None:
        return None
    return [
        m.model_copy(update={"content": clean_text(m.content), "author": _author(m.author)})
        for m in messages
    ]


def clean_turn(turn: Turn) -> Turn:
    return turn.model_copy(
        update={
            "text": clean_text(turn.text),
            "system_prompt": clean_text(turn.system_prompt) if turn.system_prompt else None,
            "history": _messages(turn.history),
            "messages": _messages(turn.messages),
            "author": _author(turn.author),
        }
    )
