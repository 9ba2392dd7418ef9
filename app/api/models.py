"""GET /v1/models."""

from __future__ import annotations

import time

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.protocol.chat import ModelCard, ModelList

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList)
async def list_models(services: ServicesDep) -> ModelList:
    created = int(time.time())
    names = await services.backend.list_models()
    return ModelList(data=[ModelCard(id=name, created=created) for name in names])
