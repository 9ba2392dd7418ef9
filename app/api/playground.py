"""GET /playground: a static page that runs one prompt under several plans side by side (docs/playground.md).

The page and its two assets are plain files in `app/playground/`, served as they are: nothing is templated
and no inline script or style exists, so a strict Content-Security-Policy holds (scripts, styles and fetches
from this origin only). The page calls the public API from the browser with the key the user types in, so
it needs no key of its own. Off with `TWICE_PLAYGROUND__ENABLED=false` (the router is then not mounted).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

from app.errors import NotFound

router = APIRouter(tags=["playground"], include_in_schema=False)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The only files served: a closed table, so no request path ever reaches the filesystem.
ASSETS = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}


def _file(name: str, media_type: str) -> Response:
    body = files("app.playground").joinpath(name).read_bytes()
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.api_route("/playground", methods=["GET", "HEAD"])
def page() -> Response:
    """The playground page."""
    return _file("index.html", "text/html; charset=utf-8")


@router.api_route("/playground/static/{name}", methods=["GET", "HEAD"])
def asset(name: str) -> Response:
    """The page's script and style sheet."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"The playground has no file '{name}'.", param="name")
    return _file(name, media_type)
