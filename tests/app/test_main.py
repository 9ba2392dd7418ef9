"""The app factory's chat shortcut (`app.main.ChatRoute`) stands in for FastAPI's routing of one route: it
must resolve exactly what the declared route depends on, and leave every other request to FastAPI."""

from __future__ import annotations

from fastapi.routing import APIRoute

from app.api import chat
from app.api.deps import get_caller, get_services
from app.main import CHAT_PATH, create_app
from app.settings import Settings


def _chat_route() -> APIRoute:
    routes = [r for r in chat.router.routes if isinstance(r, APIRoute) and r.path == CHAT_PATH]
    assert len(routes) == 1
    return routes[0]


def test_the_chat_route_depends_on_exactly_what_chat_route_resolves() -> None:
    """A dependency added to the chat route would be skipped by ChatRoute: this test fails until ChatRoute
    resolves it too."""
    route = _chat_route()
    calls = {dependency.call for dependency in route.dependant.dependencies}
    assert calls == {get_services, get_caller}
    assert not route.dependencies  # none at the route level
    assert not chat.router.dependencies  # nor the router's


def test_the_chat_route_stays_declared_for_the_openapi_document() -> None:
    route = _chat_route()
    assert route.methods == {"POST"}
    app = create_app(Settings())
    assert "post" in app.openapi()["paths"][CHAT_PATH]


def test_fastapi_opentelemetry_follows_the_setting() -> None:
    """Off by default (each request would ask OpenTelemetry for its global providers); on when asked."""
    off = create_app(Settings())
    on = create_app(Settings.model_validate({"server": {"opentelemetry": True}}))
    for app, enabled in ((off, False), (on, True)):
        config = app._telemetry
        assert (config["tracing"], config["metrics"], config["logs"]) == (enabled, enabled, enabled)
    assert not off._native_telemetry.enabled()
