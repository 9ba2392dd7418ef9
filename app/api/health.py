"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from app.api.deps import ServicesDep
from app.upstreams import UpstreamRouted

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    """The backend answers; 503 while it does not. Redis is reported (ok, degraded, disabled) but does not
    decide: the gateway serves without it."""
    backend_ok = await services.backend.check_ready()
    body = {
        "status": "ready" if backend_ok else "unavailable",
        "backend": {"kind": services.settings.backend, "ready": backend_ok, "model": services.backend.model},
        "redis": services.store.state,
    }
    if isinstance(services.backend, UpstreamRouted):
        body["upstreams"] = services.backend.upstreams_report()
    return JSONResponse(body, status_code=200 if backend_ok else 503)


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
