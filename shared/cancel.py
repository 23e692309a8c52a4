"""Cancelling a turn: the flag both sides agree on.

A bot (or the API, when its caller goes away) calls :func:`cancel_job`: a turn
still waiting in the queue is dropped by RQ and never runs; a running one is
flagged with ``corral:cancel:<job id>``, which the worker polls between decode
steps (at most every :data:`POLL_INTERVAL` seconds) and then ends the turn with
what it has, ``finish_reason="cancelled"``. The flag is also checked when a
worker picks a turn up, closing the race with a cancel that came just then.
"""

from __future__ import annotations

import time

from redis import Redis
from rq.job import Job, JobStatus

CANCEL_KEY = "corral:cancel:{job_id}"
CANCEL_TTL = 3600
POLL_INTERVAL = 0.25


def cancel_key(job_id: str) -> str:
    return CANCEL_KEY.format(job_id=job_id)


def cancel_job(conn: Redis, job_id: str) -> bool:
    """Stop a turn: drop it if still queued, flag it if running.

    True when RQ dropped it from the queue (no worker will run it, nor publish for it).
    """
    conn.set(cancel_key(job_id), 1, ex=CANCEL_TTL)
    try:
        job = Job.fetch(job_id, connection=conn)
    except Exception:  # noqa: BLE001 - expired or already gone: nothing to cancel
        return False
    status = job.get_status(refresh=False)
    if status in (JobStatus.QUEUED, JobStatus.RATE_LIMITED, JobStatus.SCHEDULED):
        try:
            job.cancel()
        except ValueError:
            # It started just now, and RQ tripped over the record of an earlier attempt
            # whose worker died ("Execution … not found"): the flag above stops it.
            return False
        return True
    return False


class CancelPoller:
    """A cheap ``cancelled()`` for the engine: reads Redis at most every ``interval`` s."""

    def __init__(self, conn: Redis, job_id: str, interval: float = POLL_INTERVAL) -> None:
        self.conn = conn
        self.key = cancel_key(job_id)
        self.interval = interval
        self._checked = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            try:
                self._cancelled = bool(self.conn.exists(self.key))
            except Exception:  # noqa: BLE001 - a Redis blip must not end the answer
                return False
        return self._cancelled
