"""Counting worker processes from RQ's registrations.

A worker process registers one RQ worker per slot (``CORRAL_SLOTS``, 16 by default on
CPU), all with its hostname and pid; operators and health checks mean processes.
"""

from __future__ import annotations

from collections.abc import Iterable

from rq.worker import BaseWorker


def worker_processes(workers: Iterable[BaseWorker]) -> int:
    """How many distinct processes the registered RQ workers (slots) belong to."""
    return len({(w.hostname, w.pid) for w in workers})
