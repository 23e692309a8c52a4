"""Fault-injection soak: conversations through the queue and the HTTP API while things break.

    python bench/soak.py --turns 120 --conversations 12 --api-conversations 4 --minutes 4 --seed 1

Loopback only. Starts a private Redis (AOF on), ``--workers`` real ``corral worker``
processes (the embedded model) and a real ``corral api``; then

* ``--conversations`` chat conversations send their turns the way the Discord and Slack
  bots do (``enqueue_turn`` on one conversation key, answers read from the turn's event
  stream), a few seconds apart and without waiting for the previous answer, so the
  queue's per-conversation ordering is exercised;
* ``--api-conversations`` clients talk to ``POST /api/chat`` (non-streamed), each
  sending its next question after the previous answer;
* ``--slack-conversations`` Slack threads mention the real Bolt app (in-process, against
  the fake Slack API of tests/fakes: bench/soak_slack.py); an answer shown twice is a
  second bot reply in a thread;
* a driver injects faults from a seeded schedule, in turn: SIGKILL a worker's process
  group (a replacement starts), SIGSTOP one for 5–60 s then SIGCONT, SIGKILL Redis and
  restart it on the same port and data (AOF), SIGKILL the API process (restarted).

Sending stops at ``--minutes`` minus the drain time; then every accepted turn gets up
to ``--drain`` seconds to settle. Prints one table and exits 1 if any turn was lost,
doubled or out of order.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp

from common import ROOT, machine, pct, print_table
from redis import Redis
from redis.exceptions import RedisError
from reliability_load import retrying
from rq import Worker
from soak_platform import Tally

from corral.children import spawn_options
from corral.redis_server import RedisServer, free_port
from shared.contract import Sampling, Turn
from shared.settings import Settings, load_settings
from shared.turnqueue import enqueue_turn

QUEUE = "corral-soak"
DEFAULT_PAUSE = (1.0, 6.0)
FAULTS = ("kill worker", "freeze worker", "restart redis", "kill api")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Stack:
    """Redis, workers and the API, each a real process in its own process group."""

    def __init__(self, tmp: Path, slots: int, tokens: int) -> None:
        self.tmp = tmp
        self.redis = RedisServer(port=free_port(), data_dir=tmp / "redis", aof=True)
        self.env = dict(os.environ)
        self.env.update(
            REDIS_URL=self.redis.url, CORRAL_QUEUE_NAME=QUEUE, CORRAL_SLOTS=str(slots),
            CORRAL_MAX_NEW_TOKENS=str(tokens), CORRAL_KV_CACHE_TOKENS="4096",
            CORRAL_SHUTDOWN_GRACE="5", CORRAL_QUEUE_MAX="0", CORRAL_QUEUE_MAX_PER_USER="0",
            CORRAL_USER_TURNS_PER_MINUTE="0", CORRAL_API_PORT=str(free_port()),
        )  # fmt: skip
        self.api_url = f"http://127.0.0.1:{self.env['CORRAL_API_PORT']}"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.frozen: dict[int, float] = {}  # pid -> when to SIGCONT
        self.api: subprocess.Popen[bytes] | None = None
        self.started = 0

    def spawn(self, command: str) -> subprocess.Popen[bytes]:
        self.started += 1
        out = (self.tmp / f"{command}-{self.started}.log").open("wb")
        return subprocess.Popen(
            [sys.executable, "-m", "corral.cli", command],
            env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, **spawn_options(),
        )  # fmt: skip

    def start_worker(self) -> None:
        self.workers.append(self.spawn("worker"))

    def start_api(self) -> None:
        self.api = self.spawn("api")

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None and w.pid not in self.frozen]

    def served_model(self) -> str:
        """The name API clients ask for: the model the workers serve (an unknown one is a 404)."""
        with urllib.request.urlopen(self.api_url + "/api/tags", timeout=10) as response:
            return str(json.loads(response.read())["models"][0]["name"])

    def wait_ready(self, conn: Redis, workers: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len({w.pid for w in retrying(Worker.all, connection=conn)}) < workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"workers did not come up; see {self.tmp}")
            time.sleep(0.5)
        while True:
            try:
                urllib.request.urlopen(self.api_url + "/healthz", timeout=2).close()
                return
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise SystemExit(f"the API did not come up; see {self.tmp}") from None
                time.sleep(0.5)

    def thaw(self, now: float, everyone: bool = False) -> None:
        for pid, when in list(self.frozen.items()):
            if everyone or now >= when:
                os.killpg(pid, signal.SIGCONT)
                del self.frozen[pid]
                log(f"SIGCONT worker {pid}")

    def close(self) -> None:
        self.thaw(0, everyone=True)
        for process in [*self.workers, self.api]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers, self.api]:
            if process is not None:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.redis.stop()


def schedule(rng: random.Random, span: float, interval: float) -> list[tuple[float, str, float]]:
    """(seconds from start, fault, freeze seconds): the kinds in turn, shuffled each round."""
    plan: list[tuple[float, str, float]] = []
    at = interval
    kinds: list[str] = []
    while at < span:
        if not kinds:
            kinds = list(FAULTS)
            rng.shuffle(kinds)
        plan.append((at, kinds.pop(), rng.uniform(5, 60)))
        at += rng.uniform(0.5 * interval, 1.5 * interval)
    return plan


def inject(stack: Stack, kind: str, freeze_s: float, rng: random.Random, now: float) -> str:
    if kind == "kill worker":
        victims = stack.live_workers()
        if not victims:
            return "kill worker: none running (skipped)"
        victim = rng.choice(victims)
        os.killpg(victim.pid, signal.SIGKILL)
        stack.start_worker()
        return f"SIGKILL worker {victim.pid}; a replacement starts"
    if kind == "freeze worker":
        victims = stack.live_workers()
        if len(victims) < 2:  # keep one answering; the rest of the schedule still runs
            return "freeze worker: fewer than two running (skipped)"
        victim = rng.choice(victims)
        os.killpg(victim.pid, signal.SIGSTOP)
        stack.frozen[victim.pid] = now + freeze_s
        return f"SIGSTOP worker {victim.pid} for {freeze_s:.0f} s"
    if kind == "restart redis":
        stack.redis.kill()
        time.sleep(1)
        stack.redis.start()
        return "SIGKILL Redis, restarted on its AOF"
    assert stack.api is not None
    os.killpg(stack.api.pid, signal.SIGKILL)
    stack.api.wait()
    time.sleep(1)
    stack.start_api()
    return "SIGKILL the API process; restarted"


@dataclass
class ChatTurn:
    job_id: str
    conversation: str
    sent: float  # wall clock


@dataclass
class ApiResult:
    status: int  # 0: the connection broke (the API process was killed mid-request)
    seconds: float
    text: str = ""


@dataclass
class Clients:
    settings: Settings
    redis_url: str
    api_url: str
    model: str
    tokens: int
    stop_at: float
    max_turns: int
    pause: tuple[float, float]  # seconds between a conversation's questions
    chat: list[ChatTurn] = field(default_factory=list)
    api: list[ApiResult] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api_pause(self) -> tuple[float, float]:
        # An API client asks again soon after its answer unless a slower pace was asked for.
        return (0.2, 2.0) if self.pause == DEFAULT_PAUSE else self.pause

    def room(self) -> bool:
        with self.lock:
            return time.time() < self.stop_at and len(self.chat) < self.max_turns

    def converse(self, name: str, seed: int) -> None:
        rng = random.Random(seed)
        conn = Redis.from_url(self.redis_url)
        index = 0
        while self.room():
            turn = Turn(
                platform="discord", channel="soak", thread=name, user=name,
                message_id=uuid.uuid4().hex, text=f"Question {index} of {name}: say hi.",
                sampling=Sampling(max_new_tokens=self.tokens),
            )  # fmt: skip
            sent = time.time()
            job = retrying(enqueue_turn, conn, self.settings, turn)
            with self.lock:
                self.chat.append(ChatTurn(job.id, name, sent))
            index += 1
            time.sleep(rng.uniform(*self.pause))

    def ask_api(self, seed: int) -> None:
        rng = random.Random(seed)
        messages: list[dict[str, str]] = []
        while time.time() < self.stop_at:
            messages.append({"role": "user", "content": f"Question {len(messages)}: say hi."})
            body = {"model": self.model, "messages": messages[-6:], "stream": False,
                    "options": {"num_predict": self.tokens}}  # fmt: skip
            request = urllib.request.Request(
                self.api_url + "/api/chat", json.dumps(body).encode(),
                {"Content-Type": "application/json"},
            )  # fmt: skip
            began = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    text = json.loads(response.read())["message"]["content"]
                    result = ApiResult(response.status, time.monotonic() - began, text)
            except urllib.error.HTTPError as exc:
                result = ApiResult(exc.code, time.monotonic() - began, exc.read().decode()[:200])
            except (ConnectionRefusedError, urllib.error.URLError) as exc:
                if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
                    time.sleep(0.5)  # the API is restarting: nothing was accepted
                    messages.pop()
                    continue
                result = ApiResult(0, time.monotonic() - began)
            except OSError:  # reset or closed mid-request: the API process was killed
                result = ApiResult(0, time.monotonic() - began)
            with self.lock:
                self.api.append(result)
            if result.status == 200:
                messages.append({"role": "assistant", "content": result.text})
            else:
                messages.pop()
            time.sleep(rng.uniform(*self.api_pause))


def judge_chat(conn: Redis, turns: list[ChatTurn]) -> dict[str, object]:
    tally = Tally()
    for turn in sorted(turns, key=lambda t: t.job_id):  # job ids are in enqueue order
        tally.count(conn, turn.job_id, turn.conversation, turn.sent)
    return {
        "accepted": len(turns), "answered": tally.answered, "failed (message)": tally.failed,
        "cut off": 0, "lost": tally.lost, "unsettled": tally.unsettled,
        "doubled": tally.twice_done, "out of order": tally.disorder, "delays": tally.delays,
    }  # fmt: skip


# Refused up front (no worker up, Redis restarting, overload): the turn was not accepted.
REFUSED = (429, 503)


def judge_api(results: list[ApiResult]) -> dict[str, object]:
    ok = [r for r in results if r.status == 200 and r.text.strip()]
    accepted = [r for r in results if r.status not in REFUSED]
    reasons: dict[str, int] = {}
    for result in results:
        if result.status != 200:
            reason = f"{result.status or 'cut off'}: {result.text[:70]}"
            reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "accepted": len(accepted), "answered": len(ok),
        "failed (message)": sum(1 for r in accepted if r.status not in (0, 200)), "lost": 0,
        "unsettled": 0, "doubled": 0, "out of order": 0,
        "cut off": sum(1 for r in results if r.status == 0), "reasons": reasons,
        "delays": [r.seconds for r in ok],
    }  # fmt: skip


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=120, help="chat turns at most")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--api-conversations", type=int, default=4)
    parser.add_argument("--slack-conversations", type=int, default=3)
    parser.add_argument("--slack-turns", type=int, default=60, help="Slack questions at most")
    parser.add_argument("--discord-conversations", type=int, default=3)
    parser.add_argument("--discord-turns", type=int, default=60, help="Discord questions at most")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--minutes", type=float, default=4.0, help="the whole run, drain included")
    parser.add_argument("--drain", type=float, default=75.0)
    parser.add_argument("--fault-interval", type=float, default=15.0)
    parser.add_argument(
        "--pause", type=float, nargs=2, default=DEFAULT_PAUSE, metavar=("MIN", "MAX"),
        help="seconds between a conversation's questions (API clients: after the answer); "
        "slower than the workers answer keeps the delays about faults, not a backlog",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    tmp = Path(mkdtemp(prefix="corral-soak-"))
    stack = Stack(tmp, args.slots, args.tokens)
    stack.redis.start()
    conn = Redis.from_url(stack.redis.url)
    settings = load_settings(
        redis_url=stack.redis.url, queue_name=QUEUE, max_new_tokens=args.tokens,
        queue_max=0, queue_max_per_user=0, user_turns_per_minute=0,
    )  # fmt: skip
    try:
        for _ in range(args.workers):
            stack.start_worker()
        stack.start_api()
        log(f"starting {args.workers} workers and the API (logs in {tmp})")
        stack.wait_ready(conn, args.workers)
        return soak(args, rng, stack, conn, settings)
    finally:
        stack.close()


def soak(
    args: argparse.Namespace, rng: random.Random, stack: Stack, conn: Redis, settings: Settings
) -> int:
    began = time.time()
    send_s = args.minutes * 60 - args.drain
    pause = tuple(args.pause)
    clients = Clients(settings, stack.redis.url, stack.api_url, stack.served_model(), args.tokens,
                      began + send_s, args.turns, pause)  # fmt: skip
    threads = [
        threading.Thread(target=clients.converse, args=(f"conv-{i:03d}", args.seed * 1000 + i))
        for i in range(args.conversations)
    ] + [
        threading.Thread(target=clients.ask_api, args=(args.seed * 2000 + i,))
        for i in range(args.api_conversations)
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    slack = None
    if args.slack_conversations:
        from soak_slack import SlackSoak

        slack = SlackSoak(settings, stack.redis.url, args.slack_conversations, began + send_s,
                          args.seed, args.slack_turns, pause)  # fmt: skip
        threads.append(slack.start())
    discord = None
    if args.discord_conversations:
        from soak_discord import DiscordSoak

        discord = DiscordSoak(settings, stack.redis.url, args.discord_conversations,
                              began + send_s, args.seed, args.discord_turns, pause)  # fmt: skip
        threads.append(discord.start())
    plan = schedule(rng, send_s, args.fault_interval)
    injected: dict[str, int] = {kind: 0 for kind in FAULTS}
    for at, kind, freeze_s in plan:
        while time.time() - began < at:
            stack.thaw(time.time())
            time.sleep(0.2)
        what = inject(stack, kind, min(freeze_s, max(send_s - at, 5)), rng, time.time())
        if "skipped" not in what:
            injected[kind] += 1
        log(what)
    while time.time() < clients.stop_at:
        stack.thaw(time.time())
        time.sleep(0.2)
    stack.thaw(0, everyone=True)
    log("sending stopped; draining")
    for platform in (slack, discord):
        if platform is not None:
            platform.finish(time.time() + args.drain)
    for thread in threads:
        thread.join(timeout=args.drain)
    deadline = time.time() + args.drain
    while time.time() < deadline:
        pending = judge_chat(conn, clients.chat)["unsettled"]
        if not pending:
            break
        time.sleep(1)

    chat = judge_chat(conn, clients.chat)
    api = judge_api(clients.api)
    paths: list[tuple[str, dict[str, object]]] = [("chat (bots' path)", chat)]
    if slack is not None:
        from soak_slack import judge_slack

        slack_result = judge_slack(conn, slack)
        paths.append(("Slack (Bolt + fake)", slack_result))
    if discord is not None:
        from soak_discord import judge_discord

        discord_result = judge_discord(conn, discord)
        paths.append(("Discord (discord.py + fake)", discord_result))
    paths.append(("HTTP API /api/chat", api))
    columns = ["accepted", "answered", "failed (message)", "cut off", "lost", "unsettled",
               "doubled", "out of order"]  # fmt: skip
    rows = []
    for name, result in paths:
        delays = result["delays"]
        assert isinstance(delays, list)
        timing = [f"{pct(delays, 50):.1f}", f"{pct(delays, 99):.1f}",
                  f"{max(delays, default=float('nan')):.1f}"]  # fmt: skip
        rows.append([name, *(result[c] for c in columns), *timing])
    print(f"\nsoak: seed {args.seed}, {time.time() - began:.0f} s, {args.workers} workers x "
          f"{args.slots} slots, {args.tokens} tokens/answer, {pause[0]:g}-{pause[1]:g} s "
          f"between questions, machine: {machine()}")  # fmt: skip
    print("faults injected: " + ", ".join(f"{k} x{n}" for k, n in injected.items()))
    if slack is not None:
        print(f"Slack events the bot refused (not accepted): {slack.refused}; mentions it "
              f"acked but never enqueued: {slack_result['never queued']}")  # fmt: skip
    if discord is not None:
        print(f"Discord questions the bot never enqueued: {discord_result['never queued']}")
    print("API answers other than 200 (cut off: the API process was killed mid-request):")
    for reason, count in sorted(api["reasons"].items()):  # type: ignore[attr-defined]
        print(f"  {count} x {reason}")
    print()
    print_table(["path", *columns, "p50 s", "p99 s", "worst s"], rows)
    bad = any(r["lost"] or r["doubled"] or r["out of order"] for _, r in paths)
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RedisError as exc:
        raise SystemExit(f"Redis failed outside a fault: {exc}") from None
