"""Stop texts (OpenAI ``stop``, Ollama ``options.stop``): the answer ends where one begins.

Works on the text stream, so every engine gets it the same way: streamed text that
might be the beginning of a stop text is held back until the next pieces show it is
not; once a stop text appears, the text before it is sent, the stop text is dropped,
and the engine is told to end the request (through its ``cancelled`` poll).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from .engine import Completion


class StopText:
    def __init__(self, stops: Sequence[str], on_text: Callable[[str], None] | None) -> None:
        self.stops = [s for s in stops if s]
        self.on_text = on_text
        self.text = ""  # everything the engine produced so far (cut at a stop text)
        self.sent = 0  # how much of it went out
        self.stopped = False

    def _send(self, upto: int) -> None:
        if upto > self.sent and self.on_text is not None:
            self.on_text(self.text[self.sent : upto])
        self.sent = max(self.sent, upto)

    def feed(self, delta: str) -> None:
        if self.stopped:
            return
        if not self.stops:
            self.text += delta
            self._send(len(self.text))
            return
        longest = max(map(len, self.stops))
        start = max(self.sent - longest + 1, 0)  # what went out holds no whole stop text
        self.text += delta
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True
            self._send(len(self.text))
            return
        self._send(len(self.text) - self._held(longest))

    def _held(self, longest: int) -> int:
        """Length of the longest end of the text that begins some stop text."""
        for size in range(min(longest - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self.stops):
                return size
        return 0

    def cancelled(self, inner: Callable[[], bool] | None) -> Callable[[], bool]:
        """The engine's ``cancelled`` poll: also true once a stop text has been seen."""
        return lambda: self.stopped or (inner is not None and inner())

    def finish(self, completion: Completion) -> Completion:
        """The completion as the caller sees it: cut at the stop text, held text sent."""
        if not self.stops:
            return completion
        if self.stopped:
            return replace(completion, text=self.text, finish_reason="stop")
        if completion.text.startswith(self.text):
            self.text = completion.text  # pieces the engine held until its end (if any)
        self._send(len(self.text))
        return replace(completion, text=self.text)
