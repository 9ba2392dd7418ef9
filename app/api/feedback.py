"""POST /v1/feedback: an outcome for a request, attributed to the experiment variant that served it."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CallerDep, ServicesDep
from app.protocol.admin import FeedbackRecorded, FeedbackRequest

router = APIRouter(tags=["experiments"])


@router.post("/v1/feedback", response_model=FeedbackRecorded)
async def give_feedback(body: FeedbackRequest, services: ServicesDep, caller: CallerDep) -> FeedbackRecorded:
    """Only the API key that made the request may score it; each request is scored once (409 after)."""
    attribution = await services.results.feedback(body.request_id, body.value, caller.key_id)
    return FeedbackRecorded(
        request_id=body.request_id,
        experiment=attribution.experiment,
        variant=attribution.variant,
        score=body.value,
    )
