"""The web UI: pages from web/templates, assets from web/static (all local, nothing from a CDN), and
/api/map, the service map aggregated on the server from the flow store.

Mounted by create_app's `ui` hook: `create_app(view, token=..., ui=ui.hook(token))`. The pages hold no
data; the browser reads /api/flows/stream, /api/endpoints and /api/map, which require the bearer token
when the agent has one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from bpf import vocab
from exporter import api, filters, servicemap
from exporter.api import PAGING_PARAMS, parse_request, pick_source
from exporter.store import SourceError

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

#: paths a program reads: their 404 stays JSON (`{"detail": "Not Found"}`); any other unknown path is
#: a person's typo or an old bookmark and gets a page that links to the real ones
MACHINE_PATHS = ("/api/", "/static/", "/docs/", "/metrics", "/healthz", "/readyz", "/openapi.json")

PAGES = {
    "flows": "Flows",
    "map": "Service map",
    "endpoints": "Endpoints",
}


def _filter_help() -> list[dict[str, str]]:
    """Every name the filter bar accepts: the criteria (also as not_<name>) and the time range."""
    out = [{"name": name, "help": crit.help, "deny": "yes"} for name, crit in filters.CRITERIA.items()]
    out += [
        {"name": "since", "help": "flows seen at or after: RFC 3339, unix seconds, or 5m (ago)", "deny": ""},
        {"name": "until", "help": "flows seen at or before: same forms as since", "deny": ""},
    ]
    return out


def hook(
    token: str | None = None, web_dir: Path = WEB_DIR, with_map: bool = True
) -> Callable[[FastAPI], None]:
    """The `ui` argument of exporter.api.create_app (and of the relay's, which serves its own /api/map:
    with_map=False)."""

    require_token = api.token_check(token)

    def mount(app: FastAPI) -> None:
        templates = Jinja2Templates(directory=str(web_dir / "templates"))
        app.mount("/static", StaticFiles(directory=str(web_dir / "static")), name="static")

        def page(name: str) -> Callable[[Request], HTMLResponse]:
            def render(request: Request) -> HTMLResponse:
                return templates.TemplateResponse(
                    request,
                    f"{name}.html",
                    {"page": name, "pages": PAGES, "criteria": _filter_help(), "vocab": vocab.as_json()},
                )

            render.__name__ = f"page_{name}"
            return render

        for name in PAGES:
            app.add_api_route(f"/{name}", page(name), methods=["GET"], include_in_schema=False)

        @app.get("/", include_in_schema=False)
        def index() -> RedirectResponse:
            return RedirectResponse("/flows")

        @app.exception_handler(StarletteHTTPException)
        async def not_found(request: Request, exc: StarletteHTTPException) -> Response:
            path = request.url.path
            if exc.status_code != 404 or path.startswith(MACHINE_PATHS):
                return await http_exception_handler(request, exc)
            return templates.TemplateResponse(
                request, "404.html", {"pages": PAGES, "path": path}, status_code=404
            )

        if not with_map:
            return

        @app.get("/api/map", tags=["flows"], dependencies=[Depends(require_token)])
        def service_map(request: Request) -> dict[str, Any]:
            """Pods and the traffic between them, aggregated from the stored flows (same filters as
            /api/flows): nodes with per-pod counters, edges per verdict with a rate in bytes/s."""
            params: dict[str, list[str]] = {}
            for key, value in request.query_params.multi_items():
                if key not in PAGING_PARAMS:
                    params.setdefault(key, []).append(value)
            req = parse_request(params)
            view = app.state.view
            store = view.store
            name, source = pick_source(view, req.since_ns)
            try:
                if name == "history" and hasattr(source, "edge_rows"):
                    # aggregated by the history store (SQL sums), not from every flow of the window
                    from exporter.history.views import EdgeSource, build_map

                    out = build_map(cast(EdgeSource, source), req.query, req.since_ns, req.until_ns)
                else:
                    page = source.query(req.query, req.since_ns, req.until_ns)
                    out = servicemap.build(page.flows)
                    out["complete"] = page.complete
            except SourceError as exc:
                raise HTTPException(503, f"history: {exc}") from None
            out["stored"] = len(store)
            out["source"] = name
            return out

    return mount
