"""POST /v1/chat/completions: thin; the service does the work and raises errors for the one handler."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import ServicesDep
from app.protocol.chat import ChatCompletion, ChatCompletionRequest
from app.requests import read_body

router = APIRouter(tags=["chat"])

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            }
        },
    }
}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    openapi_extra=_REQUEST_BODY,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def create_chat_completion(request: Request, services: ServicesDep) -> Response:
    # The body is read here, not declared as a parameter, so the size limit applies before it is parsed.
    body = await read_body(request, services.settings.limits.max_body_bytes)
    return await services.chat.handle(body, request.headers)
