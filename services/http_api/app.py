"""Wiring of the HTTP API: settings → gRPC channels → FastAPI app with its middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.http_api import errors, models
from services.http_api.config import Settings
from services.http_api.middleware import HTTP, RequestContext
from services.http_api.routes import router
from services.http_api.upstream import Upstreams
from shared.metrics import PROCESS, registry
from shared.telemetry import background

STATIC = Path(__file__).parent / "static"
DESCRIPTION = """The specification's REST endpoints over Stylebase's gRPC services.

Every error has one shape, `{"error": "artist_not_found", "message": "..."}`; a 400 also
lists `field_violations`. Send `X-Request-Id` to have it echoed and logged, and
`X-Request-Timeout` (`2.5`, `2.5s` or `250ms`; 5 s by default) to bound the request.
"""


def create_app(settings: Settings, *, traced: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.upstreams = Upstreams.connect(settings, traced=traced)
        app.state.stopping = False
        try:
            yield
        finally:
            await app.state.upstreams.close()

    app = FastAPI(
        title="Stylebase HTTP API",
        version="1.0.0",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.include_router(router)
    errors.install(app, settings.http_api_retry_after_seconds)
    app.mount("/docs/static", StaticFiles(directory=STATIC / "swagger-ui"), name="docs-static")
    _operations(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(
        RequestContext,
        default_timeout=settings.http_api_timeout_seconds,
        max_timeout=settings.http_api_max_timeout_seconds,
        max_body_bytes=settings.http_api_max_body_bytes,
        retry_after=settings.http_api_retry_after_seconds,
        traced=traced,
        access_log=settings.access_log,
    )
    return app


def _operations(app: FastAPI) -> None:
    served = registry(PROCESS, HTTP)

    @app.get("/healthz", response_model=models.Health, include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "not_serving": []})

    @app.get("/readyz", response_model=models.Health, include_in_schema=False)
    async def readyz(request: Request) -> Response:
        if request.app.state.stopping:
            return JSONResponse({"status": "not_ready", "not_serving": []}, status_code=503)
        # A probe, not traffic: its health checks of the upstreams make no spans.
        with background():
            down = await request.app.state.upstreams.not_serving()
        if down:
            return JSONResponse({"status": "not_ready", "not_serving": down}, status_code=503)
        return JSONResponse({"status": "ok", "not_serving": []})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(served), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Stylebase HTTP API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without its 422s: validation failures here are 400s with ErrorBody."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema
