"""The `tci` command: serve | keys create/list/revoke | sessions.

Contract other tools rely on: `tci keys create --name N` prints the new key as the last
line of stdout; every command reads TCI_DATA_DIR (and every other TCI_ setting)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from tci.config import Settings
from tci.errors import TCIError
from tci.sandbox import selfcheck
from tci.storage.store import Store


def _store(settings: Settings) -> Store:
    return Store(settings.database_url)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from tci.server.app import create_app

    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Refuse to start, with a clear message, when sandboxes cannot work on this host or a
    # protection is missing (a real probe sandbox is started and checked).
    asyncio.run(selfcheck.run(settings))
    store = _store(settings)
    if not store.list_keys():
        _, secret = store.create_key("default")
        print("=" * 72)
        print("No API key existed, so one was created (name 'default'). Use it as:")
        print(f"  export TOGETHER_BASE_URL=http://{settings.host}:{settings.port}/v1")
        print(f"  export TOGETHER_API_KEY={secret}")
        print("=" * 72, flush=True)
    app = create_app(settings, store)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                access_log=args.access_log, timeout_graceful_shutdown=10)
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    if args.keys_command == "create":
        info, secret = store.create_key(args.name)
        print(f"created key {info.name!r} (prefix {info.prefix})", file=sys.stderr)
        print(secret)
    elif args.keys_command == "list":
        print(f"{'NAME':<24} {'PREFIX':<12} {'CREATED':<26} STATUS")
        for key in store.list_keys():
            status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            print(f"{key.name:<24} {key.prefix:<12} {key.created_at.isoformat():<26} {status}")
    elif args.keys_command == "revoke":
        info = store.revoke_key(args.name)
        print(f"revoked key {info.name!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tci", description="Self-hosted code interpreter")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=cmd_serve)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; prints it as the last line")
    create.add_argument("--name", required=True)
    key_commands.add_parser("list", help="list keys")
    revoke = key_commands.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    keys.set_defaults(handler=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    try:
        return args.handler(args, settings)
    except TCIError as exc:
        print(f"tci: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
