"""HTTP behaviour common to all routes: errors, auth, size limit, health, metrics, cancel."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from test_api_fixtures import MODEL, FakeWorker, ServerThread, StartApi, free_port

from bots.api.settings import ApiSettings
from shared.cancel import CANCEL_KEY
from shared.settings import Settings

pytest_plugins = ["test_api_fixtures"]


def call(
    url: str, body: bytes | None = None, method: str | None = None, headers: dict | None = None
) -> tuple[int, dict[str, str], Any]:
    """A curl-style request that returns errors instead of raising them."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, head, json.loads(raw)
    except ValueError:
        return status, head, raw.decode()


def generate_body(**extra: Any) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hi", "stream": False, **extra}).encode()


def test_bad_requests_get_400_with_a_reason(api: ServerThread, fake_worker: FakeWorker) -> None:
    url = f"{api.url}/api/generate"
    status, _, body = call(url, b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, _, body = call(url, b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]
    status, _, body = call(url, json.dumps({"prompt": "hi"}).encode())
    assert status == 400 and "model" in body["error"]
    status, _, body = call(
        f"{api.url}/api/chat",
        json.dumps({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}).encode(),
    )
    assert status == 400 and "messages.0.role" in body["error"]
    status, _, body = call(
        f"{api.url}/api/chat",
        json.dumps({"model": MODEL, "messages": [{"role": "system", "content": "x"}]}).encode(),
    )
    assert status == 400 and "user message" in body["error"]
    status, _, body = call(f"{api.url}/v1/chat/completions", b"")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert fake_worker.turns == []


def test_unknown_routes_and_methods_are_json_404_and_405(api: ServerThread) -> None:
    status, head, body = call(f"{api.url}/api/nope")
    assert (status, body) == (404, {"error": "no route /api/nope"})
    assert head["Content-Type"].startswith("application/json")
    status, _, body = call(f"{api.url}/v1/nope")
    assert status == 404 and body["error"]["message"] == "no route /v1/nope"
    status, _, body = call(f"{api.url}/api/generate")  # GET
    assert status == 405 and "GET" in body["error"]


def test_token_is_required_and_compared_exactly(
    start_api: StartApi, fake_worker: FakeWorker
) -> None:
    server = start_api(token="tok-123")
    url = f"{server.url}/api/generate"
    for headers in (
        {},
        {"Authorization": "Bearer tok-12"},
        {"Authorization": "Basic tok-123"},
        {"Authorization": "Bearer tok-1234"},
    ):
        status, head, body = call(url, generate_body(), headers=headers)
        assert status == 401, headers
        assert head["WWW-Authenticate"] == "Bearer"
        assert "tok-123" not in json.dumps(body)
    status, _, body = call(url, generate_body(), headers={"Authorization": "Bearer tok-123"})
    assert status == 200 and body["done"] is True
    # The page, its files and the health check stay reachable without a token.
    assert call(f"{server.url}/")[0] == 200
    assert call(f"{server.url}/static/app.js")[0] == 200
    assert call(f"{server.url}/healthz")[0] == 200
    assert call(f"{server.url}/metrics")[0] == 401


def test_large_bodies_get_413(start_api: StartApi, fake_worker: FakeWorker) -> None:
    server = start_api(max_body=2048)
    big = generate_body(prompt="x" * 4000)
    status, _, body = call(f"{server.url}/api/generate", big)
    assert status == 413 and "2048" in body["error"]
    # Without a Content-Length the limit holds while the body is read.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=iter([big[:1000], big[1000:]]),
        encode_chunked=True,
        headers={"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["message"].startswith("request body is larger")
    conn.close()
    assert fake_worker.turns == []
    assert call(f"{server.url}/api/generate", generate_body())[0] == 200


def test_no_worker_means_503_and_nothing_queued(api: ServerThread, redis_conn: Redis) -> None:
    status, _, body = call(f"{api.url}/api/generate", generate_body())
    assert status == 503 and "corral worker" in body["error"]
    status, _, body = call(
        f"{api.url}/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).encode(),
    )
    assert status == 503 and body["error"]["message"]
    assert redis_conn.llen("rq:queue:corral-test") == 0
    status, _, body = call(f"{api.url}/healthz")
    assert status == 200 and body["workers"] == 0


def test_metrics_count_requests_tokens_and_queue(
    api: ServerThread, fake_worker: FakeWorker
) -> None:
    call(f"{api.url}/api/generate", generate_body())
    call(f"{api.url}/api/generate", generate_body())
    call(f"{api.url}/api/generate", b"{")
    call(f"{api.url}/no/such/path")
    status, head, text = call(f"{api.url}/metrics")
    assert status == 200 and head["Content-Type"].startswith("text/plain")
    lines = text.splitlines()
    assert 'corral_api_requests_total{route="/api/generate",method="POST",status="200"} 2' in lines
    assert 'corral_api_requests_total{route="/api/generate",method="POST",status="400"} 1' in lines
    assert 'corral_api_requests_total{route="unmatched",method="GET",status="404"} 1' in lines
    assert "corral_api_tokens_generated_total 14" in lines
    assert 'corral_api_turns_total{finish_reason="stop"} 2' in lines
    assert "corral_queue_depth 0" in lines
    assert "corral_workers 1" in lines
    assert "# TYPE corral_api_requests_total counter" in lines


def test_client_disconnect_cancels_a_running_turn(
    api: ServerThread, fake_worker: FakeWorker, redis_conn: Redis
) -> None:
    fake_worker.reply = " ".join(["word"] * 200)
    fake_worker.delay = 0.05  # ten seconds in all, unless cancelled
    body = json.dumps({"model": MODEL, "prompt": "long"}).encode()
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert b"200 OK" in sock.recv(4096)  # the stream has started
    sock.close()
    deadline = time.monotonic() + 5
    while not fake_worker.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fake_worker.cancelled) == 1
    assert redis_conn.exists(CANCEL_KEY.format(job_id=fake_worker.cancelled[0]))


def test_client_disconnect_drops_a_queued_turn(
    start_api: StartApi, settings: Settings, redis_conn: Redis
) -> None:
    # No worker at all: the turn waits in the queue until its caller gives up.
    server = start_api(require_worker=False)
    body = generate_body()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    deadline = time.monotonic() + 5
    while not redis_conn.llen("rq:queue:corral-test") and time.monotonic() < deadline:
        time.sleep(0.05)
    (job_id,) = [j.decode() for j in redis_conn.lrange("rq:queue:corral-test", 0, -1)]
    sock.close()
    deadline = time.monotonic() + 5
    job = Job.fetch(job_id, connection=redis_conn)
    while job.get_status() != JobStatus.CANCELED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.get_status() == JobStatus.CANCELED
    assert redis_conn.llen("rq:queue:corral-test") == 0


def test_redis_down_gives_503_without_leaking_the_url(settings: Settings) -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    server = ServerThread(settings, dead, ApiSettings(token=None))
    try:
        probed = time.monotonic()
        status, _, body = call(f"{server.url}/healthz")
        assert status == 503 and body["redis"] is False
        # At once (a load balancer's probe times out), though requests wait out a restart.
        assert time.monotonic() - probed < 2
        status, _, body = call(f"{server.url}/api/generate", generate_body())
        assert status == 503 and "unreachable" in body["error"]
        assert "hunter2" not in json.dumps(body)
        status, _, text = call(f"{server.url}/metrics")
        assert status == 200 and "corral_api_requests_total" in text
        assert "corral_queue_depth" not in text
    finally:
        server.close()


def test_healthz_counts_worker_processes_not_their_slots(
    api: ServerThread, redis_conn: Redis, settings: Settings
) -> None:
    """A worker process registers one RQ worker per slot; /healthz says processes."""
    queue = Queue(settings.queue_name, connection=redis_conn)
    registered = []
    for process, slots in ((4001, 16), (4002, 2)):  # two processes, as on two GPUs
        for slot in range(slots):
            worker = Worker([queue], connection=redis_conn, name=f"p{process}-slot{slot}")
            worker.pid = process
            worker.register_birth()
            registered.append(worker)
    try:
        status, _, body = call(f"{api.url}/healthz")
        assert status == 200
        assert (body["workers"], body["slots"], body["queue_depth"]) == (2, 18, 0)
    finally:
        for worker in registered:
            worker.register_death()
