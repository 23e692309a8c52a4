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
  retries are left (the next attempt resumes the answer), final once RQ
  gives up, so the user always gets an ending;
* frees an abandoned turn's fencing token (shared/fencing.py) before RQ
  re-queues it, so the next attempt can claim it while the dead (or frozen)
  one can no longer publish;
* re-queues *intermediate-queue orphans*: each slot consumes exactly one
  queue, so RQ dequeues with BLMOVE into ``<queue>:intermediate`` and a job
  stays listed from dequeue until its worker starts it (milliseconds). One
  listed for :data:`ORPHAN_GRACE` seconds belongs to a worker that died or
  froze in between (a frozen worker's pending BLMOVE is still served by
  Redis: its TCP connection stays open). RQ's own cleanup of that list waits
  a minute and then fails the job; this puts it back at the front at once;
* stops heartbeating an attempt that no longer owns its turn (this process
  was frozen and the turn went elsewhere) and marks it lost, which stops it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol

from redis import Redis
from rq import worker_registration
from rq.exceptions import AbandonedJobError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import clean_registries

from shared import fencing
from shared.contract import StreamEvent
from shared.streams import final_event, publish, stream_key

from .attempt import Running

log = logging.getLogger(__name__)

# A running turn's registration lives this long past its last heartbeat.
EXECUTION_TTL = 12
HEARTBEAT_INTERVAL = 1.0
MAINTENANCE_INTERVAL = 2.0
# A job listed in an intermediate queue this long was dequeued by a worker that died
# or froze before starting it (a live one starts it within milliseconds).
ORPHAN_GRACE = 4.0
MAINTENANCE_LOCK_TTL = 30  # a killed holder blocks maintenance at most this long

ABANDONED_RETRYING = "The worker answering this stopped; another one is taking over."
ABANDONED_FINAL = "Sorry, this answer failed repeatedly (the worker stopped). Please try again."


# Put an intermediate-queue orphan back at the front of its queue, atomically, and only
# if it is still there and still just queued (no attempt got as far as starting it).
# A claim without a start belongs to a dead attempt too, so the turn is freed.
_REQUEUE_ORPHAN = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[3], 'status') ~= 'queued' then return -1 end
if redis.call('GET', KEYS[4]) then redis.call('SET', KEYS[4], '', 'KEEPTTL') end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
"""


class Slot(Protocol):
    """What the keeper needs of a worker slot (worker/runner.py's SlotWorker)."""

    name: str
    running: Running | None

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None: ...


def maintenance_lock_key(queue_name: str) -> str:
    return f"corral:maintenance:{queue_name}"


def free_if_dead(job: Job) -> None:
    """Free an abandoned turn for its next attempt, unless its owner still heartbeats."""
    conn = job.connection
    owner = fencing.owner(conn, job.id)
    if not owner:
        return
    expires = conn.zscore(job.started_job_registry.key, f"{job.id}:{owner}")
    if expires is None or float(expires) <= time.time():
        fencing.release(conn, job.id, owner)


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
        free_if_dead(job)  # before RQ re-queues it, so the next attempt can claim it
    except Exception:
        log.warning("could not free abandoned turn %s", job.id, exc_info=True)
    try:
        if final_event(job.connection, job.id) is not None:
            # Its worker died after the final event: readers are done, and the next
            # attempt ends at once (worker/turn.py); nothing to tell anyone.
            log.warning("turn %s was abandoned after its final event", job.id)
            return True
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


def run_maintenance(conn: Redis, queue: Queue, holder: str) -> bool:
    """One maintenance pass over ``queue`` if no other process is doing one; True if it ran."""
    key = maintenance_lock_key(queue.name)
    if not conn.set(key, holder, nx=True, ex=MAINTENANCE_LOCK_TTL):
        return False
    try:
        clean_registries(queue, [on_abandoned])
        worker_registration.clean_worker_registry(queue)
    finally:
        # Release only our own lock (a slow pass could have outlived it).
        if conn.get(key) == holder.encode():
            conn.delete(key)
    return True


def requeue_orphans(
    conn: Redis, queue: Queue, seen: dict[str, float], grace: float = ORPHAN_GRACE
) -> list[str]:
    """Put back the jobs listed in ``queue``'s intermediate queue for ``grace`` s or more.

    ``seen`` maps each listed job id to when this process first saw it listed; ids
    no longer listed are dropped from it. Returns the ids put back.
    """
    listed = {
        i.decode() if isinstance(i, bytes) else str(i)
        for i in conn.lrange(queue.intermediate_queue_key, 0, -1)
    }
    now = time.monotonic()
    for job_id in list(seen):
        if job_id not in listed:
            del seen[job_id]
    requeued = []
    for job_id in listed:
        first = seen.setdefault(job_id, now)
        if now - first < grace:
            continue
        keys = (
            queue.intermediate_queue_key,
            queue.key,
            Job.key_for(job_id),
            fencing.owner_key(job_id),
        )
        done = conn.eval(_REQUEUE_ORPHAN, 4, *keys, job_id)
        seen.pop(job_id, None)
        if done == 1:
            requeued.append(job_id)
            log.warning("turn %s was dequeued by a worker that stopped; re-queued", job_id)
    return requeued


class Keeper:
    """The worker process's heartbeat-and-maintenance thread."""

    def __init__(
        self,
        conn: Redis,
        queues: Sequence[Queue],
        slots: Callable[[], Sequence[Slot]],
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
        self._seen: dict[str, dict[str, float]] = {q.name: {} for q in self.queues}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        for slot in self.slots():
            running = slot.running
            if running is None:
                continue
            job = running.job
            try:
                if not running.attempt.check():
                    # This process was frozen or cut off long enough to be presumed dead,
                    # and the turn went to another attempt: let it die here, unheartbeated.
                    log.warning("turn %s was taken over elsewhere; this attempt stops", job.id)
                    continue
                slot.maintain_heartbeats(job, running.execution)
            except Exception:
                log.warning("heartbeat for turn %s failed", job.id, exc_info=True)

    def maintain(self) -> None:
        slots = self.slots()
        if not slots:
            return
        for queue in self.queues:
            try:
                requeue_orphans(self.conn, queue, self._seen[queue.name])
                run_maintenance(self.conn, queue, slots[0].name)
            except Exception:
                log.warning("maintenance of queue %s failed", queue.name, exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            if time.monotonic() - self._last_maintenance >= self.maintenance_interval:
                self._last_maintenance = time.monotonic()
                self.maintain()
            self._stop.wait(self.heartbeat_interval)
