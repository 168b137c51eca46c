"""/docs: the API's Swagger UI with its assets served from this process (the `swagger-ui-bundle` package's
copy of swagger-ui), so the page works on a machine without internet access. FastAPI's own /docs and
/redoc load their scripts from a CDN and stay blank offline: apps are created with them off
(`docs_url=None, redoc_url=None`) and call `mount`. Without the package /docs is left off (404, said
in the log) rather than served blank; /openapi.json is there either way."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

ASSETS = "/docs/assets"


def assets_dir() -> Path | None:
    """Where swagger-ui's files are, or None when the package is not installed."""
    try:
        import swagger_ui_bundle  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def mount(app: FastAPI, assets: Path | None = None) -> bool:
    """Serve /docs from local assets; False (and /docs left off) when there are none."""
    assets = assets or assets_dir()
    if assets is None:
        log.info("/docs is off: the swagger-ui-bundle package is not installed (/openapi.json is served)")
        return False
    app.mount(ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    title = f"{app.title} · API"

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )

    return True
