"""A stand-in for the model's sampling, behind the real job path.

Everything else is real (tokenizer, queue, RQ worker, job function, streams);
only the choice of tokens is scripted, so tests can steer a turn into a tool
call or a moderated answer deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.engine import Completion


class ScriptedEngine:
    """Answers with scripted replies, token for token as a model would produce them."""

    def __init__(self, tokenizer: Any, replies: list[tuple[str, bool]], stop: str) -> None:
        self.tokenizer = tokenizer
        self.replies = list(replies)  # (text, starts with the <|python_tag|> token)
        self.stop = tokenizer.convert_tokens_to_ids(stop)
        self.calls: list[list[int]] = []
        self.images: list[list[bytes]] = []  # what each call was shown (vision=True only)
        self.vision = False

    def generate(
        self, ids: list[int], on_text: Callable[[str], None] | None = None, **options: Any
    ) -> Completion:
        self.calls.append(list(ids))
        if self.vision:
            self.images.append(list(options["images"]))
        text, tagged = self.replies.pop(0)
        body = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]
        prefix = [self.tokenizer.convert_tokens_to_ids("<|python_tag|>")] if tagged else []
        shown = ("<|python_tag|>" if tagged else "") + text
        if on_text is not None:
            for i in range(0, len(shown), 5):
                on_text(shown[i : i + 5])
        token_ids = (*prefix, *body, self.stop)
        return Completion(shown, len(ids), len(token_ids) - 1, "stop", 0.01, 0.02, token_ids)

    def serve(self, settings: Any, vision: bool = False) -> ScriptedEngine:
        """Give it what worker/turn.py reads from an engine besides generate()."""
        self.settings, self.name, self.device = settings, "scripted", "cpu"
        self.vision, self.max_images = vision, settings.vision_max_images
        self.structured_outputs = self.per_request_shaping = False
        return self
