"""POST /v1/chat/completions: thin; the service does the work and raises errors for the one handler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from app.api.deps import CallerDep, ServicesDep
from app.protocol.chat import ChatCompletion, ChatCompletionRequest
from app.requests import read_body

router = APIRouter(tags=["chat"])

_REQUEST_SCHEMA = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
# The models the body refers to go into the document's components (see `document_request_models`).
REQUEST_MODELS: dict[str, Any] = _REQUEST_SCHEMA.pop("$defs", {})
_REQUEST_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}
}


def document_request_models(app: FastAPI) -> None:
    """Add the request body's models to the OpenAPI components, so every $ref in the document resolves
    (the body is read by hand for the size limit, so FastAPI does not register them itself)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(REQUEST_MODELS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    openapi_extra=_REQUEST_BODY,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def create_chat_completion(request: Request, services: ServicesDep, caller: CallerDep) -> Response:
    # The body is read here, not declared as a parameter, so the size limit applies before it is parsed.
    body = await read_body(request, services.settings.limits.max_body_bytes)
    return await services.chat.handle(body, request.headers, caller)
