"""One attempt at a turn, as the job code sees it: its fencing token, and whether it lost the turn.

A slot claims the turn (shared/fencing.py) before running it and makes the
:class:`Attempt` current for its thread; :mod:`worker.turn` then publishes
through it and stops generating as soon as the attempt is *lost*: a publish
was refused, or the keeper found the turn owned by another attempt (this
worker was frozen, presumed dead, and the turn re-run elsewhere).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.executions import Execution
from rq.job import Job

from shared import fencing
from shared.contract import StreamEvent
from shared.streams import publish

_local = threading.local()


class Attempt:
    def __init__(self, conn: Redis, job_id: str, token: str) -> None:
        self.conn = conn
        self.job_id = job_id
        self.token = token
        self.lost = False

    def publish(self, event: StreamEvent) -> bool:
        """Publish as this attempt; a refusal marks the attempt lost."""
        if self.lost:
            return False
        if not publish(self.conn, event.model_copy(update={"attempt": self.token})):
            self.lost = True
        return not self.lost

    def check(self) -> bool:
        """Does this attempt still own its turn? (one Redis read)"""
        if not self.lost and fencing.owner(self.conn, self.job_id) != self.token:
            self.lost = True
        return not self.lost

    def stops(self, cancelled: Callable[[], bool]) -> Callable[[], bool]:
        """``cancelled`` for the engine that is also true once this attempt is lost."""
        return lambda: self.lost or cancelled()


class Unfenced(Attempt):
    """A job run outside a corral slot (a plain RQ worker in tests): publishes as before."""

    def __init__(self, conn: Redis, job_id: str) -> None:
        super().__init__(conn, job_id, "")

    def publish(self, event: StreamEvent) -> bool:
        return publish(self.conn, event)

    def check(self) -> bool:
        return True


def set_current(attempt: Attempt | None) -> None:
    _local.attempt = attempt


def current_attempt(conn: Redis, job_id: str) -> Attempt:
    """The slot's attempt at ``job_id``, or an unfenced one when none was set."""
    attempt: Any = getattr(_local, "attempt", None)
    if isinstance(attempt, Attempt) and attempt.job_id == job_id:
        return attempt
    return Unfenced(conn, job_id)


@dataclass(frozen=True)
class Running:
    """A turn a slot is running: what the keeper heartbeats and checks."""

    job: Job
    execution: Execution
    attempt: Attempt
