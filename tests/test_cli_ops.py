"""The `corral` command for an operator (issue 16): help that names the settings, one-line
errors for the first mistakes (no traceback unless -v), `corral status`, `corral config`
alone, and `corral run` saying what it serves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, Worker
from setting_names import every_setting, named_in_code

from corral.cli import COMMANDS, build_parser, main
from corral.redis_server import free_port
from corral.supervisor import _last_line
from shared.settings import load_settings
from worker.model_source import materialize_embedded

ROOT = Path(__file__).resolve().parents[1]


def corral(
    *args: str, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "REDIS_URL"))}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args],
        env=environ, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def dead_redis_url() -> str:
    return f"redis://:hunter2@127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_describes_options_and_settings(command: str) -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    text = sub.format_help()
    summary, description, _ = COMMANDS[command]
    assert summary[1:] in text and description.split()[0] in text
    assert "options:" in text and "--help" in text
    reads = text.split("settings it reads", 1)[1].split("\n", 1)[1]  # the lines after
    names = {word.strip(",") for word in reads.split()}
    known = every_setting() | named_in_code()
    assert names and names <= known, names - known


def test_option_help_is_shown(tmp_path: Path) -> None:
    out = corral("render", "--help", cwd=tmp_path).stdout
    assert "--model" in out and "CORRAL_SYSTEM_PROMPT" in out
    out = corral("status", "--help", cwd=tmp_path).stdout
    assert "--this-host" in out and "--api URL" in out


def test_config_alone_lists_its_actions(tmp_path: Path) -> None:
    result = corral("config", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    for action in ("check", "example", "env"):
        assert f"corral config {action}" in result.stdout
    example = tmp_path / "corral.yaml"
    example.write_text(corral("config", "example", cwd=tmp_path).stdout)
    checked = corral("config", "check", cwd=tmp_path, CORRAL_CONFIG=str(example))
    assert checked.returncode == 0 and ": ok (2 model(s), 2 channel(s))" in checked.stdout
    assert "CORRAL_CONFIG" in one_line_error(corral("config", "check", cwd=tmp_path))


def test_api_port_in_use_is_one_line_naming_port_and_setting(
    tmp_path: Path, taken_port: int, redis_url: str
) -> None:
    result = corral("api", cwd=tmp_path, REDIS_URL=redis_url, CORRAL_API_PORT=str(taken_port))
    line = one_line_error(result)
    assert f"port {taken_port}" in line and "CORRAL_API_PORT" in line
    verbose = corral(
        "-v", "api", cwd=tmp_path, REDIS_URL=redis_url, CORRAL_API_PORT=str(taken_port)
    )
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_run_with_the_api_port_taken_stops_before_starting_anything(
    tmp_path: Path, taken_port: int
) -> None:
    result = corral(
        "run", cwd=tmp_path, CORRAL_API="1", CORRAL_API_PORT=str(taken_port),
        CORRAL_CACHE_DIR=str(tmp_path / "cache"),
    )  # fmt: skip
    line = one_line_error(result)
    assert f"port {taken_port}" in line and "CORRAL_API_PORT" in line
    assert "private Redis" not in result.stdout and not (tmp_path / "cache" / "redis").exists()


@pytest.mark.parametrize("command", ["chat", "worker", "run", "status"])
def test_unreachable_redis_is_one_line_with_the_url_and_what_to_start(
    tmp_path: Path, command: str
) -> None:
    url = dead_redis_url()
    started = time.monotonic()
    line = one_line_error(corral(command, cwd=tmp_path, REDIS_URL=url))
    assert time.monotonic() - started < 30  # the worker says so before loading a model
    assert url.replace(":hunter2@", ":***@") in line and "hunter2" not in line
    assert "REDIS_URL" in line and "start Redis" in line


def test_chat_without_a_stack_says_to_start_one(tmp_path: Path) -> None:
    # No REDIS_URL: the default address, where nothing listens in a test machine's port
    # 6379 unless a developer runs Redis there.
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6379)) == 0:
            pytest.skip("a Redis is listening on 127.0.0.1:6379")
    line = one_line_error(corral("chat", cwd=tmp_path))
    assert "corral run" in line and "redis://127.0.0.1:6379/0" in line


def test_unexpected_errors_are_one_line_unless_verbose(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import corral.cli as cli

    def broken(settings: object, args: object) -> int:
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "cmd_status", broken)
    monkeypatch.chdir("/")
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KeyError" in err and "corral -v status" in err
    with pytest.raises(KeyError):
        main(["-v", "status"])
    with pytest.raises(KeyError):
        main(["status", "-v"])  # -v after the command works too


def test_status_counts_processes_and_checks_this_host(tmp_path: Path, redis_url: str) -> None:
    down = corral("status", cwd=tmp_path, REDIS_URL=redis_url)
    assert down.returncode == 1 and "workers: 0 process(es), 0 slot(s)" in down.stdout
    conn = Redis.from_url(redis_url)
    queue = Queue("corral", connection=conn)
    slots = [Worker([queue], connection=conn, name=f"slot-{i}") for i in range(3)]
    for slot in slots:
        slot.register_birth()
    try:
        up = corral("status", "--this-host", cwd=tmp_path, REDIS_URL=redis_url)
        assert up.returncode == 0 and "workers: 1 process(es), 3 slot(s)" in up.stdout
        for slot in slots:
            slot.register_death()
        slots = [Worker([queue], connection=conn, name=f"far-{i}") for i in range(2)]
        for slot in slots:
            slot.hostname = "another-host"
            slot.register_birth()
        elsewhere = corral("status", "--this-host", cwd=tmp_path, REDIS_URL=redis_url)
        assert elsewhere.returncode == 1
        assert corral("status", cwd=tmp_path, REDIS_URL=redis_url).returncode == 0
    finally:
        for slot in slots:
            slot.register_death()
        conn.close()


def test_status_api_probe(tmp_path: Path) -> None:
    result = corral("status", "--api", f"http://127.0.0.1:{free_port()}/healthz", cwd=tmp_path)
    assert result.returncode == 1 and "does not answer" in result.stderr


def test_first_start_says_it_converts_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from corral.cli import _first_start_note

    _first_start_note(load_settings(cache_dir=tmp_path))
    assert "first start: converting the embedded model" in capsys.readouterr().out
    (tmp_path / "models").symlink_to(materialize_embedded(load_settings().cache_dir).parent)
    _first_start_note(load_settings(cache_dir=tmp_path))
    _first_start_note(load_settings(cache_dir=tmp_path / "x", model="/some/model"))
    assert capsys.readouterr().out == ""


def test_a_child_failure_shows_its_last_line(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    log.write_text("12:00 INFO corral.api: starting\ncorral: port 11434 on 127.0.0.1 is in use\n")
    assert _last_line(log) == "corral: port 11434 on 127.0.0.1 is in use"
    log.write_text("")
    assert _last_line(log) == "(no output)"


@pytest.mark.model
def test_run_prints_the_addresses_it_serves(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(materialize_embedded(load_settings().cache_dir).parent)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "REDIS_URL"))}
    environ = {k: v for k, v in environ.items() if "TOKEN" not in k and "SECRET" not in k}
    environ.update(
        CORRAL_API="1", CORRAL_API_PORT=str(port), CORRAL_CACHE_DIR=str(cache),
        CORRAL_SLOTS="1", CORRAL_KV_CACHE_TOKENS="2048",
    )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "run"],
        env=environ, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while not any(line.startswith("health:") for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, lines
            lines.append(process.stdout.readline().strip())
        base = f"http://127.0.0.1:{port}"
        assert f"web chat: {base}/" in lines
        assert any(line.startswith(f"Ollama API: {base}/api/chat") for line in lines)
        assert any(line.startswith(f"OpenAI API: {base}/v1/chat/completions") for line in lines)
        import urllib.request

        deadline = time.monotonic() + 60
        while True:  # the printed address is the one served
            try:
                with urllib.request.urlopen(f"{base}/", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=90)


def test_redis_lost_after_start_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from corral.operator_errors import explain

    monkeypatch.chdir("/")
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.5:6379/0")
    code = explain(RedisConnectionError("Error 111"), "chat", lambda: "redis://10.0.0.5:6379/0")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "redis://10.0.0.5:6379/0 (REDIS_URL)" in err and "start Redis there" in err
