"""The worker process: one resident model, many RQ workers in threads.

RQ's forking ``Worker`` cannot keep a CUDA model across jobs, and one
``SimpleWorker`` runs one job at a time. So a worker process loads the model
once and runs ``slots`` :class:`SlotWorker` threads, each an ordinary RQ
worker (registered, heartbeating, with truthful job status, retries and the
started-job registry) that executes turns in-process. The engine batches
whatever the slots submit, so slots == the number of turns decoded together.

Each slot consumes exactly one queue (its model's), so RQ dequeues with
BLMOVE into the queue's intermediate list rather than a bare BLPOP: a turn
taken by a worker that dies or freezes before starting it is still listed
somewhere, and the keeper puts it back (worker/keeper.py). Before running a
turn a slot claims it (shared/fencing.py); a slot that finds it owned by
another attempt drops its copy without touching the job.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

from redis import Redis, RedisError
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus

from shared import fencing
from shared.settings import Settings
from shared.team_config import load_team_config
from shared.turnqueue import MODEL_KEY, serving_queues

from .attempt import Attempt, Running, set_current
from .engines import Engine, build_engine, build_guard
from .keeper import EXECUTION_TTL, Keeper
from .model_info import publish as publish_model_info
from .turn import install_engine

log = logging.getLogger(__name__)

# Abandoned turns (their worker died) are found by registry maintenance, which
# the process's keeper thread runs every few seconds (see worker/keeper.py); the
# slots' own maintenance is switched off (run_maintenance_tasks below).
JOB_MONITORING_INTERVAL = 5
# An idle slot waits worker_ttl - 15 s per dequeue; this also bounds how long a
# stop request waits and how soon a dead worker's registration expires.
WORKER_TTL = 20
# After the shutdown grace, how long handed-back turns get to reach the queue.
HAND_BACK_WAIT = 15.0


class SlotWorker(SimpleWorker):
    """A SimpleWorker that runs in a non-main thread of a shared process."""

    death_penalty_class = TimerDeathPenalty  # SIGALRM only works in the main thread

    running: Running | None = None  # while a turn runs

    def _install_signal_handlers(self) -> None:
        """Signals are the main thread's business; it stops the slots via :meth:`stop`."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        # SimpleWorker.execute_job, plus claiming the turn and publishing the running
        # turn to the keeper, which heartbeats it (a SimpleWorker sends none while a
        # job runs) and checks that this attempt still owns it.
        execution = self.prepare_execution(job)
        if not fencing.claim(self.connection, job.id, execution.id):
            # A second copy: the keeper re-queued a turn this (frozen) slot had taken,
            # or the other way round. Whoever claimed it first answers it.
            log.warning("turn %s is owned by another attempt; dropping this copy", job.id)
            self._forget(job, execution, queue)
            return
        attempt = Attempt(self.connection, job.id, execution.id)
        self.running = Running(job, execution, attempt)
        set_current(attempt)
        try:
            self.perform_job(job, queue, execution)
        finally:
            set_current(None)
            self.running = None
        self.set_state(WorkerStatus.IDLE)

    def _forget(self, job: Job, execution: Execution, queue: Queue | None = None) -> None:
        """Drop this slot's execution of a turn it does not own, leaving the job alone."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipe, execution)
            if queue is not None:
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.execute()
        self.set_state(WorkerStatus.IDLE)

    def _dropped_if_lost(self, job: Job, execution: Execution, outcome: str) -> bool:
        """A stale attempt's end: the turn's status, result and retries belong to its
        owner, so this slot only forgets its execution."""
        running = self.running
        if running is None or running.attempt.check():
            return False
        log.warning("stale attempt at turn %s %s; dropped", job.id, outcome)
        self._forget(job, execution)
        return True

    def _finalize_success(
        self, job: Job, queue: Queue, execution: Execution, return_value: Any
    ) -> None:
        if not self._dropped_if_lost(job, execution, "ended"):
            super()._finalize_success(job, queue, execution, return_value)

    def _finalize_failure(
        self,
        job: Job,
        queue: Queue,
        execution: Execution,
        exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None],
    ) -> None:
        if not self._dropped_if_lost(job, execution, "failed"):
            super()._finalize_failure(job, queue, execution, exc_info)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        # Free the turn before RQ re-queues it, or its next attempt could not claim it.
        if execution is not None and job.should_retry:
            fencing.release(self.connection, job.id, execution.id)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # Short: the keeper heartbeats running turns every couple of seconds, so an
        # entry that outlives this is a turn whose worker died (RQ then retries it).
        return EXECUTION_TTL

    def run_maintenance_tasks(self) -> None:
        # The keeper thread does maintenance for the whole process, on its own clock.
        self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ's is typed None

    def stop(self) -> None:
        self._stop_requested = True

    def work(self, burst: bool = False, **kwargs: Any) -> bool:  # type: ignore[override]
        """RQ's work loop, restarted with backoff when it ends because Redis went away.

        RQ quits its loop on any Redis error; a turn it was running stays "started"
        in Redis and, unheartbeated, is retried by the keeper of whichever worker
        runs maintenance next (see worker/keeper.py).
        """
        failures = 0
        while True:
            try:
                # Ours to clear: a registration of this slot that Redis brought back from
                # its AOF after a crash makes RQ refuse to start ("active worker … already").
                self.connection.delete(self.key)
                worked = super().work(burst=burst, **kwargs)
            except RedisError:  # e.g. registering its death while Redis is down
                worked = False
            if burst or self._stop_requested:
                return worked
            failures += 1
            delay = min(0.5 * 2 ** (failures - 1), 10.0)
            log.warning("slot %s lost Redis; reconnecting in %.1f s", self.name, delay)
            time.sleep(delay)
            try:
                self.connection.ping()
                failures = 0
            except RedisError:
                pass

    def heartbeat(self, *args: object, **kwargs: object) -> None:
        # RQ checks for a stop request only between jobs, not while waiting for
        # one; the wait loop heartbeats every dequeue timeout, so check here.
        if self._stop_requested and self.get_state() != "busy":
            raise StopRequested()
        super().heartbeat(*args, **kwargs)  # type: ignore[arg-type]


def default_slots(settings: Settings, device: str, batched: bool = True) -> int:
    if settings.slots:
        return settings.slots
    if not batched:
        # A vision model answers one turn at a time: more slots would only move waiting
        # turns from the queue (where bots show the place in line) into a lock.
        return 1
    return 64 if device == "cuda" else 16


class WorkerProcess:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.engine: Engine | None = None
        self.guard: Engine | None = None
        self.slots: list[SlotWorker] = []
        self.threads: list[threading.Thread] = []
        self.keeper: Keeper | None = None

    def load(self) -> Engine:
        log.info("loading model %s …", self.settings.display_model_name)
        engine = build_engine(self.settings)  # CORRAL_ENGINE: local model or an OpenAI server
        if engine.tokenizer is not None:  # a remote server warms itself up
            self._warm_up(engine)
        log.info(
            "model %s ready on %s (quantization: %s)",
            engine.name,
            engine.device,
            engine.quantization,
        )
        self.engine = engine
        self.guard = build_guard(self.settings)  # CORRAL_GUARD_MODEL: a moderation classifier
        if self.guard is not None:
            log.info("moderation model %s ready", self.guard.name)
        install_engine(engine, self.guard)
        return engine

    @staticmethod
    def _warm_up(engine: Engine) -> None:
        # The first request pays for cache allocation; pay it before users do.
        ids = engine.tokenizer("Hello", add_special_tokens=False)["input_ids"]
        engine.generate(ids, max_new_tokens=2)

    def start(self, burst: bool = False) -> None:
        assert self.engine is not None, "load() first"
        batched = not getattr(self.engine, "vision", False)
        count = default_slots(self.settings, self.engine.device, batched)
        conn = Redis.from_url(self.redis_url, health_check_interval=30)
        # The plain queue for the default model, `<queue>:<name>` for another: one queue.
        default = load_team_config().models.default
        is_default = default in ("", self.settings.display_model_name)
        queues = serving_queues(conn, self.settings, is_default)
        assert len(queues) == 1, "a slot consuming several queues dequeues unsafely (BLPOP)"
        publish_model_info(conn, self.engine)  # what /api/show reports
        for index in range(count):
            slot = SlotWorker(
                queues,
                connection=conn,
                job_monitoring_interval=JOB_MONITORING_INTERVAL,
                worker_ttl=WORKER_TTL,
            )
            conn.hset(MODEL_KEY, slot.name, self.engine.name)
            thread = threading.Thread(
                target=slot.work,
                kwargs={"burst": burst, "logging_level": "WARNING"},
                name=f"slot-{index}",
                daemon=True,
            )
            self.slots.append(slot)
            self.threads.append(thread)
            thread.start()
        self.keeper = Keeper(conn, queues, lambda: list(self.slots))
        self.keeper.start()
        log.info("worker serving queue %r with %d slots", self.settings.queue_name, count)

    def stop(self) -> None:
        for slot in self.slots:
            slot.stop()

    def wait(self, stopping: threading.Event | None = None, grace: float = 0.0) -> bool:
        """Wait for the slots to end; once ``stopping`` is set, at most ``grace`` s more.

        Returns False when slots were still running as the grace ran out.
        """
        deadline: float | None = None
        for thread in self.threads:
            while thread.is_alive():
                if stopping is not None and stopping.is_set():
                    deadline = deadline or time.monotonic() + grace
                    if time.monotonic() > deadline:
                        return False
                thread.join(timeout=0.5)
        return True

    def hand_back(self) -> None:
        """Give the turns still running back to the queue, for another worker.

        Stopping the engine fails them; RQ re-queues each one (at the front, keeping
        its conversation's place, while its retry budget lasts) and its readers get a
        ``retrying`` event, so the next attempt starts the answer afresh.
        """
        unfinished = [slot.running.job.id for slot in self.slots if slot.running]
        log.warning("handing %d unfinished turns back: %s", len(unfinished), unfinished)
        if self.engine:
            self.engine.close()
        done = threading.Event()
        done.set()
        self.wait(done, grace=HAND_BACK_WAIT)

    def close(self) -> None:
        if self.keeper:
            self.keeper.stop()
        conn = Redis.from_url(self.redis_url)
        try:
            if self.slots:
                conn.hdel(MODEL_KEY, *(slot.name for slot in self.slots))
        except Exception:
            log.debug("could not unregister slots", exc_info=True)
        if self.engine:
            self.engine.close()
            install_engine(None)
        if self.guard is not None:
            self.guard.close()


def run_worker(settings: Settings, redis_url: str, burst: bool = False) -> None:
    """Run until SIGINT/SIGTERM: running turns get ``shutdown_grace`` seconds to
    finish, the rest are handed back to the queue, then the process exits."""
    process = WorkerProcess(settings, redis_url)
    process.load()
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            raise SystemExit(1)  # second signal: don't wait any longer
        log.info("stopping: letting running turns finish (signal again to force)")
        stopping.set()
        process.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    process.start(burst=burst)
    try:
        if not process.wait(stopping, grace=settings.shutdown_grace):
            process.hand_back()
    finally:
        process.close()
