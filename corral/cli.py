"""The ``corral`` command.

Imports are inside the subcommands so that a bot never loads torch and
``corral --help`` answers at once. The mistakes an operator meets first
(a taken port, an unreachable Redis, a bad setting) end in one line saying
what to change and a non-zero exit (corral.operator_errors); a traceback
only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import textwrap
from importlib import resources

from corral.operator_errors import (
    OperatorError,
    explain,
    require_free_port,
    require_redis,
    shown_url,
)
from shared.settings import Settings, SettingsError, load_settings

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CONFIG_ACTIONS = {
    "check": "validate a team config file without starting anything",
    "example": "print a commented example corral.yaml",
    "env": "print a commented .env with every setting (the repository's .env.example)",
}


def _redis_url(settings: Settings) -> str:
    return settings.redis_url or DEFAULT_REDIS_URL


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    require_redis(settings, _redis_url(settings))  # before importing torch and loading a model
    from worker.runner import run_worker

    run_worker(settings, _redis_url(settings), burst=args.burst)
    return 0


def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    from bots.local_chat import chat

    require_redis(settings, _redis_url(settings))
    chat(settings, _redis_url(settings))
    return 0


def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from shared.contract import ContractError, Message
    from shared.history import ContextOverflow
    from worker.prompt import TemplateError
    from worker.render import load_tokenizer, render

    try:
        raw = json.load(sys.stdin)
        messages = [Message.model_validate(item) for item in raw]
    except (ValueError, TypeError) as exc:
        print(
            f"corral render: stdin must be a JSON list of {{role, content}}: {exc}", file=sys.stderr
        )
        return 2
    tokenizer, generation_config = load_tokenizer(args.model, settings)
    try:
        result, dropped = render(tokenizer, messages, settings, generation_config)
    except (ContractError, TemplateError) as exc:
        print(f"corral render: {exc}", file=sys.stderr)
        return 2
    except ContextOverflow as exc:
        print(
            f"corral render: the conversation needs {exc.needed} tokens; the budget is "
            f"{exc.budget} (CORRAL_CONTEXT_TOKENS - CORRAL_MAX_NEW_TOKENS)",
            file=sys.stderr,
        )
        return 2
    if dropped:
        print(f"corral render: {dropped} older message(s) left out to fit", file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(result["prompt"])
        print(f"input_ids: {result['input_ids']}")
        print(f"stop_token_ids: {result['stop_token_ids']}")
    return 0


def cmd_platform(settings: Settings, args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(
        f"bots.{args.command}.bot" if args.command != "api" else "bots.api.server"
    )
    module.run(settings, _redis_url(settings))
    return 0


def _example(name: str) -> str:
    return (resources.files("corral") / "examples" / name).read_text(encoding="utf-8")


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    from shared.team_config import CONFIG_ENV, ConfigError, load_config_file

    if args.action is None:
        print("corral config: what to do with the team config (corral.yaml):\n")
        for action, text in CONFIG_ACTIONS.items():
            print(f"  corral config {action:<8} {text}")
        print("\n`corral config ACTION --help` says more.")
        return 0
    if args.action in ("example", "env"):
        print(_example("corral.yaml" if args.action == "example" else "env.example"), end="")
        return 0
    path = args.file or os.environ.get(CONFIG_ENV, "")
    if not path:
        raise OperatorError(f"which file? give its path, or set {CONFIG_ENV}", code=2)
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    models, channels = len(config.models.names()), len(config.channels)
    print(f"{path}: ok ({models} model(s), {channels} channel(s))")
    return 0


def _first_start_note(settings: Settings) -> None:
    """Say why the first start takes a minute (the worker's log says it only to the log)."""
    if settings.model or settings.engine != "transformers":
        return
    from worker.model_source import embedded_model_dir

    target = embedded_model_dir(settings.cache_dir)
    if not (target / "model.safetensors").exists():
        print(
            f"first start: converting the embedded model to {target} "
            "(once; about a minute on a laptop)",
            flush=True,
        )


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from corral.supervisor import run_stack

    if settings.redis_url:
        require_redis(settings, settings.redis_url)
    if settings.api:
        from bots.api.settings import ApiSettings

        api = ApiSettings()
        require_free_port(api.host, api.port, "CORRAL_API_PORT")
    _first_start_note(settings)
    return run_stack(settings)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Also the compose health checks: exit 0 only when what was asked about is up."""
    if args.api:
        import urllib.request
        from urllib.error import URLError

        try:
            with urllib.request.urlopen(args.api, timeout=5) as response:
                print(response.read().decode(errors="replace"))
                return 0
        except (URLError, OSError) as exc:
            print(f"corral status: {args.api} does not answer: {exc}", file=sys.stderr)
            return 1
    from redis import Redis
    from rq import Worker

    from shared.turnqueue import queue_depth
    from shared.workers import worker_processes

    url = _redis_url(settings)
    require_redis(settings, url)
    conn = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)
    workers = Worker.all(connection=conn)
    processes = worker_processes(workers)
    here = socket.gethostname()
    print(f"redis: {shown_url(url)} ok")
    print(f"workers: {processes} process(es), {len(workers)} slot(s)")
    print(f"queued turns: {queue_depth(conn, settings)}")
    conn.close()
    if args.this_host:
        return 0 if any(w.hostname == here for w in workers) else 1
    return 0 if workers else 1


# Per subcommand: one-line summary, a description, and the settings it reads. The full
# list, with defaults, is in the README's table and `corral config env`.
SHARED = "REDIS_URL CORRAL_QUEUE_NAME CORRAL_CONFIG"
MODEL = "CORRAL_MODEL CORRAL_MODEL_NAME HF_TOKEN CORRAL_CACHE_DIR"
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": (
        "start everything the configuration asks for",
        "With no platform tokens: a private Redis (unless REDIS_URL is set), a worker and a "
        "chat in this terminal. With DISCORD_TOKEN / Slack tokens: the worker and those bots; "
        "CORRAL_API=1 adds the HTTP API and web chat. Prints the addresses it serves; logs go "
        "to CORRAL_CACHE_DIR/logs. Ctrl-C or SIGTERM stops everything in order.",
        "SHARED MODEL CORRAL_API CORRAL_API_HOST CORRAL_API_PORT DISCORD_TOKEN SLACK_BOT_TOKEN "
        "SLACK_APP_TOKEN SLACK_SIGNING_SECRET",
    ),
    "worker": (
        "load the model and answer queued turns",
        "One per GPU; start more for more GPUs. Registers in Redis once the model is loaded; "
        "SIGTERM lets running turns finish (CORRAL_SHUTDOWN_GRACE), then hands the rest back.",
        "SHARED MODEL CORRAL_DEVICE CORRAL_QUANTIZATION CORRAL_SLOTS CORRAL_KV_CACHE_TOKENS "
        "CORRAL_SYSTEM_PROMPT CORRAL_CONTEXT_TOKENS CORRAL_MAX_NEW_TOKENS CORRAL_TOOLS "
        "CORRAL_ENGINE CORRAL_SHUTDOWN_GRACE",
    ),
    "chat": (
        "chat in the terminal through a running stack",
        "Needs a running Redis and worker (e.g. `corral run` elsewhere, or docker compose). "
        "/reset forgets the conversation, /quit leaves.",
        "REDIS_URL CORRAL_QUEUE_NAME CORRAL_SYSTEM_PROMPT",
    ),
    "render": (
        "show exactly what the model would be fed",
        "Reads a JSON list of {role, content} on stdin and prints the prompt text, input_ids "
        "and stop_token_ids the worker would use: without a system message CORRAL_SYSTEM_PROMPT "
        "is added, and the oldest history is left out past the context budget. Only the "
        "tokenizer is loaded.",
        "CORRAL_MODEL CORRAL_GGUF_FILE CORRAL_CACHE_DIR CORRAL_SYSTEM_PROMPT "
        "CORRAL_CONTEXT_TOKENS CORRAL_MAX_NEW_TOKENS",
    ),
    "config": (
        "team config file (corral.yaml) tools",
        "Permissions, models, per-channel prompts and limits live in one file (docs/team.md).",
        "CORRAL_CONFIG",
    ),
    "status": (
        "is Redis up, how many workers, how long is the queue",
        "Exits 0 when a worker is registered (with --this-host: one on this machine; with "
        "--api URL: when that URL answers); the compose health checks use it.",
        "REDIS_URL CORRAL_QUEUE_NAME",
    ),
    "discord": (
        "run the Discord bot",
        "Set-up in docs/discord.md. Needs a running Redis and worker.",
        "SHARED DISCORD_TOKEN CORRAL_DISCORD_ALLOWED_GUILDS CORRAL_DISCORD_ALLOWED_CHANNELS "
        "CORRAL_DISCORD_ALLOW_DMS CORRAL_DISCORD_CHANNEL_PROMPTS CORRAL_DISCORD_SYNC_COMMANDS",
    ),
    "slack": (
        "run the Slack app (Socket Mode or HTTP)",
        "Set-up in docs/slack.md. Needs a running Redis and worker.",
        "SHARED SLACK_BOT_TOKEN SLACK_APP_TOKEN SLACK_SIGNING_SECRET CORRAL_SLACK_MODE "
        "CORRAL_SLACK_PORT CORRAL_SLACK_ALLOWED_CHANNELS",
    ),
    "api": (
        "serve the Ollama/OpenAI-style HTTP API and web chat",
        "On http://127.0.0.1:11434/ by default (docs/api.md). The page, /static and /healthz "
        "stay public; everything else needs CORRAL_API_TOKEN when it is set.",
        "REDIS_URL CORRAL_QUEUE_NAME CORRAL_API_HOST CORRAL_API_PORT CORRAL_API_TOKEN "
        "CORRAL_API_MAX_BODY CORRAL_API_REQUIRE_WORKER",
    ),
}


def _subparser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    common: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    summary, description, reads = COMMANDS[name]
    groups = {"SHARED": SHARED, "MODEL": MODEL}
    names = [name for word in reads.split() for name in groups.get(word, word).split()]
    text = f"{summary[0].upper()}{summary[1:]}.\n\n{textwrap.fill(description, 78)}"
    settings = textwrap.fill(", ".join(names), 78, initial_indent="  ", subsequent_indent="  ")
    return sub.add_parser(
        name,
        help=summary,
        description=text,
        epilog="settings it reads (environment or .env; all of them: README, "
        f"`corral config env`):\n{settings}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Self-hosted team assistant. `corral run` starts everything; "
        "`corral COMMAND --help` says what each command does and which settings it reads.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    # -v is accepted after the command too (`corral api -v`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _subparser(sub, "run", common).set_defaults(func=cmd_run)
    worker = _subparser(sub, "worker", common)
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)
    _subparser(sub, "chat", common).set_defaults(func=cmd_chat)
    render = _subparser(sub, "render", common)
    render.add_argument("--model", help="model directory, hub id, or a Llama 3 tokenizer.model")
    render.add_argument("--json", action="store_true", help="one JSON object on stdout")
    render.set_defaults(func=cmd_render)
    config = _subparser(sub, "config", common)
    config.set_defaults(func=cmd_config)
    actions = config.add_subparsers(dest="action", metavar="ACTION")
    check = actions.add_parser("check", help=CONFIG_ACTIONS["check"], parents=[common])
    check.add_argument("file", nargs="?", help="path to corral.yaml (default: $CORRAL_CONFIG)")
    for action in ("example", "env"):
        actions.add_parser(action, help=CONFIG_ACTIONS[action], parents=[common])
    status = _subparser(sub, "status", common)
    status.add_argument(
        "--this-host", action="store_true", help="succeed only if a worker runs on this host"
    )
    status.add_argument("--api", metavar="URL", help="succeed if this URL (e.g. /healthz) answers")
    status.set_defaults(func=cmd_status)
    for name in ("discord", "slack", "api"):
        _subparser(sub, name, common).set_defaults(func=cmd_platform)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
        return int(args.func(settings, args) or 0)
    except SettingsError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        return explain(exc, args.command, lambda: _redis_url(load_settings()))


if __name__ == "__main__":
    sys.exit(main())
