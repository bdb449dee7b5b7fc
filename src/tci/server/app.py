"""create_app(settings): wiring only. The path of a request: McpHostCheck (/mcp) -> ApiKeyAuth
-> BodyLimit -> route (a plain execute: ExecuteFastPath) -> SessionManager -> SessionHost
(LocalHost: WorkerConnection -> worker in its sandbox)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from tci.config import Settings
from tci.errors import BadRequest, TCIError
from tci.hosts.base import SessionHost
from tci.hosts.local import LocalHost
from tci.runs.manager import RunManager
from tci.runs.sandboxes import RunSandboxes
from tci.runs.usage import RunUsage
from tci.sandbox.fork.starter import ForkStarter
from tci.server import console, errors, mcp
from tci.server.auth import ApiKeyAuth, Authenticator
from tci.server.body_limit import BodyLimit
from tci.server.host_check import McpHostCheck, allowed_hosts
from tci.server.openapi import ERROR_RESPONSES
from tci.server.routes import (
    batch,
    execute,
    files,
    health,
    metrics,
    pause,
    sandboxfusion,
    sessions,
    usage,
)
from tci.server.routes.execute import ExecuteFastPath
from tci.server.sandboxfusion_auth import AnonymousKey, SandboxFusionAuth
from tci.sessions.manager import SessionManager
from tci.storage.store import AsyncStore, Store


def session_host(settings: Settings, store: AsyncStore) -> SessionHost:
    """Sandboxes on this machine, or, with TCI_RAY_ADDRESS, on a Ray cluster's tci hosts (a
    gateway). Ray is imported only then."""
    if not settings.ray_address:
        return LocalHost(settings)
    from tci.cluster.ray_host import RayHost

    return RayHost(settings, store)


def run_sandboxes(settings: Settings, host: SessionHost) -> RunSandboxes | None:
    """Runs fork from this machine's template; elsewhere (bubblewrap, a Ray gateway) they
    are not offered yet, and each run answers SANDBOX_ERROR saying so."""
    if isinstance(host, LocalHost) and isinstance(host.launcher.starter, ForkStarter):
        return RunSandboxes(settings, host.launcher, host.launcher.starter)
    return None


def check_run_settings(settings: Settings) -> None:
    if settings.run_network == "egress" and settings.network != "egress":
        raise BadRequest("TCI_RUN_NETWORK=egress needs TCI_NETWORK=egress (runs take the "
                         "sessions' filtered networks)")


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    store = store or Store(settings.database_url, settings.database_timeout_seconds)
    async_store = AsyncStore(store)
    host = session_host(settings, async_store)
    manager = SessionManager(settings, async_store, host)
    runs = RunManager(settings, run_sandboxes(settings, host))
    anonymous = AnonymousKey(settings, async_store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            check_run_settings(settings)
            await anonymous.check_exists()
            await manager.start()
        except TCIError as exc:  # the host cannot serve: `tci serve` says why (cli.py)
            app.state.startup_error = exc
            raise
        try:
            async with mcp_running():  # MCP's streamable HTTP sessions (server/mcp.py)
                yield
        finally:
            await manager.shutdown()
            runs.close()
            async_store.close()

    app = FastAPI(title="tci", version="0.1.0", lifespan=lifespan,
                  description="Self-hosted, TCI-compatible code interpreter")
    app.state.settings = settings
    app.state.manager = manager
    app.state.runs = runs
    app.state.run_usage = RunUsage(runs, manager.metrics.registry, manager.run_log)
    authenticator = Authenticator(async_store, settings.auth_cache_seconds,
                                  settings.auth_cache_entries, settings.auth_max_lookups,
                                  manager.metrics.registry)
    app.state.auth = authenticator
    errors.install(app)

    # Every API route may answer these, in TCI's error shape (documented once, here).
    api = APIRouter(responses=ERROR_RESPONSES)
    api.include_router(execute.router)
    api.include_router(sessions.router)
    api.include_router(pause.router)
    api.include_router(files.router)
    api.include_router(usage.router)
    api.include_router(batch.router)
    # The official SDK calls {base}/tci/... with base ending in /v1; the seeds' curl calls /tci.
    app.include_router(api, prefix="/v1")
    app.include_router(api)
    app.include_router(health.router)
    app.include_router(sandboxfusion.router)  # keyless callers: SandboxFusionAuth below
    mcp_running = mcp.mount(app, "/mcp")  # Host, Origin and key checked by the middleware
    app.include_router(metrics.router)  # outside the /tci prefixes: see its docstring
    console.mount(app, settings.runtime_dir)  # the web console at /, a client of /v1/tci
    # Paths that take a key: it is checked before any body is read.
    keyed = ("/tci", "/v1/tci", "/mcp", *(("/metrics",) if settings.metrics_require_key else ()))
    # The last added runs first: /mcp's Host and Origin, then the key, then the body's size
    # (TCI_MAX_REQUEST_BYTES with a key, a few bytes without), then the warm execute's fast
    # path (server/routes/execute.py), then the route.
    app.add_middleware(ExecuteFastPath, manager=manager)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes,
                       anonymous_max_bytes=settings.max_anonymous_request_bytes)
    app.add_middleware(ApiKeyAuth, authenticator=authenticator, prefixes=keyed)
    app.add_middleware(SandboxFusionAuth, authenticator=authenticator, anonymous=anonymous)
    app.add_middleware(McpHostCheck, path="/mcp", allowed=allowed_hosts(settings))
    return app
