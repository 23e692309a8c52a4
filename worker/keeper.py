"""Keeping turns alive, and noticing quickly when a worker died with one.

RQ decides that a job was abandoned (its worker died) when the job's entry in
the started-job registry expires: every heartbeat pushes that expiry
``get_heartbeat_ttl()`` seconds ahead, and registry maintenance retries
expired entries (or fails them once the retry budget is spent). Out of the
box a :class:`~rq.SimpleWorker` sends no heartbeat while a job runs, the TTL
is ``job.timeout + 60`` and maintenance runs every 10 minutes, so a turn
whose worker was killed came back only minutes later.

Here each worker process runs one keeper thread that

* heartbeats every running turn every :data:`HEARTBEAT_INTERVAL` seconds with
  a short :data:`EXECUTION_TTL`, so a dead worker's turn expires within it;
* runs registry maintenance every :data:`MAINTENANCE_INTERVAL` seconds under a
  short-lived lock (RQ's own lock lives 15 minutes if its holder is killed),
  so an expired turn is re-queued at once, at the front, keeping its
  conversation's rate-limit slot (the conversation's next turn still waits);
* publishes an ``error`` event for every abandoned turn: ``retrying`` while
  retries are left (readers drop the partial text), final once RQ gives up,
  so the user always gets an ending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis import Redis
from rq import worker_registration
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.queue import Queue
from rq.registry import clean_registries

from shared.contract import StreamEvent
from shared.streams import publish, stream_key

if TYPE_CHECKING:
    from .runner import SlotWorker

log = logging.getLogger(__name__)

# A running turn's registration lives this long past its last heartbeat.
EXECUTION_TTL = 12
HEARTBEAT_INTERVAL = 2.0
MAINTENANCE_INTERVAL = 3.0
MAINTENANCE_LOCK_TTL = 30  # a killed holder blocks maintenance at most this long

ABANDONED_RETRYING = "The worker answering this stopped; another one is taking over."
ABANDONED_FINAL = "Sorry, this answer failed repeatedly (the worker stopped). Please try again."


def maintenance_lock_key(queue_name: str) -> str:
    return f"corral:maintenance:{queue_name}"


def on_abandoned(
    job: Job,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    tb: TracebackType | None,
) -> bool:
    """RQ exception handler: tell the turn's readers that its worker died."""
    if exc_type is None or not issubclass(exc_type, AbandonedJobError):
        return True  # ordinary failures: the job itself already published its error
    retrying = bool(job.retries_left and job.retries_left > 0)
    try:
        seq = int(job.connection.xlen(stream_key(job.id))) + 1
        event = StreamEvent(
            job_id=job.id,
            seq=seq,
            kind="error",
            error=ABANDONED_RETRYING if retrying else ABANDONED_FINAL,
            retrying=retrying,
            finish_reason="error",
        )
        publish(job.connection, event)
    except Exception:
        log.warning("could not publish the abandonment of turn %s", job.id, exc_info=True)
    log.warning("turn %s was abandoned by its worker (retrying: %s)", job.id, retrying)
    return True


def run_maintenance(conn: Redis, queue: Queue, worker: SlotWorker) -> bool:
    """One maintenance pass over ``queue`` if no other process is doing one; True if it ran."""
    key = maintenance_lock_key(queue.name)
    if not conn.set(key, worker.name, nx=True, ex=MAINTENANCE_LOCK_TTL):
        return False
    try:
        clean_registries(queue, [on_abandoned])
        worker_registration.clean_worker_registry(queue)
        queue.intermediate_queue.cleanup(worker, queue)
    finally:
        # Release only our own lock (a slow pass could have outlived it).
        if conn.get(key) == worker.name.encode():
            conn.delete(key)
    return True


class Keeper:
    """The worker process's heartbeat-and-maintenance thread."""

    def __init__(
        self,
        conn: Redis,
        queues: Sequence[Queue],
        slots: Callable[[], Sequence[SlotWorker]],
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        maintenance_interval: float = MAINTENANCE_INTERVAL,
    ) -> None:
        self.conn = conn
        self.queues = list(queues)
        self.slots = slots
        self.heartbeat_interval = heartbeat_interval
        self.maintenance_interval = maintenance_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keeper", daemon=True)
        self._last_maintenance = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        for slot in self.slots():
            running: Any = slot.running
            if running is None:
                continue
            job, execution = running
            try:
                slot.maintain_heartbeats(job, execution)
            except Exception:
                log.warning("heartbeat for turn %s failed", job.id, exc_info=True)

    def maintain(self) -> None:
        slots = self.slots()
        if not slots:
            return
        for queue in self.queues:
            try:
                run_maintenance(self.conn, queue, slots[0])
            except Exception:
                log.warning("maintenance of queue %s failed", queue.name, exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            if time.monotonic() - self._last_maintenance >= self.maintenance_interval:
                self._last_maintenance = time.monotonic()
                self.maintain()
            self._stop.wait(self.heartbeat_interval)
