"""Dependencies the routers declare: the app's `Services` and the caller, injected rather than imported."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import Caller
from app.services import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# Dependencies are `async def` so FastAPI calls them inline: a plain `def` would cost a trip through its
# thread pool on every request (measured: 4-11% of the pass-through's CPU, docs/benchmarks.md).
async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_caller(request: Request) -> Caller:
    """The caller of the public API (401 without a valid key while API keys are configured)."""
    services = services_of(request)
    address = request.client.host if request.client else "unknown"
    return services.keys.caller(request.headers, address)


async def require_api_key(request: Request) -> None:
    await get_caller(request)


async def require_admin(request: Request) -> None:
    services_of(request).keys.check_admin(request.headers)


CallerDep = Annotated[Caller, Depends(get_caller)]
