"""The web console: a static single-page app served at `/` by the API server itself.

No build step and no third-party front-end code: the files in `static/` are plain ES modules,
so the console works on a machine with no network, and what the browser runs is what is in
the repository. The page holds no secret; it talks to the same `/v1/tci` API as any client,
with the key the user typed (kept in sessionStorage).

Outputs come from untrusted code, so the page is served with a strict Content-Security-Policy
(scripts only from this origin, no inline script) and renders HTML outputs in sandboxed
iframes without script permission: a hostile `text/html` output cannot read the key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/console"

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    # Pandas' HTML and the iframes' own table styles are inline <style> blocks.
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "frame-src 'self' about:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # The files change with the server: revalidate rather than run a stale mix of modules.
    (b"cache-control", b"no-cache"),
)


class ConsoleHeaders:
    """Adds the security headers to every console response (page and assets)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount(app: FastAPI, runtime_dir: Path) -> None:
    """`/` is the console's page; `/console/...` its scripts and styles."""
    headers = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}
    index = STATIC_DIR / "index.html"
    # Plotly figures are drawn with the plotly.js that ships inside the sandbox runtime's own
    # plotly package: the same version that made the figure, and nothing to download.
    plotly_js = runtime_dir / "site" / "plotly" / "package_data" / "plotly.min.js"

    async def console_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=headers)

    async def plotly_script() -> Response:
        if not plotly_js.is_file():
            return Response("plotly.js is not in the runtime", status_code=404, headers=headers)
        return FileResponse(plotly_js, media_type="text/javascript", headers=headers)

    app.add_api_route("/", console_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{PREFIX}/vendor/plotly.min.js", plotly_script, methods=["GET"],
                      include_in_schema=False)
    app.mount(PREFIX, ConsoleHeaders(StaticFiles(directory=STATIC_DIR)), name="console")
