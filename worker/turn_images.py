"""Which images a turn shows the model, and what a text-only model says about them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.contract import IMAGE_ONLY_TEXT, Message, Turn


def image_names(turn: Turn, newest: Message) -> list[str]:
    """What to call the newest message's images when telling the user about them."""
    named = [a.name for a in turn.attachments if a.image_id]
    if named:
        return named
    count = len(newest.images)
    return ["the image"] if count == 1 else [f"the {count} images"] if count else []


def cannot_see(model: str, names: Sequence[str], text: str) -> tuple[str, bool]:
    """The note for images sent to a text-only model, and whether it is the whole answer.

    A message that was only images (the bot sent :data:`IMAGE_ONLY_TEXT`) gets just the
    note; one with a question too gets the note above the answer to the words.
    """
    listed = ", ".join(names)
    if text.strip() == IMAGE_ONLY_TEXT:
        return (
            f"This model ({model}) can't see images, so I can't look at {listed}. "
            "Describe it in words and I'll help with that.",
            True,
        )
    return f"_(This model ({model}) can't see images: I answered without {listed}.)_\n\n", False


def choose_images(
    messages: Sequence[Message], limit: int, load: Callable[[str], bytes | None]
) -> tuple[list[Message], dict[str, bytes]]:
    """Keep the ``limit`` most recent images that are still stored; drop the other ids.

    Returns the messages with only the kept ids and the kept images' bytes by id.
    Images whose bytes expired are left out deliberately, without a word: the
    question is still answered, and nothing the user can do brings them back.
    """
    kept: dict[str, bytes] = {}
    out: list[Message] = []
    shown = 0
    for message in reversed(messages):
        ids: list[str] = []
        for ident in reversed(message.images):
            if shown >= limit:
                break
            data = kept.get(ident) or load(ident)
            if data is not None:
                kept[ident] = data
                ids.insert(0, ident)
                shown += 1
        changed = ids != message.images
        out.insert(0, message.model_copy(update={"images": ids}) if changed else message)
    return out, kept


def prompt_images(messages: Sequence[Message], stored: dict[str, bytes]) -> list[bytes]:
    """The bytes of every image the (trimmed) messages show, in prompt order."""
    return [stored[ident] for message in messages for ident in message.images]
