"""Splitting a long chat reply into platform-sized messages.

Pure and platform-neutral (Discord caps a message at 2,000 characters, Slack
a section at 3,000): the bots stream into one message and roll over into the
next with whatever this returns. A cut prefers a paragraph break, then a line
break, then a space, and only splits a word when a "word" is longer than a
whole message. A cut inside a fenced code block closes the fence at the end of
the piece and reopens it (with its language) at the start of the next, so each
message renders on its own.
"""

from __future__ import annotations

FENCE = "```"
_CLOSE = "\n" + FENCE
_MAX_LANGUAGE = 16  # a reopened fence must stay small next to the limit
MIN_LIMIT = 50


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` characters each.

    Joining the pieces (after dropping the fences this added) gives back the
    text, except for whitespace at the cuts. Empty text gives no pieces.
    """
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")
    pieces: list[str] = []
    rest = text
    fence = ""  # the opening fence line of a code block that is open where `rest` starts
    while rest.strip():
        prefix = fence + "\n" if fence else ""
        if len(prefix) + len(rest) <= limit:
            pieces.append(prefix + rest)
            break
        # Leave room for a closing fence wherever the cut might land inside a
        # block (that is only known after choosing the cut).
        room = limit - len(prefix)
        if fence or FENCE in rest[:room]:
            room -= len(_CLOSE)
        window = rest[:room]
        cut = _best_cut(window)
        body = rest[:cut].rstrip()
        rest = rest[cut:].lstrip("\n")
        fence = _open_fence(prefix + body)
        piece = prefix + body + (_CLOSE if fence else "")
        if body:
            pieces.append(piece)
        if fence and rest.startswith(FENCE):
            # The block ends right at the cut: it was closed above already.
            rest = rest[len(FENCE) :].lstrip(" \t").removeprefix("\n").lstrip("\n")
            fence = ""
    return pieces


def _best_cut(window: str) -> int:
    """Where to end a piece within ``window``: an index in 1..len(window)."""
    # Cutting very early would make a tiny message; a boundary in the first
    # quarter is ignored in favour of a weaker one further on.
    floor = len(window) // 4
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at > floor:
            return at + len(separator)
    return len(window)


def _open_fence(text: str) -> str:
    """The opening fence line (e.g. "```python") if ``text`` ends inside a code block."""
    fence = ""
    for line in text.split("\n"):
        if line.count(FENCE) % 2 == 0:
            continue  # no fence, or one that opens and closes on the same line
        if fence:
            fence = ""
        else:
            after = line.strip()[len(FENCE) :] if line.strip().startswith(FENCE) else ""
            language = after.split()[0] if after.split() else ""
            fence = FENCE + language[:_MAX_LANGUAGE]
    return fence
