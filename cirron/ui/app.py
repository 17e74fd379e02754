"""The viewer's web layer: a read-only Starlette app over :class:`cirron.ui.data.SpoolData`.

Pages are small HTML shells (one per view, each at a stable URL) whose script asks the JSON
API for data and draws it with plotly.js; every asset is served from the installed packages,
nothing from the internet. Only ``GET`` routes exist, so the server cannot change a spool.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import logging
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cirron.ui.data import SessionTooBig, SpoolData, UnknownSession

STATIC_DIR = Path(__file__).parent / "static"
#: The views of one session, in the order of its tab bar.
SESSION_VIEWS = ("timeline", "steps", "marks", "snapshots", "requests")

_log = logging.getLogger("cirron.ui")


def plotly_js_path() -> Path:
    """The plotly.js bundle that the ``plotly`` Python package ships (found without importing it)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the plotly package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.js not found at {path}")
    return path


class Assets:
    """The scripts, style and icon of the pages: plotly.js from the ``plotly`` package, the rest
    from :data:`STATIC_DIR`.

    A page names each asset with its version (``/static/app.js?v=...``, from the file's size and
    modification time), and an asset asked for at its current version may be cached for good: a
    browser then neither downloads plotly.js (4.8 MB) again nor compiles it again (its code cache
    follows the cached file) on the next page. Asked for without it, or at another version (a
    page from before an upgrade), the answer must be revalidated (``no-cache``), so a browser
    never keeps an old app.js beside a new server.
    """

    def __init__(self) -> None:
        self.plotly_js = plotly_js_path()

    def path(self, name: str) -> Path | None:
        if name == "plotly.min.js":
            return self.plotly_js
        path = STATIC_DIR / name
        return path if "/" not in name and path.is_file() else None

    @staticmethod
    def version(path: Path) -> str:
        st = path.stat()
        return hashlib.blake2b(f"{st.st_size}:{st.st_mtime_ns}".encode(), digest_size=6).hexdigest()

    def url(self, name: str) -> str:
        path = self.path(name)
        assert path is not None, name
        return f"/static/{name}?v={self.version(path)}"

    def response(self, name: str, version: str | None) -> Response:
        path = self.path(name)
        if path is None:
            raise HTTPException(404, f"no asset named {name}")
        cache = "public, max-age=31536000, immutable" if version == self.version(path) else "no-cache"
        media_type = "text/javascript" if name.endswith(".js") else None
        return _AssetResponse(path, media_type=media_type, headers={"Cache-Control": cache})


class _AssetResponse(FileResponse):
    # plotly.js in five sends, not 75: each send waits for the GIL, which a session's read holds
    # while the browser loads the page's scripts
    chunk_size = 1 << 20


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def _page(assets: Assets, page: str, title: str, message: str | None = None, **data: str) -> HTMLResponse:
    content = '<p class="loading">Loading…</p>' if message is None else f'<p class="error">{html.escape(message)}</p>'
    attrs = " ".join(f'data-{k}="{html.escape(v, quote=True)}"' for k, v in data.items())
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · cirron</title>
<link rel="icon" href="{assets.url("favicon.svg")}" type="image/svg+xml">
<link rel="stylesheet" href="{assets.url("style.css")}">
<script defer src="{assets.url("plotly.min.js")}"></script>
<script src="{assets.url("app.js")}"></script>
</head><body data-page="{page}" {attrs}>
<header><a class="brand" href="/">cirron</a><nav id="nav"></nav><span id="status"></span></header>
<main id="main">{content}</main>
<script>cirronUI.start();</script>
</body></html>"""
    return HTMLResponse(body)


def create_app(data: SpoolData) -> Starlette:
    """The viewer's ASGI app over ``data``."""
    assets = Assets()

    def session_id(request: Request) -> str:
        return request.path_params["sid"]

    def param_int(request: Request, name: str) -> int | None:
        raw = request.query_params.get(name)
        if raw in (None, ""):
            return None
        try:
            return int(float(raw))
        except ValueError:
            raise HTTPException(400, f"invalid {name}: {raw!r} (expected a number)") from None

    # ------------------------------------------------------------------ pages

    async def runs_page(request: Request) -> Response:
        return _page(assets, "runs", "Runs")

    async def session_root(request: Request) -> Response:
        return RedirectResponse(f"/session/{session_id(request)}/timeline")

    async def session_page(request: Request) -> Response:
        view = request.path_params["view"]
        if view not in SESSION_VIEWS:
            raise HTTPException(404, f"no view named {view}")
        sid = session_id(request)
        data.warm(sid)  # read the session while the browser loads the page's scripts
        return _page(assets, view, f"{view.capitalize()} {sid[:8]}", data.refusal(sid), session=sid)

    async def compare_marks_page(request: Request) -> Response:
        return _page(assets, "marks", "Marks", session=",".join(request.query_params.getlist("session")))

    async def run_page(request: Request) -> Response:
        run = request.path_params["run"]
        return _page(assets, "ranks", f"Run {run}", run=run)

    # ------------------------------------------------------------------ API (sync: run in the thread pool)

    def api_sessions(request: Request) -> Response:
        sessions = data.sessions()
        return JSONResponse({"spools": [str(s.dir) for s in data.spools],
                             "sessions": [s.to_json() for s in sessions], "warnings": data.warnings()})

    def api_session(request: Request) -> Response:
        return JSONResponse(data.info(session_id(request)).to_json())

    def api_timeline(request: Request) -> Response:
        view = data.session(session_id(request))
        px = param_int(request, "px") or 1200
        fit = request.query_params.get("fit") == "1"
        return JSONResponse(view.timeline(param_int(request, "t0"), param_int(request, "t1"), px, fit))

    def api_steps(request: Request) -> Response:
        return JSONResponse(data.session(session_id(request)).steps())

    def api_snapshots(request: Request) -> Response:
        return JSONResponse(data.session(session_id(request)).snapshots())

    def api_requests(request: Request) -> Response:
        return JSONResponse(data.session(session_id(request)).requests())

    def api_marks(request: Request) -> Response:
        ids = [i for raw in request.query_params.getlist("session") for i in raw.split(",") if i]
        if not ids:
            raise HTTPException(400, "give at least one session")
        x = request.query_params.get("x", "step")
        if x not in ("step", "time"):
            raise HTTPException(400, f"invalid x: {x!r} (expected step or time)")
        return JSONResponse(data.marks(ids, x))

    def api_ranks(request: Request) -> Response:
        return JSONResponse(data.ranks(request.path_params["run"]))

    # ------------------------------------------------------------------ assets and errors

    async def static(request: Request) -> Response:
        return assets.response(request.path_params["name"], request.query_params.get("v"))

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"unknown session or run: {exc}"}, status_code=404)

    async def too_big(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=413)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        _log.error("cirron ui: %s failed: %s: %s", request.url.path, type(exc).__name__, exc)
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    routes = [
        Route("/", runs_page),
        Route("/session/{sid}", session_root),
        Route("/session/{sid}/{view}", session_page),
        Route("/marks", compare_marks_page),
        Route("/run/{run}", run_page),
        Route("/api/sessions", api_sessions),
        Route("/api/session/{sid}", api_session),
        Route("/api/session/{sid}/timeline", api_timeline),
        Route("/api/session/{sid}/steps", api_steps),
        Route("/api/session/{sid}/snapshots", api_snapshots),
        Route("/api/session/{sid}/requests", api_requests),
        Route("/api/marks", api_marks),
        Route("/api/run/{run}/ranks", api_ranks),
        Route("/static/{name}", static),
    ]
    return Starlette(routes=routes, exception_handlers={
        UnknownSession: not_found, SessionTooBig: too_big, HTTPException: http_error, Exception: internal_error})
