"""The `tci` command: serve | hosts | keys create/list/revoke | mcp | batch | usage.

Contract other tools rely on: `tci keys create --name N` prints the new key as the last
line of stdout; every command reads TCI_DATA_DIR (and every other TCI_ setting)."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Callable
from typing import IO

from tci.config import Settings
from tci.errors import TCIError
from tci.storage.store import Store


def _store(settings: Settings) -> Store:
    return Store(settings.database_url, settings.database_timeout_seconds)


def hold_data_dir(settings: Settings) -> IO[str]:
    """One server per data directory, held by an flock for the process's life. A second
    server on the same directory would mark the first one's live sessions as ended and clear
    the sandbox directory under them; it refuses to start instead."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(settings.data_dir / "server.lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise SystemExit(
            f"tci serve: another server (pid {holder}) is using {settings.data_dir}; stop it, "
            "or give this one its own TCI_DATA_DIR"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from tci.server.app import create_app

    if args.host:
        settings.host = args.host
    if args.port is not None:
        settings.port = args.port
    if args.ray_address:
        settings.ray_address = args.ray_address
    from tci.server.logging import configure

    configure(settings.log_format)
    data_dir_lock = hold_data_dir(settings)
    # The host refuses to start, with a clear message, when sandboxes cannot work here or a
    # protection is missing: it starts a real probe sandbox first (hosts/selfcheck.py).
    store = _store(settings)
    if not store.list_keys():
        _, secret = store.create_key("default")
        print("=" * 72)
        print("No API key existed, so one was created (name 'default'). Use it as:")
        print(f"  export TOGETHER_BASE_URL=http://{settings.host}:{settings.port}/v1")
        print(f"  export TOGETHER_API_KEY={secret}")
        print("=" * 72, flush=True)
    print(f"web console: http://{settings.host}:{settings.port}/ (sign in with an API key)",
          flush=True)
    app = create_app(settings, store)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                    log_config=None, access_log=args.access_log,
                    timeout_graceful_shutdown=settings.shutdown_grace_seconds)
    except SystemExit:
        # A start-up refusal (no sandbox can start here, a protection is missing, settings
        # the machine cannot honour): said plainly, exit status 1, as for any other error.
        failure = getattr(app.state, "startup_error", None)
        if failure is None:
            raise
        raise failure from None
    data_dir_lock.close()
    return 0


def cmd_hosts(args: argparse.Namespace, settings: Settings) -> int:
    from tci.cluster.listing import list_hosts

    settings.ray_address = args.ray_address or settings.ray_address
    if not settings.ray_address:
        print("tci: a Ray cluster is needed: --ray-address HEAD:PORT or TCI_RAY_ADDRESS",
              file=sys.stderr)
        return 2
    return list_hosts(settings)


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


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import datetime

    from tci.metering import cost, window

    try:
        since, until = window(
            datetime.fromisoformat(args.since) if args.since else None,
            datetime.fromisoformat(args.until) if args.until else None,
        )
    except ValueError as exc:
        print(f"tci: bad date: {exc}", file=sys.stderr)
        return 2
    rows = _store(settings).usage(since, until)
    print(f"usage of sessions started from {since.isoformat()} to {until.isoformat()}"
          " (live sessions' CPU is counted when they end)")
    print(f"{'NAME':<24} {'SESSIONS':>9} {'EXECUTIONS':>11} {'CPU_SECONDS':>12} {'RUNS':>9} "
          f"{'RUN_WALL_SECONDS':>17} {'COST_USD':>10}")
    for row in rows.values():
        price = cost(row.sessions, settings.price_per_session_usd, row.runs.count,
                     settings.price_per_run_usd)
        print(f"{row.name:<24} {row.sessions:>9} {row.executions:>11} "
              f"{row.cpu_seconds:>12.2f} {row.runs.count:>9} {row.runs.wall_seconds:>17.2f} "
              f"{price:>10.4f}")
    return 0


def server_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The server's base URL and API key of a command that calls a server (mcp, batch):
    --url, else $TCI_BASE_URL, else the local default; --api-key, else $TCI_API_KEY."""
    url = args.url or os.environ.get("TCI_BASE_URL") or "http://127.0.0.1:8000/v1"
    key = args.api_key or os.environ.get("TCI_API_KEY")
    if not key:
        print("tci: an API key is needed: --api-key KEY or TCI_API_KEY", file=sys.stderr)
    return url, key


def cmd_mcp(args: argparse.Namespace, settings: Settings) -> int:
    from tci.mcp.stdio import run_stdio

    url, key = server_target(args)
    if not key:
        return 2
    run_stdio(url, key)
    return 0


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    from tci.batch_cli import run_batch_file

    url, key = server_target(args)
    if not key:
        return 2
    return run_batch_file(args.runs, url, key, ordered=args.ordered, chunk_size=args.chunk_size,
                          max_in_flight=args.max_in_flight)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tci", description="Self-hosted code interpreter")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--ray-address", default=None,
                       help="run as a gateway to this Ray cluster's tci hosts (HEAD:PORT; "
                            "default $TCI_RAY_ADDRESS, unset: sessions on this machine)")
    serve.set_defaults(handler=cmd_serve)

    hosts = commands.add_parser("hosts", help="start the host actor of every tci_host node of "
                                "a Ray cluster (gateways also do it) and list them")
    hosts.add_argument("--ray-address", default=None, help="HEAD:PORT (default $TCI_RAY_ADDRESS)")
    hosts.set_defaults(handler=cmd_hosts)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; prints it as the last line")
    create.add_argument("--name", required=True)
    key_commands.add_parser("list", help="list keys")
    revoke = key_commands.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    keys.set_defaults(handler=cmd_keys)

    mcp = commands.add_parser("mcp", help="serve MCP over stdio, calling a tci server")
    mcp.add_argument("--url", default=None,
                     help="the server's base URL (default $TCI_BASE_URL or http://127.0.0.1:8000/v1)")
    mcp.add_argument("--api-key", default=None, help="API key (default $TCI_API_KEY)")
    mcp.set_defaults(handler=cmd_mcp)

    batch = commands.add_parser(
        "batch", help="run the programs of a JSONL file (one run per line, - for stdin) as "
        "one-shot runs; results as JSONL on stdout, progress on stderr")
    batch.add_argument("runs", help="JSONL file of runs ({\"code\", \"stdin\", ...} a "
                       "line), or - for stdin")
    batch.add_argument("--url", default=None,
                       help="the server's base URL (default $TCI_BASE_URL or http://127.0.0.1:8000/v1)")
    batch.add_argument("--api-key", "--key", dest="api_key", default=None,
                       help="API key (default $TCI_API_KEY)")
    batch.add_argument("--ordered", action="store_true",
                       help="write results in input order (default: as each run finishes)")
    batch.add_argument("--chunk-size", type=int, default=1000,
                       help="runs per request, at most the server's TCI_BATCH_MAX_RUNS (1000)")
    batch.add_argument("--max-in-flight", type=int, default=2,
                       help="requests sent at once (default 2)")
    batch.set_defaults(handler=cmd_batch)

    usage = commands.add_parser("usage", help="sessions, executions, CPU, runs and cost per "
                                "key")
    usage.add_argument("--since", help="ISO date/time (default: until - 30 days)")
    usage.add_argument("--until", help="ISO date/time (default: now)")
    usage.set_defaults(handler=cmd_usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        return handler(args, settings)
    except TCIError as exc:
        print(f"tci: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
