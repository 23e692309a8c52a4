"""Resuming an answer whose worker died mid-way, instead of starting it over.

The turn's event stream holds what readers were already shown. A new attempt
reads it back, feeds the model the prompt plus that text (as the start of its
own reply) and generates only the rest, so nothing is repeated: its
``started`` event says ``resume_from=N`` and readers keep their first N
characters; its deltas carry only new text; its ``done`` the whole answer.

Only a plain local generation resumes: with tools the visible text holds
traces the model never wrote, a vision prompt cannot take a text prefix the
same way, and a remote engine (CORRAL_ENGINE=openai) is sent messages, not
token ids. Those start afresh (``resume_from=0``), as before. So does a turn
whose decoding depends on everything it wrote: a JSON schema's grammar, a
caller's tools, stop texts and a seeded draw all begin at the answer's start,
and a raw prompt has no chat turn to continue.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from redis import Redis

from shared.contract import Turn
from shared.streams import events_so_far

from .engine import Completion
from .tools.builtin import select_tools


def shown_text(conn: Redis, job_id: str) -> str:
    """The answer text a reader of ``job_id``'s stream shows right now."""
    text = ""
    for event in events_so_far(conn, job_id):
        if event.kind == "started":
            text = text[: event.resume_from]
        elif event.kind == "delta":
            text += event.text
        elif event.final:
            return ""  # over (should not be re-run at all)
    return text


@dataclass
class Resume:
    """What this attempt continues from ("" when it starts afresh)."""

    text: str = ""
    tokenizer: Any = None
    _ids: list[int] | None = None

    @classmethod
    def read(cls, conn: Redis, job_id: str, engine: Any, turn: Turn) -> Resume:
        sampling = turn.sampling
        resumable = (
            not (sampling.response_format or sampling.stop or sampling.seed is not None)
            and not (turn.tools or turn.raw_prompt)
            and engine.tokenizer is not None
            and not getattr(engine, "vision", False)
            and not select_tools(engine.settings.tools)
        )
        if not resumable:
            return cls()
        return cls(shown_text(conn, job_id), engine.tokenizer)

    @property
    def offset(self) -> int:
        """``StreamEvent.resume_from`` for this attempt's ``started``."""
        return len(self.text)

    def model_text(self, note: str) -> str:
        # A note the worker put above the answer was shown, but the model never wrote it.
        return self.text.removeprefix(note) if note else self.text

    def prefix_ids(self, note: str) -> list[int]:
        if self._ids is None:
            text = self.model_text(note)
            self._ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return self._ids

    def input_ids(self, prompt_ids: list[int], note: str) -> list[int]:
        """The prompt with the reply so far appended: the model carries on after it."""
        return [*prompt_ids, *self.prefix_ids(note)]

    def max_new_tokens(self, budget: int, note: str) -> int:
        return max(budget - len(self.prefix_ids(note)), 1)

    def completed(self, completion: Completion, note: str) -> Completion:
        """The whole answer: the resumed text plus what this attempt generated."""
        if not self.text:
            return completion
        return replace(completion, text=self.model_text(note) + completion.text)
