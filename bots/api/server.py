"""`corral api`: the HTTP server (Ollama and OpenAI dialects, metrics, web chat page).

Every answer goes through the same queue and workers as the chat bots; this
process only translates HTTP to turns and streams events back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from rq import Worker

from bots.api import completions as api_completions
from bots.api import embeddings as api_embeddings
from bots.api import ollama as api_ollama
from bots.api import openai as api_openai
from bots.api.callers import CALLERS, Callers
from bots.api.http import RUNNER, make_middlewares
from bots.api.metrics import ApiMetrics
from bots.api.models import MODELS, ModelRouter
from bots.api.settings import ApiSettings
from bots.api.turns import TurnRunner
from bots.client import TurnClient
from shared import usage
from shared.settings import Settings
from shared.workers import worker_processes

log = logging.getLogger("corral.api")

WEB_DIR = Path(__file__).parent / "web"
METRICS = web.AppKey("metrics", ApiMetrics)
CLIENT = web.AppKey("client", TurnClient)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    """Liveness plus what a load balancer may want: can we reach Redis, is a worker up.

    ``workers`` counts worker processes; ``slots`` the turns they run at once (each
    process registers one RQ worker per slot). The web page shows both.
    """
    client = request.app[CLIENT]
    try:
        if not await client.reachable():  # at once: a probe must not wait out a restart
            raise ConnectionError("Redis is down")
        status = await client.status()
        registered = await asyncio.to_thread(Worker.all, connection=client.redis)
    except Exception:  # noqa: BLE001 - any Redis failure means "not healthy"
        return web.json_response({"status": "error", "redis": False}, status=503)
    return web.json_response(
        {
            "status": "ok",
            "redis": True,
            "workers": worker_processes(registered),
            "slots": status.workers,
            "queue_depth": status.queue_depth,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    depth: int | None = None
    workers: int | None = None
    tokens: dict[str, dict[str, usage.Tokens]] | None = None
    try:
        client = request.app[CLIENT]
        if not await client.reachable():  # at once: a scrape must not wait out a restart
            raise ConnectionError("Redis is down")
        status = await client.status()
        depth, workers = status.queue_depth, status.workers
        tokens = {
            kind: await asyncio.to_thread(usage.read, client.redis, kind) for kind in usage.KINDS
        }
    except Exception:  # noqa: BLE001 - Redis down: still report this process's counters
        log.warning("metrics: could not read the queue status")
    text = request.app[METRICS].render(depth, workers, tokens)
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def build_app(
    settings: Settings, redis_url: str, api_settings: ApiSettings | None = None
) -> web.Application:
    api = api_settings or ApiSettings()
    token = api.token.get_secret_value() if api.token else None
    metrics_ = ApiMetrics()
    callers = Callers(token)
    app = web.Application(
        middlewares=make_middlewares(metrics_, token, api.max_body, callers),
        client_max_size=api.max_body,
    )
    app[METRICS] = metrics_
    app[CALLERS] = callers

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Created inside the running loop: the asyncio Redis client binds to it.
        client = TurnClient(settings, redis_url)
        app[CLIENT] = client
        app[MODELS] = router = ModelRouter(client, settings)
        app[RUNNER] = TurnRunner(
            client, settings, metrics_, api.require_worker, queue_model=router.queue_model
        )
        yield
        await client.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", WEB_DIR, show_index=False)
    api_ollama.add_routes(app)
    api_openai.add_routes(app)
    api_completions.add_routes(app)
    api_embeddings.add_routes(app)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving ``app``; shared by :func:`run` and the tests so both behave alike."""
    # handler_cancellation: when a caller disconnects, its handler is cancelled, which
    # cancels the turn (see TurnRunner.run) instead of generating for nobody.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def run(settings: Settings, redis_url: str) -> None:
    """Serve until interrupted (blocking)."""
    api = ApiSettings()
    app = build_app(settings, redis_url, api)

    def serving(_: str) -> None:  # called by aiohttp once the port is bound, not before
        auth = "on" if api.token else "off"
        log.info("corral api on http://%s:%d (auth %s)", api.host, api.port, auth)

    web.run_app(
        app,
        host=api.host,
        port=api.port,
        handler_cancellation=True,
        access_log=None,
        print=serving,
    )


__all__ = ["build_app", "run", "start"]
