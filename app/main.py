"""The app factory. `create_app()` builds nothing at import time; the lifespan starts the backend."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry

from app import __version__
from app.api import admin, chat, feedback, health, models, playground
from app.api.deps import require_api_key
from app.backends import GatewayBackend, build_backend
from app.errors import install_error_handlers
from app.header_limits import HeaderLimits
from app.services import Services
from app.settings import Settings
from refiners.backend import BackendUnavailable

log = logging.getLogger("twice")


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

    app = FastAPI(title="twice", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
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
