"""The ``corral`` command.

Imports are inside the subcommands so that a bot never loads torch and
``corral --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from shared.settings import Settings, SettingsError, load_settings

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_url(settings: Settings) -> str:
    return settings.redis_url or DEFAULT_REDIS_URL


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.runner import run_worker

    run_worker(settings, _redis_url(settings), burst=args.burst)
    return 0


def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    from bots.local_chat import chat

    chat(settings, _redis_url(settings))
    return 0


def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from shared.contract import Message
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
    result = render(tokenizer, messages, generation_config)
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


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    from shared.team_config import ConfigError, load_config_file

    try:
        config = load_config_file(args.file)
    except ConfigError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    models, channels = len(config.models.names()), len(config.channels)
    print(f"{args.file}: ok ({models} model(s), {channels} channel(s))")
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from corral.supervisor import run_stack

    return run_stack(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral", description="Self-hosted team assistant.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start everything the configuration asks for").set_defaults(
        func=cmd_run
    )
    worker = sub.add_parser("worker", help="load the model and answer queued turns")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("chat", help="chat in the terminal through a running stack").set_defaults(
        func=cmd_chat
    )
    render = sub.add_parser("render", help="show exactly what the model would be fed")
    render.add_argument("--model", help="model directory, or a Llama 3 tokenizer.model file")
    render.add_argument("--json", action="store_true", help="one JSON object on stdout")
    render.set_defaults(func=cmd_render)
    config = sub.add_parser("config", help="team config file (corral.yaml) tools")
    check = config.add_subparsers(dest="action", required=True).add_parser(
        "check", help="validate a config file without starting anything"
    )
    check.add_argument("file", help="path to corral.yaml")
    check.set_defaults(func=cmd_config)
    for name, text in (("discord", "run the Discord bot"), ("slack", "run the Slack app"),
                       ("api", "serve the Ollama/OpenAI-style HTTP API and web chat")):  # fmt: skip
        sub.add_parser(name, help=text).set_defaults(func=cmd_platform)
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
        from worker.model_source import ModelUnavailable

        if isinstance(exc, ModelUnavailable):
            print(f"corral: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
