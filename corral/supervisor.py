"""`corral run`: start what the configuration asks for, stop it all on Ctrl-C,
SIGTERM or SIGHUP (a systemd or container stop, a closed terminal).

Each part runs as its own process (as it would in docker-compose), in its own
session so that Ctrl-C reaches only this supervisor, which then stops the
children in order: bots first (no new turns), then the worker (lets running
turns finish), then the private Redis. Should the supervisor itself be
killed, each child gets SIGTERM from the kernel (corral/children.py) and
stops on its own rather than lingering.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from corral.addresses import served_addresses
from corral.children import spawn_options
from corral.redis_server import RedisServer
from shared.settings import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30


def planned_services(settings: Settings) -> list[str]:
    services = []
    if settings.discord_token:
        services.append("discord")
    if settings.slack_bot_token and (settings.slack_app_token or settings.slack_signing_secret):
        services.append("slack")
    if settings.api:
        services.append("api")
    return services


def _spawn(command: str, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    log_file = (log_dir / f"{command}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "corral.cli", command],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        **spawn_options(),
    )


def _stop(name: str, process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %ss; killing it", name, STOP_TIMEOUT)
        process.kill()
        process.wait()


def _last_line(log_path: Path) -> str:
    """A child's last words: its one-line error (see corral.cli) when it failed at start."""
    with log_path.open("rb") as log_file:
        log_file.seek(max(log_path.stat().st_size - 4096, 0))
        lines = log_file.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


class Stopping(BaseException):
    """SIGTERM or SIGHUP: stop the stack as on Ctrl-C. Not a KeyboardInterrupt, which
    the local chat takes as "stop waiting for this answer" and carries on."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Stopping(signal.Signals(signum).name)


def run_stack(settings: Settings) -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    log_dir = settings.cache_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    redis: RedisServer | None = None
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    env = dict(os.environ)
    try:
        redis_url = settings.redis_url
        if not redis_url:
            redis = RedisServer(data_dir=settings.cache_dir / "redis", aof=True).start()
            redis_url = redis.url
            print(f"started a private Redis at {redis_url} (data in {redis.data_dir})")
        env["REDIS_URL"] = redis_url
        children.append(("worker", _spawn("worker", env, log_dir)))
        services = planned_services(settings)
        for name in services:
            children.append((name, _spawn(name, env, log_dir)))
        print(f"logs: {log_dir}")
        print("\n".join(served_addresses(settings, services)), flush=True)
        if not services:
            from bots.local_chat import chat

            worker = children[0][1]
            chat(settings, redis_url, worker_alive=lambda: worker.poll() is None)
            return 0
        print(f"running: worker, {', '.join(services)} — Ctrl-C stops everything")
        while all(p.poll() is None for _, p in children):
            try:
                children[0][1].wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
        for name, process in children:
            if process.returncode:
                log_path = log_dir / f"{name}.log"
                print(f"{name} exited with {process.returncode}: {_last_line(log_path)}")
                print(f"  (whole log: {log_path})")
        return 1
    except (KeyboardInterrupt, Stopping):
        return 0
    finally:
        # A second signal while stopping must not cut the orderly stop short.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        print("\nstopping…", flush=True)
        for name, process in reversed(children):
            _stop(name, process)
        if redis:
            redis.stop()
