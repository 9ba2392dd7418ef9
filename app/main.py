"""The app factory. `create_app()` builds nothing at import time; the lifespan starts the backend."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.api import admin, chat, feedback, health, models, playground
from app.api.chat import create_chat_completion
from app.api.deps import get_caller, require_api_key, services_of
from app.backends import GatewayBackend, build_backend
from app.errors import install_error_handlers
from app.header_limits import HeaderLimits
from app.services import Services
from app.settings import Settings
from refiners.backend import BackendUnavailable

log = logging.getLogger("twice")

CHAT_PATH = "/v1/chat/completions"  # the route of app/api/chat.py


def create_app(settings: Settings | None = None, *, backend: GatewayBackend | None = None) -> FastAPI:
    """A gateway app. `backend` replaces the configured one (tests inject scripted backends this way)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chosen = backend or build_backend(settings)
        try:
            await chosen.start()
        except BackendUnavailable as exc:
            log.error("twice cannot start: %s", exc)  # one line before the framework's traceback
            raise
        services = Services.build(settings, chosen, CollectorRegistry())
        await services.start()
        app.state.services = services
        log.info(
            "twice ready: backend=%s model=%s redis=%s",
            settings.backend,
            chosen.model,
            services.store.state,
        )
        try:
            yield
        finally:
            await services.close()
            await chosen.close()

    enabled = settings.server.opentelemetry
    telemetry: TelemetryConfig = {"tracing": enabled, "metrics": enabled, "logs": enabled}
    app = FastAPI(title="twice", version=__version__, lifespan=lifespan, telemetry=telemetry)
    install_error_handlers(app)
    app.add_middleware(ChatRoute)  # inside HeaderLimits (the last added is the outermost)
    app.add_middleware(HeaderLimits, limits=settings.limits)
    app.include_router(chat.router)
    app.include_router(models.router, dependencies=[Depends(require_api_key)])
    app.include_router(feedback.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    if settings.playground.enabled:
        app.include_router(playground.router)
    chat.document_request_models(app)
    return app


class ChatRoute:
    """ASGI middleware: `POST /v1/chat/completions` goes straight to its endpoint (`api/chat.py`), with its
    two dependencies (the services and the caller) resolved here, and its errors answered by the app's own
    exception handlers, as the route would. FastAPI's routing (every route matched in turn) and dependency
    solving around it cost about a fifth of a pass-through request's CPU (docs/benchmarks.md); the route
    stays declared for the OpenAPI document, and every other request goes through FastAPI.

    An error with no handler of its own (the app's `Exception` handler is Starlette's last resort) is raised
    on to the server-error middleware outside this one, as from the route."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != CHAT_PATH:
            await self._app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await create_chat_completion(request, services_of(request), await get_caller(request))
        except Exception as exc:
            handler = _handler(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _handler(handlers: Mapping[Any, Any], exc: Exception) -> Any:
    """The exception handler the route's exception middleware would pick for `exc` (None: the last resort)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
