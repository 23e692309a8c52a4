"""The worker process: one resident model, many RQ workers in threads.

RQ's forking ``Worker`` cannot keep a CUDA model across jobs, and one
``SimpleWorker`` runs one job at a time. So a worker process loads the model
once and runs ``slots`` :class:`SlotWorker` threads, each an ordinary RQ
worker (registered, heartbeating, with truthful job status, retries and the
started-job registry) that executes turns in-process. The engine batches
whatever the slots submit, so slots == the number of turns decoded together.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from redis import Redis
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.timeouts import TimerDeathPenalty

from shared.settings import Settings
from shared.turnqueue import MODEL_KEY, turn_queue

from .engine import Engine
from .model_source import load
from .turn import install_engine

log = logging.getLogger(__name__)

# Abandoned turns (their worker died) are found by registry cleanup, which RQ
# runs every maintenance interval; the default 10 minutes is far too slow for chat.
MAINTENANCE_INTERVAL = 15
JOB_MONITORING_INTERVAL = 5
# An idle slot waits worker_ttl - 15 s per dequeue; this also bounds how long a
# stop request waits and how soon a dead worker's registration expires.
WORKER_TTL = 20


class SlotWorker(SimpleWorker):
    """A SimpleWorker that runs in a non-main thread of a shared process."""

    death_penalty_class = TimerDeathPenalty  # SIGALRM only works in the main thread

    def _install_signal_handlers(self) -> None:
        """Signals are the main thread's business; it stops the slots via :meth:`stop`."""

    def stop(self) -> None:
        self._stop_requested = True

    def heartbeat(self, *args: object, **kwargs: object) -> None:
        # RQ checks for a stop request only between jobs, not while waiting for
        # one; the wait loop heartbeats every dequeue timeout, so check here.
        if self._stop_requested and self.get_state() != "busy":
            raise StopRequested()
        super().heartbeat(*args, **kwargs)  # type: ignore[arg-type]


def default_slots(settings: Settings, device: str) -> int:
    if settings.slots:
        return settings.slots
    return 64 if device == "cuda" else 16


class WorkerProcess:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.engine: Engine | None = None
        self.slots: list[SlotWorker] = []
        self.threads: list[threading.Thread] = []

    def load(self) -> Engine:
        log.info("loading model %s …", self.settings.display_model_name)
        loaded = load(self.settings)
        engine = Engine(loaded, self.settings)
        self._warm_up(engine)
        log.info(
            "model %s ready on %s (quantization: %s)",
            loaded.name,
            loaded.device,
            loaded.quantization,
        )
        self.engine = engine
        install_engine(engine)
        return engine

    @staticmethod
    def _warm_up(engine: Engine) -> None:
        # The first request pays for cache allocation; pay it before users do.
        ids = engine.tokenizer("Hello", add_special_tokens=False)["input_ids"]
        engine.generate(ids, max_new_tokens=2)

    def start(self, burst: bool = False) -> None:
        assert self.engine is not None, "load() first"
        count = default_slots(self.settings, self.engine.device)
        conn = Redis.from_url(self.redis_url, health_check_interval=30)
        queue = turn_queue(conn, self.settings)
        for index in range(count):
            slot = SlotWorker(
                [queue],
                connection=conn,
                maintenance_interval=MAINTENANCE_INTERVAL,
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
        log.info("worker serving queue %r with %d slots", self.settings.queue_name, count)

    def stop(self) -> None:
        for slot in self.slots:
            slot.stop()

    def wait(self) -> None:
        for thread in self.threads:
            while thread.is_alive():
                thread.join(timeout=0.5)

    def close(self) -> None:
        conn = Redis.from_url(self.redis_url)
        try:
            if self.slots:
                conn.hdel(MODEL_KEY, *(slot.name for slot in self.slots))
        except Exception:
            log.debug("could not unregister slots", exc_info=True)
        if self.engine:
            self.engine.close()
            install_engine(None)


def run_worker(settings: Settings, redis_url: str, burst: bool = False) -> None:
    """Run until SIGINT/SIGTERM: running turns finish, then the process exits."""
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
        process.wait()
    finally:
        process.close()
